"""The models of a generation run, loaded once per worker on the device that worker was given.

Placement is decided where the worker starts, not where it is declared: under the local engine the run's
``device`` (``auto``: the GPU when torch sees one); under Ray, a stage that asks for GPUs gets one per worker
and Ray makes it the only GPU the actor sees, while a stage that asks for none sees no GPU at all (Ray leaves
such an actor every GPU of its node, so loading a model on ``cuda:0`` in each of them would put every CPU
actor's model on one GPU).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from ..nli import NLIScorer, TransformersNLI
from .backends import LLMBackend, make_backend
from .config import GenerationConfig

MODEL_ROLES = ("llm", "nli", "student")
"""The models a stage may load: the teacher LLM, the NLI judge and the distilled student."""


class Models:
    """The models of a run, each loaded the first time a stage needs it, on the run's device; the seconds spent
    loading are counted (``load_seconds``), so a shard's time is its work's, not its model's loading."""

    def __init__(self, config: GenerationConfig, student_folder: Path | None = None) -> None:
        self.config, self.student_folder = config, student_folder
        self.device = config.resolved_device()
        self.load_seconds = 0.0

    def _timed(self, build: Any) -> Any:
        started = time.perf_counter()
        try:
            return build()
        finally:
            self.load_seconds += time.perf_counter() - started

    @functools.cached_property
    def llm(self) -> LLMBackend:
        return self._timed(lambda: make_backend(self.config.llm, self.config.seed, self.device))

    @functools.cached_property
    def nli(self) -> NLIScorer:
        return self._timed(lambda: TransformersNLI(self.config.nli, device=self.device))

    @functools.cached_property
    def student(self) -> Any:
        from .distill import Student

        return self._timed(lambda: Student(self.student_folder, self.config.build, device=self.device,
                                           dtype=self.config.distill.dtype))
