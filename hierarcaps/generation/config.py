"""The YAML config of a generation run: every model, threshold, batch size, seed and sampling setting.

Unknown keys are errors (a typo must not silently fall back to a default). Relative paths resolve
against the config file's folder, so a config and its prompts travel together.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..errors import DataError

STAGES = {"captions": "00-captions", "seed": "10-seed", "filter": "20-filter", "augment": "30-augment",
          "distill": "40-distill", "build": "50-build", "export": "60-export"}
"""Every stage in run order, with the folder it writes (the runner calls ``Runner.stage_<name>``)."""


@dataclasses.dataclass
class LLMConfig:
    backend: str = "transformers"          # "transformers" (anywhere) or "vllm" (its own environment)
    model: str = ""                        # hub id, local folder, or pkg:NAME (the folder of an installed package)
    gguf_file: str = ""                    # a GGUF file inside the model folder (transformers de-quantises it)
    chat_template: str = "auto"            # auto: the tokenizer's chat template when it has one; none: plain
    max_new_tokens: int = 24               # per tier
    temperature: float = 0.0               # 0: greedy
    top_p: float = 1.0
    batch_size: int = 16
    dtype: str = "auto"
    engine_args: dict[str, Any] = dataclasses.field(default_factory=dict)   # more vllm.LLM(...) arguments,
    # e.g. gpu_memory_utilization (on CPU: the share of RAM it reserves), max_model_len, tensor_parallel_size


@dataclasses.dataclass
class NLIConfig:
    model: str = ""
    scratch: dict[str, Any] | None = None  # BertConfig fields: a random-weight stand-in (packaged MiniLM tokenizer)
    # for runs where no NLI weights can be had; its decisions are noise, so use it only to exercise a pipeline
    entail_threshold: float = 0.5          # P(entailment) a link caption => t3 => t2 => t1 needs
    contradict_threshold: float = 0.5      # P(contradiction) a negative needs against the positive tier
    generic_not_longer: bool = False       # also require each tier to have no more words than the next
    batch_size: int = 64
    max_length: int = 128


@dataclasses.dataclass
class AugmentConfig:
    demonstrations: int = 4                # accepted chains shown per prompt
    samples_per_caption: int = 1
    temperature: float = 0.8
    top_p: float = 0.95


@dataclasses.dataclass
class DistillConfig:
    student: str = "google/flan-t5-base"   # hub id or folder; ignored when `scratch` is set
    scratch: dict[str, Any] | None = None  # T5Config fields: a student trained from scratch (own tokenizer)
    tokenizer_vocab: int = 2000            # vocabulary of the scratch tokenizer
    max_steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-4
    warmup_steps: int = 0                  # linear warm-up, then constant
    weight_decay: float = 0.01
    val_fraction: float = 0.05
    eval_every: int = 100
    checkpoint_every: int = 100
    max_source_length: int = 64
    max_target_length: int = 48


@dataclasses.dataclass
class BuildConfig:
    batch_size: int = 32
    max_new_tokens: int = 48
    negative_candidates: int = 8           # sampled continuations per negative tier
    temperature: float = 1.0
    top_p: float = 0.95


@dataclasses.dataclass
class GenerationConfig:
    """One generation run. ``input``: a CSV with a ``caption`` column (``id``, ``image_url`` optional),
    a text file with one caption per line, or a hierarchy file (its tier-4 captions are used)."""

    input: str = ""
    out: str = "runs/generate"
    prompts: str = "prompts"
    shard_size: int = 256
    seed: int = 0
    limit: int | None = None
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
    nli: NLIConfig = dataclasses.field(default_factory=NLIConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    build: BuildConfig = dataclasses.field(default_factory=BuildConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the data (the output folder does not)."""
        from ..checkpoints import run_hash

        return run_hash(self, ignore=("out",))


SECTIONS = {"llm": LLMConfig, "nli": NLIConfig, "augment": AugmentConfig, "distill": DistillConfig,
            "build": BuildConfig}
PATH_FIELDS = {("", "input"), ("", "prompts"), ("llm", "model"), ("nli", "model"),
               ("distill", "student")}


def _build(cls: type, raw: dict[str, Any], file: str, section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            where = f"{section}.{key}" if section else key
            raise DataError(f"unknown setting (known: {', '.join(sorted(known))})", file=file, field=where)
    return cls(**raw)


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> GenerationConfig:
    """Read a YAML config; ``overrides`` (e.g. from the command line) replace top-level settings."""
    import yaml

    path = Path(path)
    file = str(path)
    if not path.exists():
        raise DataError("no such config file", file=file)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"not valid YAML: {exc}", file=file) from exc
    if not isinstance(raw, dict):
        raise DataError("expected a mapping of settings", file=file)
    raw = {**raw, **(overrides or {})}
    sections = {}
    for name, cls in SECTIONS.items():
        value = raw.pop(name, None) or {}
        if not isinstance(value, dict):
            raise DataError("expected a mapping", file=file, field=name)
        sections[name] = _build(cls, value, file, name)
    config = _build(GenerationConfig, raw, file, "")
    for name, section in sections.items():
        setattr(config, name, section)
    base = path.parent.resolve()
    for section_name, field_name in PATH_FIELDS:
        holder = getattr(config, section_name) if section_name else config
        setattr(holder, field_name, _resolve_path(getattr(holder, field_name), base))
    if not config.input:
        raise DataError("no input captions given", file=file, field="input")
    return config


def _resolve_path(value: str, base: Path) -> str:
    """Relative paths are relative to the config's folder when that path exists there (or is an output)."""
    if not value or Path(value).is_absolute():
        return value
    candidate = base / value
    if candidate.exists() or value.startswith("."):
        return str(candidate)
    return value
