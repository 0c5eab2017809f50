"""Writing a flat JSON object of string fields in one decoding pass, with a causal LM's own forward.

The output must be exactly ``{"f1": "v1", "f2": "v2", ...}`` (spaced, as the prompts show it): inside a value
only the tokens that keep the text a prefix of that form are allowed (:class:`JsonConstraint`); between values
the text is fixed, and it is written as one canonical token sequence (at each point the longest token that
matches the text still to write), so the constraint knows those tokens in advance. :func:`decode` appends such
a forced run without a sampling step per token ("jump-forward"): the opening literal goes into the prompt's
forward, and each later run into one forward with the token that ended the value, batched across rows. The
text shared by every row of a batch (the instruction and the demonstrations) is encoded once per batch and its
key/value cache reused by every row, which is most of a prompt's length. Each row samples with its own seeded
generator (on the model's device), so a row's output does not depend on which rows share its batch, and
jump-forward decoding writes the chains step-by-step decoding writes (``jump=False``).

A value is at most ``max_chars`` characters; one that reaches it is cut and marked ``truncated`` (a mid-word
cut is not a caption). Special tokens and text that would break the JSON string (quotes, backslashes, control
characters) never enter a value.
"""

from __future__ import annotations

import copy
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
        self.longest_text = max(map(len, self.by_text), default=1)
        self.length = np.array([len(t) for t in self.texts])
        self.quote = np.array([t.find('"') for t in self.texts])
        self.content = ~bad & (self.quote < 0)                    # a value's own characters, nothing else
        self.closing = ~bad & (self.quote >= 0)                   # value characters, then the closing quote
        self.size = size

    def longest(self, text: str) -> int:
        """The token whose text is the longest prefix of ``text`` (the lowest id among equals): one step of the
        canonical tokenization of a fixed run of text."""
        for size in range(min(self.longest_text, len(text)), 0, -1):
            found = self.by_text.get(text[:size])
            if found:
                return min(found)
        raise ValueError(f"no token starts {text[:20]!r}")

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
        self._on_device: dict[tuple, Any] = {}
        self._forced: dict[tuple[int, int], list[int]] = {}

    def mask(self, state: RowState) -> np.ndarray:
        """Boolean (vocabulary,) of the tokens allowed next (in a literal: its canonical next token alone)."""
        key = self._key(state)
        if key not in self._masks:
            self._masks[key] = self._build(key)
        return self._masks[key]

    def _key(self, state: RowState) -> tuple:
        if state.finished:
            return ("end",)
        if state.in_value:
            return ("value", state.segment, self.template.max_chars - state.offset, state.offset == 0)
        return ("literal", state.segment, state.offset)

    def device_mask(self, state: RowState, device: Any) -> Any:
        """:meth:`mask` as a boolean tensor on ``device``, made once per state and device."""
        import torch

        key = (self._key(state), str(device))
        if key not in self._on_device:
            self._on_device[key] = torch.from_numpy(self.mask(state)).to(device)
        return self._on_device[key]

    def forced(self, state: RowState) -> list[int]:
        """The tokens a row in a literal must write next, to the literal's end: the canonical tokenization of the
        rest of the literal (empty inside a value, where the model chooses)."""
        if state.finished or state.in_value:
            return []
        key = (state.segment, state.offset)
        if key not in self._forced:
            rest, tokens = self.literals[state.segment][state.offset:], []
            while rest:
                tokens.append(self.table.longest(rest))
                rest = rest[len(self.table.texts[tokens[-1]]):]
            self._forced[key] = tokens
        return self._forced[key]

    def _build(self, key: tuple) -> np.ndarray:
        table, allowed = self.table, np.zeros(self.table.size, dtype=bool)
        if key[0] == "end":
            allowed[self.eos] = True
        elif key[0] == "literal":
            allowed[table.longest(self.literals[key[1]][key[2]:])] = True
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
           temperature: float, top_p: float, seeds: Sequence[int], pad_id: int, jump: bool = True) -> list[RowState]:
    """Constrained decoding of a batch of prompts (token ids), the shared prefix encoded once (see
    :class:`BatchDecoder`). With ``jump``, the fixed text between values goes into the model in forwards of its
    own, every row's at once; without it, one token per forward, as plain decoding does. Either way each row
    writes the same tokens."""
    decoder = BatchDecoder(model, rows, constraint, pad_id=pad_id, jump=jump, seeds=seeds)
    return decoder.run(max_new_tokens, temperature, top_p)


class BatchDecoder:
    """One batch of rows decoded together, in rounds.

    A value round feeds each row that is writing a value its next token (one forward, one column). A row that
    closes a value with ``jump`` then waits, holding the closing token and the forced run after it, until every
    row still writing is waiting too; a forced round then feeds every row's run in one forward. On a CPU a
    forward costs mostly a fixed amount (reading the weights, copying the cache) plus a little per column, so
    this writes each run in one round without padding every other round to the longest run. A finished row
    leaves the batch (its cache with it), so the long rows do not pay for the short ones.
    """

    def __init__(self, model: Any, rows: Sequence[Sequence[int]], constraint: JsonConstraint, *, pad_id: int,
                 jump: bool, seeds: Sequence[int]) -> None:
        import torch

        self.model, self.constraint, self.pad_id, self.jump = model, constraint, pad_id, jump
        self.device = next(model.parameters()).device
        self.keyword = cache_keyword(model)
        self.states = [RowState() for _ in rows]
        self.alive = list(range(len(rows)))                    # original positions of the rows still decoding
        self.waiting: dict[int, list[int]] = {}                # row -> tokens it holds for the next forced round
        self.generators = [torch.Generator(device=self.device).manual_seed(int(seed)) for seed in seeds]
        self.rows = rows

    def prefill(self) -> Any:
        """The shared prefix once, then every row's own tail (with the forced opening literal, when jumping)."""
        import torch

        rows, opening = self.rows, self.constraint.forced(self.states[0]) if self.jump else []
        for state in self.states:
            feed(self.constraint, state, opening)
        common = shared_prefix(rows)
        self.cache = None
        if common:
            self.cache = copy.deepcopy(prefix_cache(self.model, tuple(rows[0][:common])))
            self.cache.batch_repeat_interleave(len(rows))
        self.mask = torch.ones((len(rows), common), dtype=torch.long, device=self.device)
        return self.forward([[*row[common:], *opening] for row in rows])

    def forward(self, blocks: Sequence[Sequence[int]]) -> Any:
        """Feed each alive row its block (left-padded to the longest); returns the logits of every row's last
        column."""
        ids, block_mask = padded_block(blocks, self.pad_id)
        self.mask = torch_cat(self.mask, block_mask.to(self.device))
        output = self.model(input_ids=ids.to(self.device), attention_mask=self.mask,
                            position_ids=block_positions(self.mask, ids.shape[1]), use_cache=True, logits_to_keep=1,
                            **{self.keyword: self.cache})
        self.cache = cache_of(output)
        return output.logits[:, -1].float()

    def run(self, max_new_tokens: int, temperature: float, top_p: float) -> list[RowState]:
        import torch

        with torch.inference_mode():
            logits = self.prefill()
            for _ in range(max_new_tokens):
                blocks = self.value_round(logits, temperature, top_p)
                logits = logits[[i for i, row in enumerate(self.alive) if not self.states[row].finished]]
                self.leave_finished()
                if not self.alive:
                    break
                if any(blocks.get(row) for row in self.alive):
                    logits = self.forward([blocks.get(row, []) for row in self.alive])
                elif self.waiting:                             # every row still writing waits: a forced round
                    logits = self.forward([self.waiting.pop(row) for row in list(self.alive)])
        return self.states

    def value_round(self, logits: Any, temperature: float, top_p: float) -> dict[int, list[int]]:
        """Each alive row that is not waiting writes its next token (``logits``: one row per alive row); a row
        that closes a value (when jumping) starts waiting with that token and the forced run after it. Returns
        the block of each row that writes in this round."""
        writing = [i for i, row in enumerate(self.alive) if row not in self.waiting]
        rows = [self.alive[i] for i in writing]
        if not rows:
            return {}
        chosen = choose(logits[writing], [self.states[row] for row in rows], self.constraint, temperature, top_p,
                        [self.generators[row] for row in rows])
        blocks = {}
        for row, token in zip(rows, chosen):
            run = forced_after(self.constraint, self.states[row], token, self.jump)
            if run and not self.states[row].finished:
                self.waiting[row] = [token, *run]
            else:
                blocks[row] = [token, *run]
        return blocks

    def leave_finished(self) -> None:
        """Rows whose object is closed leave the batch (their cache rows, mask rows and held tokens too)."""
        import torch

        keep = [i for i, row in enumerate(self.alive) if not self.states[row].finished]
        if len(keep) == len(self.alive):
            return
        self.alive = [self.alive[i] for i in keep]
        self.waiting = {row: tokens for row, tokens in self.waiting.items() if row in self.alive}
        if keep:
            index = torch.tensor(keep, device=self.device)
            self.mask = self.mask[index]
            self.cache.batch_select_indices(index)


GQA_SDPA = "hierarcaps_sdpa_gqa"


def grouped_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                 scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Scaled dot-product attention that reads a grouped-query cache as it is (``enable_gqa``), where
    transformers' own copies every key and value head for each query head at every step when a mask is given:
    for a batch whose rows share a long prompt, that copy is most of a decoding step's cost on a CPU."""
    import torch

    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, :key.shape[-2]]
    causal = attention_mask is None and query.shape[2] > 1 and getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, is_causal=causal,
                                                           enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def use_grouped_sdpa(model: Any) -> None:
    """Give a grouped-query model that attends with SDPA the attention of :func:`grouped_sdpa`, with SDPA's own
    masks (registered with transformers' attention and mask interfaces)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = model.config
    heads, groups = getattr(config, "num_attention_heads", 0), getattr(config, "num_key_value_heads", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not groups or groups == heads:
        return
    AttentionInterface.register(GQA_SDPA, grouped_sdpa)
    AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)          # the masks SDPA takes, padding included
    model.set_attn_implementation(GQA_SDPA)


def prefix_cache(model: Any, prefix: tuple[int, ...]) -> Any:
    """The key/value cache of a shared prompt prefix, encoded once per model and prefix (every batch of a
    stage shares the instruction and demonstrations) and kept on the model, the last one only."""
    import torch

    kept = getattr(model, "_hierarcaps_prefix", None)
    if kept is None or kept[0] != prefix:
        ids = torch.tensor([list(prefix)], device=next(model.parameters()).device)
        with torch.inference_mode():
            kept = (prefix, cache_of(model(input_ids=ids, use_cache=True, logits_to_keep=1)))
        model._hierarcaps_prefix = kept
    return kept[1]


def torch_cat(first: Any, second: Any) -> Any:
    import torch

    return torch.cat([first, second], dim=1)


def feed(constraint: JsonConstraint, state: RowState, tokens: Sequence[int]) -> None:
    """Advance a row's state over tokens it writes."""
    for token in tokens:
        constraint.advance(state, constraint.table.texts[token])


def forced_after(constraint: JsonConstraint, state: RowState, token: int, jump: bool) -> list[int]:
    """Advance a row over its chosen token, then (with ``jump``) over the forced run that follows it; returns
    that run."""
    feed(constraint, state, [token])
    run = constraint.forced(state) if jump else []
    feed(constraint, state, run)
    return run


def padded_block(blocks: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """(ids, mask) of rows of different lengths, each padded on its left to the longest, so every row's last
    column is its last real token (a finished row's block is all padding)."""
    import torch

    width = max(1, max(len(block) for block in blocks))
    ids = torch.tensor([[pad_id] * (width - len(b)) + list(b) for b in blocks])
    mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in blocks])
    return ids, mask


def block_positions(mask: Any, width: int) -> Any:
    """Position ids of the last ``width`` columns: each real token's count of real tokens before it."""
    return (mask.cumsum(-1) - 1).clamp(min=0)[:, -width:]


def choose(scores: Any, states: list[RowState], constraint: JsonConstraint, temperature: float, top_p: float,
           generators: list[Any]) -> list[int]:
    """The next token of every row: in a literal its forced token (no draw: a row's draws are the same whether
    the fixed text goes in token by token or at once); otherwise the allowed one of highest score (greedy), or a
    draw from the allowed ones' tempered, top-p-cut distribution with the row's own generator, all on the scores'
    device (a stable sort, so equal probabilities keep their order everywhere)."""
    import torch

    allowed = torch.stack([constraint.device_mask(state, scores.device) for state in states])
    scores = scores.masked_fill(~allowed, -torch.inf)
    forced = [constraint.forced(state)[:1] for state in states]
    if temperature <= 0:
        return scores.argmax(-1).tolist()
    ordered, order = torch.sort(torch.softmax(scores / temperature, dim=-1), dim=-1, descending=True, stable=True)
    keep = (ordered.cumsum(-1) - ordered) < top_p          # the smallest set reaching top_p
    ordered = ordered.masked_fill(~keep, 0.0)
    return [fixed[0] if fixed else int(order[i, torch.multinomial(ordered[i] / ordered[i].sum(), 1,
                                                                     generator=generator)])
            for i, (fixed, generator) in enumerate(zip(forced, generators))]
