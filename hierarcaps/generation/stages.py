"""The pipeline's stages as pure batch transforms: a list of row dicts in, a list of row dicts out.

Models come from a ``Models`` holder (loaded once, on first use) and randomness from an explicit seed, so
a batch always gives the same rows: that is what lets a killed run resume shard by shard, and what would
let a distributed engine (Ray Data ``map_batches``) run these functions unchanged.

Row fields: ``id``, ``caption``, ``image_url``; ``chain`` (t1..t3 + caption, or None), ``raw`` (the LLM's
text) and ``reason`` (None when accepted) after seed/filter/augment; ``positive``, ``negative``, ``reason`` after build.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Completion, LLMBackend, Sampling, make_backend
from .config import GenerationConfig
from .nli import (
    NLIScorer,
    TransformersNLI,
    chain_reason,
    judge_chains,
    link_probabilities,
    select_negatives,
    structural_reason,
)

Row = dict[str, Any]
FIELDS = ["tier_1", "tier_2", "tier_3"]


class Models:
    """The models of a run, each loaded the first time a stage needs it."""

    def __init__(self, config: GenerationConfig, student_folder: Path | None = None) -> None:
        self.config, self.student_folder = config, student_folder

    @functools.cached_property
    def llm(self) -> LLMBackend:
        return make_backend(self.config.llm, self.config.seed)

    @functools.cached_property
    def nli(self) -> NLIScorer:
        return TransformersNLI(self.config.nli)

    @functools.cached_property
    def student(self) -> Any:
        from .distill import Student

        return Student(self.student_folder, self.config.build)


def load_prompts(folder: str | Path) -> dict[str, str]:
    """The templates a lab edits: ``seed.txt``, ``augment.txt``, ``demonstration.txt``."""
    from ..errors import DataError

    folder, prompts = Path(folder), {}
    for name in ("seed", "augment", "demonstration"):
        path = folder / f"{name}.txt"
        if not path.exists():
            raise DataError("prompt template missing", file=str(path))
        prompts[name] = path.read_text(encoding="utf-8").strip()
    return prompts


def render(template: str, **values: str) -> str:
    """Fill ``{name}`` slots by plain replacement (templates hold literal JSON braces)."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def _chain_row(caption: str, completion: Completion) -> dict[str, Any]:
    """The chain (t1..t3 + the caption) a completion gives, the model's raw text, and a parse reason."""
    fields = completion.fields
    chain = None if fields is None else [fields[f].strip() for f in FIELDS] + [caption]
    return {"chain": chain, "raw": completion.text, "reason": None if chain else "unparseable"}


def seed_batch(rows: list[Row], models: Models, prompts: dict[str, str], seed: int) -> list[Row]:
    """The LLM writes tiers 1-3 for each caption (tier 4 is the caption)."""
    llm = models.config.llm
    sampling = Sampling(llm.temperature, llm.top_p, llm.max_new_tokens)
    outputs = models.llm.complete_json([render(prompts["seed"], caption=r["caption"]) for r in rows],
                                       FIELDS, sampling, seed)
    return [{**r, **_chain_row(r["caption"], out), "origin": "seed"} for r, out in zip(rows, outputs)]


def filter_batch(rows: list[Row], models: Models) -> list[Row]:
    """Attach each chain's NLI probabilities per link and its rejection reason (None: accepted)."""
    chains = [tuple(r["chain"]) if r["chain"] is not None else None for r in rows]
    links = link_probabilities(chains, models.nli) if rows else []
    return [{**r, "nli": probs, "reason": chain_reason(chain, probs, models.config.nli)}
            for r, chain, probs in zip(rows, chains, links)]


def _demonstration(prompts: dict[str, str], chain: Sequence[str]) -> str:
    import json

    tiers = json.dumps(dict(zip(FIELDS, chain[:3])))
    return render(prompts["demonstration"], caption=chain[3], json=tiers)


def augment_batch(rows: list[Row], models: Models, prompts: dict[str, str], pool: Sequence[Sequence[str]],
                  seed: int) -> list[Row]:
    """More chains per caption, prompted with accepted chains as demonstrations, sampled and then filtered."""
    settings = models.config.augment
    rng = np.random.default_rng(seed)
    requests, owners = [], []
    for row in rows:
        others = [c for c in pool if c[3] != row["caption"]]
        for sample in range(settings.samples_per_caption):
            picks = rng.choice(len(others), size=min(settings.demonstrations, len(others)), replace=False) \
                if others else []
            shots = "\n\n".join(_demonstration(prompts, others[i]) for i in picks)
            requests.append(render(prompts["augment"], demonstrations=shots, caption=row["caption"]))
            owners.append((row, sample))
    sampling = Sampling(settings.temperature, settings.top_p, models.config.llm.max_new_tokens)
    outputs = models.llm.complete_json(requests, FIELDS, sampling, seed) if requests else []
    made = [{**row, "id": f"{row['id']}#aug{sample}", **_chain_row(row["caption"], out), "origin": "augment"}
            for (row, sample), out in zip(owners, outputs)]
    return filter_batch(made, models)


def build_batch(rows: list[Row], models: Models, seed: int,
                teacher: dict[str, list[tuple[str, list[str]]]] | None = None) -> list[Row]:
    """Each caption's positive chains: the student's, and the LLM's accepted ones (``teacher``: caption id ->
    (origin, chain)); then the student's sampled candidates for each negative tier under each positive, of
    which NLI keeps the first that fits under positive tier k and contradicts positive tier k+1."""
    student, nli = models.student, models.config.nli
    learned = student.generalize([r["caption"] for r in rows], seed)
    items: list[tuple[Row, str, str, Any]] = []          # (caption row, id, source, positive chain)
    for row, chain in zip(rows, learned):
        items.append((row, row["id"], "student", chain))
        for number, (origin, given) in enumerate((teacher or {}).get(row["id"], [])):
            items.append((row, f"{row['id']}#llm-{origin}{number}", f"llm-{origin}", tuple(given)))
    positives = [positive for *_, positive in items]
    reasons = [None if p is None else structural_reason(p, nli.generic_not_longer) for p in positives]
    reasons = ["positive:" + (r or "unparseable") if p is None or r else None for p, r in zip(positives, reasons)]
    good = [i for i, reason in enumerate(reasons) if reason is None]
    samples = models.config.build.negative_candidates
    candidates: list[list[list[str]]] = [[] for _ in good]
    for k in range(4):
        drawn = student.specify([positives[i][:k] for i in good], samples, seed + k + 1) if good else []
        for slot, options in enumerate(drawn):
            candidates[slot].append(options)
    negatives: list[Any] = [None] * len(items)
    picked = select_negatives([positives[i] for i in good], candidates, models.nli, nli) if good else []
    for i, (negative, reason) in zip(good, picked):
        negatives[i], reasons[i] = negative, reason
    return [{"id": item_id, "caption": row["caption"], "image_url": row.get("image_url"), "source": source,
             "positive": list(p) if p is not None else None, "negative": list(n) if n is not None else None,
             "reason": reason}
            for (row, item_id, source, _), p, n, reason in zip(items, positives, negatives, reasons)]


def final_check_batch(rows: list[Row], models: Models) -> list[Row]:
    """The export's last NLI pass over the positive chains that have a negative."""
    complete = [i for i, r in enumerate(rows) if r["reason"] is None]
    reasons = judge_chains([tuple(rows[i]["positive"]) for i in complete], models.nli, models.config.nli)
    out = [dict(r) for r in rows]
    for i, reason in zip(complete, reasons):
        out[i]["reason"] = None if reason is None else "final:" + reason
    return out
