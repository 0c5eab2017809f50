"""LLM backends behind one interface: complete prompts into flat JSON objects of string fields.

``vllm`` (GPUs; offline batched ``LLM.generate`` with JSON-schema structured outputs) lives in its own
environment, so it is imported only when chosen. ``transformers`` runs anywhere: it fills the JSON one
field at a time (the prompt is extended with ``{"field": "`` and generation stops at the closing quote),
which constrains the output to the schema for the flat string objects this pipeline asks for.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Protocol

from ..errors import HierarcapsError
from .config import LLMConfig


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 24


def json_schema(fields: list[str]) -> dict[str, Any]:
    """The schema of ``{"field": "non-empty string", ...}`` with exactly these fields."""
    return {"type": "object", "properties": {f: {"type": "string", "minLength": 1} for f in fields},
            "required": fields, "additionalProperties": False}


def parse_fields(text: str, fields: list[str]) -> dict[str, str] | None:
    """The fields of a JSON object in ``text`` (the first ``{...}``), or None if absent or malformed."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        value = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not all(isinstance(value.get(f), str) for f in fields):
        return None
    return {f: value[f] for f in fields}


def model_version(model: str) -> str:
    """A local folder's content hash, or the hub id (whose revision the loader records)."""
    from ..models.lazy import folder_fingerprint

    path = Path(model)
    return folder_fingerprint(path) if path.is_dir() else f"hub:{model}"


class LLMBackend(Protocol):
    name: str
    version: str

    def complete_json(self, prompts: list[str], fields: list[str], sampling: Sampling, seed: int
                      ) -> list[dict[str, str] | None]:
        """One object per prompt (None where the output could not be parsed)."""


def _torch_dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


class TransformersLLM:
    """A causal LM through ``AutoModelForCausalLM.generate``, batched with left padding."""

    def __init__(self, config: LLMConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name, self.version, self.batch_size = config.model, model_version(config.model), config.batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model, padding_side="left")
            self.model = AutoModelForCausalLM.from_pretrained(config.model, dtype=_torch_dtype(config.dtype))
        except (OSError, ValueError) as exc:
            raise HierarcapsError(f"cannot load LLM {config.model!r}: {exc}") from exc
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()

    def _generate(self, texts: list[str], sampling: Sampling, stop: list[str]) -> list[str]:
        import torch

        outputs: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True)
            with torch.inference_mode():
                tokens = self.model.generate(
                    **batch, max_new_tokens=sampling.max_new_tokens, do_sample=sampling.temperature > 0,
                    temperature=sampling.temperature or None, top_p=sampling.top_p if sampling.temperature else None,
                    stop_strings=stop, tokenizer=self.tokenizer, pad_token_id=self.tokenizer.pad_token_id)
            new = tokens[:, batch["input_ids"].shape[1]:]
            outputs.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return outputs

    def complete_json(self, prompts: list[str], fields: list[str], sampling: Sampling, seed: int
                      ) -> list[dict[str, str] | None]:
        import torch

        torch.manual_seed(seed)
        values: list[dict[str, str]] = [{} for _ in prompts]
        written = ["" for _ in prompts]                         # the JSON text so far, per prompt
        for number, field in enumerate(fields):
            opener = ("{" if number == 0 else ", ") + json.dumps(field) + ': "'
            written = [w + opener for w in written]
            texts = self._generate([p + w for p, w in zip(prompts, written)], sampling, stop=['"', "\n"])
            for index, text in enumerate(texts):
                value = text.split('"')[0].split("\n")[0].replace("\\", "").strip()
                values[index][field] = value
                written[index] += json.dumps(value)[1:-1] + '"'
        return [parse_fields(w + "}", fields) for w in written]


class VllmLLM:
    """vLLM's offline engine with JSON-schema structured outputs (install it in its own environment)."""

    def __init__(self, config: LLMConfig, seed: int) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise HierarcapsError("the vllm backend needs vLLM, which lives in its own environment: see "
                                  "generation/README.md") from exc
        self.name, self.version = config.model, model_version(config.model)
        self.engine = LLM(model=config.model, dtype=config.dtype, seed=seed)

    def complete_json(self, prompts: list[str], fields: list[str], sampling: Sampling, seed: int
                      ) -> list[dict[str, str] | None]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = SamplingParams(
            temperature=sampling.temperature, top_p=sampling.top_p, seed=seed,
            max_tokens=sampling.max_new_tokens * len(fields) + 8 * len(fields) + 2,
            structured_outputs=StructuredOutputsParams(json=json_schema(fields)))
        outputs = self.engine.generate(prompts, params, use_tqdm=False)
        return [parse_fields(output.outputs[0].text, fields) for output in outputs]


def make_backend(config: LLMConfig, seed: int) -> LLMBackend:
    if config.backend == "transformers":
        return TransformersLLM(config)
    if config.backend == "vllm":
        return VllmLLM(config, seed)
    raise HierarcapsError(f"unknown LLM backend {config.backend!r} (choose transformers or vllm)")
