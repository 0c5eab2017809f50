"""Resumable training state: atomic checkpoint folders, newest-first loading, and a guard against
resuming into a run with other settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from .errors import HierarcapsError

STATE_FILE = "state.pt"


def run_hash(config: object, ignore: tuple[str, ...]) -> str:
    """Hash of a run's settings (a dataclass) minus those that do not change its result."""
    fixed = {k: v for k, v in dataclasses.asdict(config).items() if k not in ignore}  # type: ignore[call-overload]
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


class CheckpointStore:
    """``<run>/checkpoints/step-NNNNNNN/state.pt``; a folder appears under that name only once complete."""

    def __init__(self, run_folder: str | Path, run_hash: str, keep: int = 2) -> None:
        self.folder = Path(run_folder) / "checkpoints"
        self.run_hash, self.keep = run_hash, keep

    def complete(self) -> list[Path]:
        if not self.folder.exists():
            return []
        return sorted(p for p in self.folder.glob("step-*") if (p / STATE_FILE).exists())

    def save(self, step: int, state: dict[str, Any]) -> Path:
        import torch

        final = self.folder / f"step-{step:07d}"
        partial = self.folder / f".partial-{final.name}"   # outside the step-* pattern until complete
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        torch.save({**state, "step": step, "run_hash": self.run_hash}, partial / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in self.complete()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest(self) -> dict[str, Any] | None:
        """The newest complete state of this run, or None; another run's state is refused."""
        import torch

        saved = self.complete()
        if not saved:
            return None
        state = torch.load(saved[-1] / STATE_FILE, weights_only=True)
        if state["run_hash"] != self.run_hash:
            raise HierarcapsError(f"{self.folder.parent} holds a different run (other settings or data); "
                                  "use a new --out or delete it")
        return state
