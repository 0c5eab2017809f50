"""Writing a flat JSON object of string fields in one decoding pass, with a causal LM's own forward.

The output must be exactly ``{"f1": "v1", "f2": "v2", ...}`` (spaced, as the prompts show it): at every step
only the tokens that keep the text a prefix of that form are allowed (:class:`JsonConstraint`), so one pass
over the prompt writes every field, and the prompt is encoded once per row. The text shared by every row of a
batch (the instruction and the demonstrations) is encoded once per batch and its key/value cache reused by
every row (:func:`decode`), which is most of a prompt's length. Each row samples with its own seeded
generator, so a row's output does not depend on which rows share its batch.

A value is at most ``max_chars`` characters; one that reaches it is cut and marked ``truncated`` (a mid-word
cut is not a caption). Special tokens and text that would break the JSON string (quotes, backslashes, control
characters) never enter a value.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

END = -1


@dataclasses.dataclass(frozen=True)
class Template:
    """The fixed text between the values: ``{"f1": "`` value ``", "f2": "`` value ... ``"}``."""

    fields: tuple[str, ...]
    max_chars: int

    @property
    def literals(self) -> list[str]:
        opening = ['{' + json.dumps(self.fields[0]) + ': "']
        middles = ['", ' + json.dumps(field) + ': "' for field in self.fields[1:]]
        return [*opening, *middles, '"}']


class TokenTable:
    """Every token's text (as it reads after another token: SentencePiece and byte-level tokenizers alike), and
    what it may do inside a JSON string value."""

    def __init__(self, tokenizer: Any) -> None:
        size = len(tokenizer)
        anchor = tokenizer.encode("x", add_special_tokens=False)[-1:]
        base = tokenizer.decode(anchor)
        self.texts = [tokenizer.decode([*anchor, i])[len(base):] for i in range(size)]
        special = set(tokenizer.all_special_ids) | {i for i, t in enumerate(self.texts) if not t}
        self.by_text: dict[str, list[int]] = {}
        for i, text in enumerate(self.texts):
            if i not in special:
                self.by_text.setdefault(text, []).append(i)
        bad = np.array([i in special or any(_forbidden(c) for c in t.replace('"', "")) for i, t in
                        enumerate(self.texts)])
        self.length = np.array([len(t) for t in self.texts])
        self.quote = np.array([t.find('"') for t in self.texts])
        self.content = ~bad & (self.quote < 0)                    # a value's own characters, nothing else
        self.closing = ~bad & (self.quote >= 0)                   # value characters, then the closing quote
        self.size = size

    def closes_into(self, literal: str) -> np.ndarray:
        """Tokens whose text from their first quote on is a prefix of ``literal`` (which starts with a quote)."""
        return np.array([bool(self.closing[i]) and literal.startswith(self.texts[i][self.quote[i]:])
                         for i in range(self.size)])


def _forbidden(char: str) -> bool:
    return char in '\\"' or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")


@dataclasses.dataclass
class RowState:
    """Where a row's output stands: in literal ``segment`` at ``offset``, or in the value before it."""

    segment: int = 0
    offset: int = 0
    in_value: bool = False
    text: str = ""
    tokens: int = 0
    truncated: bool = False
    broken: bool = False

    @property
    def finished(self) -> bool:
        return self.segment == END


class JsonConstraint:
    """The allowed-token masks of a :class:`Template` (cached per state) and the states' transitions."""

    def __init__(self, table: TokenTable, template: Template, eos_ids: Sequence[int]) -> None:
        self.table, self.template, self.eos = table, template, list(eos_ids)
        self.literals = template.literals
        self.closes = [table.closes_into(literal) for literal in self.literals[1:]]
        self._masks: dict[tuple, np.ndarray] = {}

    def mask(self, state: RowState) -> np.ndarray:
        """Boolean (vocabulary,) of the tokens allowed next."""
        if state.finished:
            key: tuple = ("end",)
        elif state.in_value:
            key = ("value", state.segment, self.template.max_chars - state.offset, state.offset == 0)
        else:
            key = ("literal", state.segment, state.offset)
        if key not in self._masks:
            self._masks[key] = self._build(key)
        return self._masks[key]

    def _build(self, key: tuple) -> np.ndarray:
        table, allowed = self.table, np.zeros(self.table.size, dtype=bool)
        if key[0] == "end":
            allowed[self.eos] = True
        elif key[0] == "literal":
            rest = self.literals[key[1]][key[2]:]
            for end in range(1, len(rest) + 1):
                allowed[table.by_text.get(rest[:end], [])] = True
        else:
            _, segment, room, empty = key
            allowed = table.content & (table.length <= room)
            closing = self.closes[segment - 1] & (table.quote <= room)
            allowed = allowed | (closing & (table.quote >= 1) if empty else closing)
        return allowed

    def advance(self, state: RowState, text: str) -> None:
        """Feed a chosen token's text to a row's state."""
        state.tokens += 1
        for char in text:
            if state.finished:
                state.broken = True
                return
            if state.in_value and char != '"':
                state.offset += 1
                state.truncated |= state.offset >= self.template.max_chars
                continue
            if state.in_value:                                   # the closing quote starts the next literal
                state.in_value, state.offset = False, 0
            literal = self.literals[state.segment]
            state.broken |= literal[state.offset] != char
            state.offset += 1
            if state.offset == len(literal):
                last = state.segment == len(self.literals) - 1
                state.segment, state.offset, state.in_value = (END, 0, False) if last else (state.segment + 1, 0, True)
        state.text += text

    def fields(self, state: RowState) -> dict[str, str] | None:
        if not state.finished or state.broken:
            return None
        try:
            value = json.loads(state.text)
        except ValueError:
            return None
        return {field: value[field] for field in self.template.fields}


def shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """The number of leading tokens every row has in common (at least one token of every row is left)."""
    shortest = min(len(row) for row in rows)
    length = 0
    while length < shortest - 1 and all(row[length] == rows[0][length] for row in rows):
        length += 1
    return length


def cache_keyword(model: Any) -> str:
    """The forward argument that takes the key/value cache (transformers renamed ``past_key_values`` to ``cache``)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output: Any) -> Any:
    return output["cache"] if "cache" in output else output["past_key_values"]


def decode(model: Any, rows: Sequence[Sequence[int]], constraint: JsonConstraint, *, max_new_tokens: int,
           temperature: float, top_p: float, seeds: Sequence[int], pad_id: int) -> list[RowState]:
    """Constrained decoding of a batch of prompts (token ids), the shared prefix encoded once."""
    import torch

    device = next(model.parameters()).device
    common = shared_prefix(rows)
    batch = len(rows)
    keyword = cache_keyword(model)
    cache = None
    if common:
        prefix = torch.tensor([list(rows[0][:common])], device=device)
        cache = cache_of(model(input_ids=prefix, use_cache=True))
        cache.batch_repeat_interleave(batch)
    tails = [list(row[common:]) for row in rows]
    width = max(len(tail) for tail in tails)
    ids = torch.tensor([[pad_id] * (width - len(t)) + t for t in tails], device=device)
    mask = torch.tensor([[1] * common + [0] * (width - len(t)) + [1] * len(t) for t in tails], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, common:]
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    states = [RowState() for _ in rows]
    with torch.inference_mode():
        output = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{keyword: cache})
        for _ in range(max_new_tokens):
            chosen = choose(output.logits[:, -1].float(), states, constraint, temperature, top_p, generators)
            for state, token in zip(states, chosen):
                if not state.finished:
                    constraint.advance(state, constraint.table.texts[token])
            if all(state.finished for state in states):
                break
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
            step = torch.tensor([[t] for t in chosen], device=device)
            output = model(input_ids=step, attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                           use_cache=True, **{keyword: cache_of(output)})
    return states


def choose(scores: Any, states: list[RowState], constraint: JsonConstraint, temperature: float, top_p: float,
           generators: list[Any]) -> list[int]:
    """The next token of every row: the allowed one of highest score (greedy), or a draw from the allowed
    ones' tempered, top-p-cut distribution with the row's own generator."""
    import torch

    allowed = torch.from_numpy(np.stack([constraint.mask(state) for state in states])).to(scores.device)
    scores = scores.masked_fill(~allowed, -torch.inf)
    if temperature <= 0:
        return scores.argmax(-1).tolist()
    probs = torch.softmax(scores / temperature, dim=-1).cpu()
    chosen = []
    for row, generator in zip(probs, generators):
        ordered, order = torch.sort(row, descending=True)
        keep = (ordered.cumsum(0) - ordered) < top_p          # the smallest set reaching top_p
        ordered = torch.where(keep, ordered, torch.zeros_like(ordered))
        chosen.append(int(order[torch.multinomial(ordered / ordered.sum(), 1, generator=generator)]))
    return chosen
