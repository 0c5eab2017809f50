"""LLM backends behind one interface: answer conversations with flat JSON objects of string fields.

A request is a conversation (chat turns: instruction and demonstrations, then the caption; see ``prompts``)
and the answer is ``{"tier_1": "...", "tier_2": "...", "tier_3": "..."}`` in exactly the spaced form the
demonstrations show. Both backends turn a conversation into token ids the same way (:func:`prompt_ids`): the
model's chat template applied once, its special tokens included (never a second start token), or, for a model
without one, the turns as plain text.

- ``transformers`` runs anywhere: one constrained decoding pass per batch (``decoding``), the shared prompt
  prefix encoded once, on the configured device and dtype.
- ``vllm`` (GPUs; its own environment, imported only when chosen): offline batched ``LLM.generate`` on the
  token ids, a regular-expression constraint of the same spaced JSON, and a seed per request.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..errors import HierarcapsError
from ..models.folders import NO_REMOTE_CODE, SAFE_WEIGHTS, model_source, model_version
from ..models.torch_utils import torch_dtype
from .config import LLMConfig
from .prompts import Message, plain_text


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 24


class Completion(NamedTuple):
    fields: dict[str, str] | None     # None: the output could not be parsed into the schema
    text: str                         # what the model wrote, for inspection
    truncated: bool = False           # a value reached the length limit and was cut there


def max_chars(sampling: Sampling) -> int:
    """The longest tier accepted: about four characters per token of the per-tier budget."""
    return 4 * sampling.max_new_tokens


def token_budget(fields: Sequence[str], sampling: Sampling) -> int:
    """New tokens that always suffice for a whole object (a token is at least one character): every value at its
    longest and every character of the keys, quotes and braces. Decoding stops once every row's object is
    closed, so the bound costs nothing."""
    from .json_decoding import Template

    return len(fields) * max_chars(sampling) + sum(len(text) for text in Template(tuple(fields), 1).literals)


def json_regex(fields: list[str], max_length: int) -> str:
    """Spaced JSON ``{"field": "non-empty string", ...}`` with exactly these fields, as a regular expression: the
    form the prompts' demonstrations show, so the model's own way of writing it is never masked. A regex
    rather than a JSON schema: schema grammars allow free whitespace, which a weak model can fill until its
    token budget runs out."""
    value = f'"[^"\\\\\\x00-\\x1f]{{1,{max_length}}}"'
    return "\\{" + ", ".join(f'"{re.escape(field)}": {value}' for field in fields) + "\\}"


def parse_fields(text: str, fields: list[str]) -> dict[str, str] | None:
    """The fields of a JSON object in ``text`` (the first ``{...}``), or None if absent or malformed."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        value = json.loads(text[start:end + 1], strict=False)   # tolerate raw control characters
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not all(isinstance(value.get(f), str) for f in fields):
        return None
    return {f: value[f] for f in fields}


CHAT_MODES = ("auto", "none", "required")


def uses_chat(tokenizer: Any, mode: str) -> bool:
    """Whether prompts go through the tokenizer's chat template: ``auto`` when it has one, ``none`` never,
    ``required`` always (it fails when there is none: an instruct model would get a prompt it was not trained
    on)."""
    if mode not in CHAT_MODES:
        raise HierarcapsError(f"llm.chat_template must be auto, none or required, not {mode!r}")
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "required" and not has:
        raise HierarcapsError("llm.chat_template is required but the model's tokenizer has none")
    return has and mode != "none"


def prompt_ids(tokenizer: Any, turns: list[Message], chat: bool) -> list[int]:
    """A conversation's token ids, the assistant's turn opened: the chat template's own special tokens and no
    other (a template that writes the start token itself gets no second one), or the plain text with the
    tokenizer's usual special tokens."""
    if chat:
        encoded = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return [int(i) for i in ids]
    return list(tokenizer(plain_text(turns))["input_ids"])


class LLMBackend(Protocol):
    name: str
    version: str

    def complete_json(self, conversations: list[list[Message]], fields: list[str], sampling: Sampling,
                      seeds: list[int]) -> list[Completion]:
        """One completion per conversation; ``seeds[i]`` seeds conversation i's sampling."""


class TransformersLLM:
    """A causal LM with the package's one-pass constrained decoder, batched, on the configured device."""

    def __init__(self, config: LLMConfig, seed: int = 0, *, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name, self.version, self.batch_size = config.model, model_version(config.model), config.batch_size
        source = model_source(config.model)
        extra = {"gguf_file": config.gguf_file} if config.gguf_file else {}
        dtype = torch_dtype(config.dtype, device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **extra, **NO_REMOTE_CODE)
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra,
                                                              **(NO_REMOTE_CODE if extra else SAFE_WEIGHTS))
        except (OSError, ValueError) as exc:
            raise HierarcapsError(f"cannot load LLM {config.model!r}: {exc}") from exc
        self.model.eval().to(device)
        from .json_decoding import use_grouped_sdpa

        use_grouped_sdpa(self.model)
        self.chat = uses_chat(self.tokenizer, config.chat_template)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id
        self._constraints: dict[tuple, Any] = {}

    def eos_ids(self) -> list[int]:
        found = self.model.generation_config.eos_token_id
        found = found if isinstance(found, list) else [found]
        return sorted({i for i in [*found, self.tokenizer.eos_token_id] if i is not None})

    def constraint(self, fields: list[str], sampling: Sampling) -> Any:
        """The JSON constraint for these fields and value length (its token table built once per model)."""
        from .json_decoding import JsonConstraint, Template, TokenTable

        key = (tuple(fields), max_chars(sampling))
        if key not in self._constraints:
            table = next((c.table for c in self._constraints.values()), None) or TokenTable(self.tokenizer)
            self._constraints[key] = JsonConstraint(table, Template(tuple(fields), max_chars(sampling)),
                                                    self.eos_ids())
        return self._constraints[key]

    def complete_json(self, conversations: list[list[Message]], fields: list[str], sampling: Sampling,
                      seeds: list[int]) -> list[Completion]:
        from .json_decoding import decode

        constraint = self.constraint(fields, sampling)
        rows = [prompt_ids(self.tokenizer, turns, self.chat) for turns in conversations]
        out: list[Completion] = []
        for start in range(0, len(rows), self.batch_size):
            states = decode(self.model, rows[start:start + self.batch_size], constraint,
                            max_new_tokens=token_budget(fields, sampling), temperature=sampling.temperature,
                            top_p=sampling.top_p, seeds=seeds[start:start + self.batch_size], pad_id=self.pad_id)
            out.extend(Completion(constraint.fields(s), s.text, s.truncated) for s in states)
        return out


class VllmLLM:
    """vLLM's offline engine on token ids, with a regular-expression constraint and a seed per request."""

    def __init__(self, config: LLMConfig, seed: int, *, device: str = "cuda") -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise HierarcapsError("the vllm backend needs vLLM, which lives in its own environment: see "
                                  "generation/README.md") from exc
        self.name, self.version = config.model, model_version(config.model)
        source = model_source(config.model)
        model = str(Path(source) / config.gguf_file) if config.gguf_file else source   # vLLM reads GGUF files
        self.engine = LLM(model=model, dtype=config.dtype, seed=seed, **{**config.engine_args, **NO_REMOTE_CODE})
        self.tokenizer = self.engine.get_tokenizer()
        self.chat = uses_chat(self.tokenizer, config.chat_template)

    def complete_json(self, conversations: list[list[Message]], fields: list[str], sampling: Sampling,
                      seeds: list[int]) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        limit = max_chars(sampling)
        constraint = StructuredOutputsParams(regex=json_regex(fields, limit))
        params = [SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, seed=int(seed),
                                 max_tokens=token_budget(fields, sampling), structured_outputs=constraint)
                  for seed in seeds]
        prompts = [TokensPrompt(prompt_token_ids=prompt_ids(self.tokenizer, turns, self.chat))
                   for turns in conversations]
        outputs = self.engine.generate(prompts, params, use_tqdm=False)
        completions = []
        for output in outputs:
            text = output.outputs[0].text
            found = parse_fields(text, fields)
            completions.append(Completion(found, text, found is not None and any(len(v) >= limit
                                                                                  for v in found.values())))
        return completions


BACKENDS: dict[str, type] = {"transformers": TransformersLLM, "vllm": VllmLLM}
"""LLM backends by the name a config gives (``llm.backend``); each is built as ``Backend(config, seed, device=)``."""


def make_backend(config: LLMConfig, seed: int, device: str) -> LLMBackend:
    if config.backend not in BACKENDS:
        raise HierarcapsError(f"unknown LLM backend {config.backend!r} (choose {', '.join(BACKENDS)})")
    return BACKENDS[config.backend](config, seed, device=device)
