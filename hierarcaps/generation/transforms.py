"""What each shard stage does to a batch of rows: a list of row dicts in, a list of row dicts out.

Models come from a ``Models`` holder (loaded once per worker, on first use) and randomness from an explicit
seed, so a batch always gives the same rows: that is what lets a killed run resume shard by shard, and any
engine (this process, Ray actors) run these functions unchanged.

Row fields: ``id``, ``caption``, ``image_url``, ``teacher`` (whether the LLM stages see the caption) after
captions; ``chain`` (t1..t3 + caption, or None), ``raw`` (the LLM's text), ``nli`` (link probabilities) and
``reason`` (None when accepted) after seed/filter/augment; ``source``, ``positive``, ``negative``, ``nli``,
``candidates`` (scored negative candidates) and ``reason`` after build.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..nli import (
    NLIConfig,
    chain_reason,
    decide_chain,
    link_probabilities,
    pick_negative,
    score_candidates,
    structural_reason,
)
from .backends import Completion, Sampling
from .models import Models
from .prompts import FIELDS, Prompts, conversation, seed_conversation

Row = dict[str, Any]


def row_seeds(seed: int, count: int) -> list[int]:
    """A seed per row, from the shard's seed and the row's position: a row samples the same whichever rows
    share its batch or its engine."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count)]


def _chain_row(caption: str, completion: Completion) -> dict[str, Any]:
    """The chain (t1..t3 + the caption) a completion gives, the model's raw text, and a parse reason (a value
    cut at the length limit is ``truncated``, not a caption)."""
    fields = completion.fields
    chain = None if fields is None else [fields[f].strip() for f in FIELDS] + [caption]
    reason = "unparseable" if chain is None else ("truncated" if completion.truncated else None)
    return {"chain": chain, "raw": completion.text, "truncated": completion.truncated, "reason": reason}


def taught(rows: list[Row]) -> list[Row]:
    """The captions the LLM stages see (older runs' captions, which carry no mark, were all the LLM's)."""
    return [row for row in rows if row.get("teacher", True)]


def seed_batch(rows: list[Row], models: Models, prompts: Prompts, seed: int) -> list[Row]:
    """The LLM writes tiers 1-3 for each of its captions (tier 4 is the caption), shown the seed
    demonstrations."""
    rows = taught(rows)
    if not rows:
        return []
    llm = models.config.llm
    sampling = Sampling(llm.temperature, llm.top_p, llm.max_new_tokens)
    conversations = [seed_conversation(prompts, r["caption"]) for r in rows]
    outputs = models.llm.complete_json(conversations, FIELDS, sampling, row_seeds(seed, len(rows)))
    return [{**r, **_chain_row(r["caption"], out), "origin": "seed"} for r, out in zip(rows, outputs)]


def filter_batch(rows: list[Row], models: Models) -> list[Row]:
    """Attach each chain's NLI probabilities per link and its rejection reason (None: accepted)."""
    chains = [tuple(r["chain"]) if r["chain"] is not None else None for r in rows]
    links = link_probabilities(chains, models.nli) if rows else []
    judged = [{**r, "nli": probs} for r, probs in zip(rows, links)]
    return [{**r, "reason": decide_llm_chain(r, models.config.nli)} for r in judged]


def decide_llm_chain(row: Row, config: NLIConfig) -> str | None:
    """An LLM chain's decision from its stored NLI probabilities; a tier cut at the length limit stays rejected
    whatever the NLI says (a mid-word cut is not a caption), so no threshold can let it in."""
    return "truncated" if row.get("truncated") else decide_chain(row, config)


def demonstrations(pool: Sequence[Sequence[str]], captions: set[str], count: int, rng: np.random.Generator
                   ) -> list[Sequence[str]]:
    """``count`` accepted chains from the pool, none of these captions' own, drawn without reading the whole
    pool (the cost of a batch does not grow with the pool)."""
    chosen: dict[int, Sequence[str]] = {}
    for _ in range(8 * count + 8):
        if len(chosen) == min(count, len(pool)):
            break
        index = int(rng.integers(len(pool)))
        if index not in chosen and pool[index][3] not in captions:
            chosen[index] = pool[index]
    return list(chosen.values())


def augment_batch(rows: list[Row], models: Models, prompts: Prompts, pool: Sequence[Sequence[str]],
                  seed: int) -> list[Row]:
    """More chains per LLM caption, prompted with accepted chains as demonstrations, sampled and then filtered.
    The demonstrations are drawn once per decoding batch (``llm.batch_size`` requests), so every prompt of a
    batch shares all but its caption and the decoder encodes that shared prefix once."""
    settings = models.config.augment
    rows = taught(rows)
    requests = [(row, sample) for row in rows for sample in range(settings.samples_per_caption)]
    if not requests:
        return []
    rng = np.random.default_rng(seed)
    size = models.config.llm.batch_size
    conversations = []
    for start in range(0, len(requests), size):
        batch = requests[start:start + size]
        shown = demonstrations(pool, {row["caption"] for row, _ in batch}, settings.demonstrations, rng)
        examples = [(chain[3], chain[:3]) for chain in shown]
        conversations += [conversation(prompts.augment, examples, row["caption"]) for row, _ in batch]
    sampling = Sampling(settings.temperature, settings.top_p, models.config.llm.max_new_tokens)
    outputs = models.llm.complete_json(conversations, FIELDS, sampling, row_seeds(seed, len(conversations)))
    made = [{**row, "id": f"{row['id']}#aug{sample}", **_chain_row(row["caption"], out), "origin": "augment"}
            for (row, sample), out in zip(requests, outputs)]
    return filter_batch(made, models)


def build_batch(rows: list[Row], models: Models, seed: int,
                teacher: dict[str, list[tuple[str, list[str]]]] | None = None) -> list[Row]:
    """Each caption's positive chains: the LLM's accepted ones for a caption the LLM saw (``teacher``: caption
    id -> (origin, chain)), the student's for every other caption (the point of distilling: the student writes
    what the LLM never saw); then the student's sampled candidates for each negative tier under each positive.
    NLI scores every link of each positive and every candidate once; the scores stay with the row (``nli``,
    ``candidates``), and the decision (structure, then the first candidate that fits under positive tier k and
    contradicts positive tier k+1) is made from them, so thresholds can change later without a model."""
    student, nli = models.student, models.config.nli
    alone = [row for row in rows if not row.get("teacher", True)]
    learned = dict(zip((row["id"] for row in alone), student.generalize([r["caption"] for r in alone], seed))) \
        if alone else {}
    items: list[tuple[Row, str, str, Any]] = []          # (caption row, id, source, positive chain)
    for row in rows:
        if row["id"] in learned:
            items.append((row, row["id"], "student", learned[row["id"]]))
        for number, (origin, given) in enumerate((teacher or {}).get(row["id"], [])):
            items.append((row, f"{row['id']}#llm-{origin}{number}", f"llm-{origin}", tuple(given)))
    positives = [positive for *_, positive in items]
    structural = [structural_reason(p, nli.generic_not_longer) if p is not None else "unparseable" for p in positives]
    good = [i for i, reason in enumerate(structural) if reason is None]
    links = link_probabilities([positives[i] for i in good], models.nli) if good else []
    samples = models.config.build.negative_candidates
    candidates: list[list[list[str]]] = [[] for _ in good]
    for k in range(4):
        drawn = student.specify([positives[i][:k] for i in good], samples, seed + k + 1) if good else []
        for slot, options in enumerate(drawn):
            candidates[slot].append(options)
    scored = score_candidates([positives[i] for i in good], candidates, models.nli) if good else []
    stored: dict[int, tuple[Any, Any]] = dict(zip(good, zip(links, scored)))
    out = []
    for i, ((row, item_id, source, _), positive) in enumerate(zip(items, positives)):
        built = {"id": item_id, "caption": row["caption"], "image_url": row.get("image_url"), "source": source,
                 "positive": list(positive) if positive is not None else None, "negative": None,
                 "nli": stored[i][0] if i in stored else None, "candidates": stored[i][1] if i in stored else None,
                 "reason": "positive:" + structural[i] if structural[i] else None}
        out.append(decide_built(built, nli))
    return out


def decide_built(row: Row, config: Any) -> Row:
    """A built row's negative (and its reason) from its stored candidate scores under ``config``'s thresholds."""
    if row["candidates"] is None:
        return row
    negative, reason = pick_negative(row["candidates"], config)
    return {**row, "negative": list(negative) if negative is not None else None, "reason": reason}


def final_check(row: Row, config: Any) -> Row:
    """The export's last check of a complete row: every link of its positive chain entailed, from the NLI
    probabilities stored at build (no model runs)."""
    if row["reason"] is not None:
        return row
    reason = chain_reason(tuple(row["positive"]), row["nli"], config)
    return {**row, "reason": None if reason is None else "final:" + reason}
