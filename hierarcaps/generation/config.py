"""The YAML config of a generation run: every model, threshold, batch size, seed and sampling setting.

Unknown keys are errors (a typo must not silently fall back to a default). Relative paths resolve
against the config file's folder, so a config and its prompts travel together.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

from ..configs import build_section, check_model_settings, read_yaml
from ..errors import DataError
from ..fields import bounded
from ..models.torch_utils import DTYPES
from ..nli import NLIConfig
from ..training import TrainingConfig


@dataclasses.dataclass
class LLMConfig:
    backend: str = bounded("transformers", choices=("transformers", "vllm"))   # vllm: its own environment
    model: str = ""                        # hub id, local folder, or pkg:NAME (the folder of an installed package)
    gguf_file: str = ""                    # a GGUF file inside the model folder (transformers de-quantises it)
    chat_template: str = bounded("auto", choices=("auto", "none", "required"))  # auto: the tokenizer's, if any
    max_new_tokens: int = bounded(24, low=1, high=4096)     # per tier
    temperature: float = bounded(0.0, low=0.0, high=10.0)   # 0: greedy
    top_p: float = bounded(1.0, low=0.0, high=1.0, open_low=True)
    batch_size: int = bounded(16, low=1, high=65536)
    dtype: str = bounded("auto", choices=DTYPES)           # auto: bfloat16 on a GPU that supports it, else float32
    engine_args: dict[str, Any] = dataclasses.field(default_factory=dict)   # more vllm.LLM(...) arguments,
    # e.g. gpu_memory_utilization (on CPU: the share of RAM it reserves), max_model_len, tensor_parallel_size


@dataclasses.dataclass
class AugmentConfig:
    demonstrations: int = bounded(4, low=0, high=64)         # accepted chains shown per prompt
    samples_per_caption: int = bounded(1, low=0, high=64)
    temperature: float = bounded(0.8, low=0.0, high=10.0)
    top_p: float = bounded(0.95, low=0.0, high=1.0, open_low=True)


@dataclasses.dataclass
class DistillConfig(TrainingConfig):
    """The student and its training (the shared training settings: ``steps``, ``batch_size``, ``lr``,
    ``eval_every``, ``checkpoint_every``, ...; the run's seed is the generation run's)."""

    SET_ELSEWHERE: ClassVar[dict[str, str]] = {"seed": "the student trains with the run's top-level seed",
                                               "progress": "progress bars follow the command's --no-progress"}

    student: str = "google/flan-t5-base"   # hub id or folder; ignored when `scratch` is set
    scratch: dict[str, Any] | None = None  # T5Config fields: a student trained from scratch (own tokenizer)
    tokenizer_vocab: int = bounded(2000, low=100, high=1_000_000)  # vocabulary of the scratch tokenizer
    max_source_length: int = bounded(64, low=4, high=8192)
    max_target_length: int = bounded(48, low=4, high=8192)
    dtype: str = bounded("auto", choices=("auto", "float32", "bfloat16"))  # training: bf16 autocast on a GPU (auto)
    steps: int | None = bounded(1000, low=0, high=10**8)
    batch_size: int = bounded(16, low=1, high=65536)
    lr: float = bounded(3e-4, low=0.0, high=1.0, open_low=True)
    eval_every: int = bounded(100, low=1, high=10**8)
    checkpoint_every: int = bounded(100, low=1, high=10**8)
    progress: bool = False


@dataclasses.dataclass
class BuildConfig:
    batch_size: int = bounded(32, low=1, high=65536)
    max_new_tokens: int = bounded(48, low=1, high=4096)
    negative_candidates: int = bounded(8, low=1, high=256)   # sampled continuations per negative tier
    temperature: float = bounded(1.0, low=0.0, high=10.0, open_low=True)
    top_p: float = bounded(0.95, low=0.0, high=1.0, open_low=True)


@dataclasses.dataclass
class GenerationConfig:
    """One generation run. ``input``: a CSV with a ``caption`` column (``id``, ``image_url`` optional),
    a text file with one caption per line, or a hierarchy file (its tier-4 captions are used). The LLM stages
    see ``teacher_captions`` of them (or ``teacher_share``); the student distilled from their chains writes the
    hierarchies of the rest (see ``captions``)."""

    input: str = ""
    out: str = "runs/generate"
    prompts: str = "builtin"                     # a folder (seed.txt, augment.txt, examples.json) or builtin
    device: str = "auto"                         # auto: the GPU when there is one, else the CPU; cpu; cuda:N
    threads: int | None = bounded(None, low=1, high=1024)   # CPU threads for torch (default: torch's own)
    shard_size: int = bounded(256, low=1, high=10**7)
    seed: int = bounded(0, low=0, high=2**32 - 1)
    limit: int | None = bounded(None, low=1)
    teacher_share: float = bounded(1.0, low=0.0, high=1.0, open_low=True)   # the captions the LLM stages see
    teacher_captions: int | None = bounded(None, low=1)    # a count instead of a share; the student writes the rest
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
    nli: NLIConfig = dataclasses.field(default_factory=NLIConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    build: BuildConfig = dataclasses.field(default_factory=BuildConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the data (where and how fast it runs does not)."""
        from ..checkpoints import run_hash

        return run_hash(self, ignore=("out", "device", "threads"))

    def resolved_device(self) -> str:
        """The device the models run on: ``auto`` is the GPU when torch sees one, else the CPU."""
        if self.device != "auto":
            from ..models.torch_utils import check_device

            return check_device(self.device)
        from ..models.torch_utils import pick_device_lightly

        return pick_device_lightly(None)


SECTIONS = {"llm": LLMConfig, "nli": NLIConfig, "augment": AugmentConfig, "distill": DistillConfig,
            "build": BuildConfig}
PATH_FIELDS = {("", "input"), ("", "prompts"), ("llm", "model"), ("nli", "model"),
               ("distill", "student")}


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> GenerationConfig:
    """Read a YAML config (bounded, duplicate keys refused, every value type- and range-checked); ``overrides``
    (e.g. from the command line) replace top-level settings."""
    path = Path(path)
    file = str(path)
    raw = {**read_yaml(path), **(overrides or {})}
    sections = {name: build_section(cls, raw.pop(name, None), file, name) for name, cls in SECTIONS.items()}
    config = build_section(GenerationConfig, raw, file, "")
    for name, section in sections.items():
        setattr(config, name, section)
    base = path.parent.resolve()
    for section_name, field_name in PATH_FIELDS:
        holder = getattr(config, section_name) if section_name else config
        setattr(holder, field_name, _resolve_path(getattr(holder, field_name), base))
    if not config.input:
        raise DataError("no input captions given", file=file, field="input")
    check_scratch_models(config, file)
    return config


def check_scratch_models(config: GenerationConfig, file: str) -> None:
    """Scratch model settings name real config fields (transformers would keep a typo silently)."""
    if config.nli.scratch is None and config.distill.scratch is None:
        return
    from transformers import BertConfig, T5Config

    if config.nli.scratch is not None:
        check_model_settings(config.nli.scratch, BertConfig, "nli.scratch", file)
    if config.distill.scratch is not None:
        check_model_settings(config.distill.scratch, T5Config, "distill.scratch", file)


def _resolve_path(value: str, base: Path) -> str:
    """Relative paths are relative to the config's folder when that path exists there (or is an output)."""
    if not value or Path(value).is_absolute():
        return value
    candidate = base / value
    if candidate.exists() or value.startswith("."):
        return str(candidate)
    return value
