"""From Label Studio's JSON export to curated ``Hierarchy`` records and curation statistics (pure functions).

Resolution when several annotators completed a task: the decision is the majority of their accept /
reject answers, a tie counts as reject (nothing doubtful enters a test set); the tiers come from the most
recently updated annotation that voted with the majority. Skipped (cancelled) annotations do not vote.
A negative chain is kept only when the deciding annotation confirmed all four of its tiers.

An accepted task enters the curated split only if its (possibly edited) chain passes the same record checks as
`hierarcaps validate` (four non-empty, distinct tiers), every tier has a verdict and none is "not entailed",
and, when an NLI model is given, every link of the edited chain is entailed; otherwise it is reported per task
in the statistics (``failed_checks``) and kept out.
"""

from __future__ import annotations

import collections
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..data.records import TIERS, Hierarchy

CONFIRMED = "truly contradicts"


def merge_export(store: dict[str, Any], export: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Fold an export into what was pulled before: tasks keyed by hierarchy id, annotations by id; a newer
    ``updated_at`` replaces an annotation, and nothing pulled earlier is dropped."""
    merged = {key: {"data": task["data"], "annotations": dict(task["annotations"])} for key, task in store.items()}
    for task in export:
        key = str(task["data"]["hierarchy_id"])
        entry = merged.setdefault(key, {"data": task["data"], "annotations": {}})
        entry["data"] = task["data"]
        for annotation in task.get("annotations", []):
            ann_id = str(annotation["id"])
            old = entry["annotations"].get(ann_id)
            if old is None or str(annotation.get("updated_at")) >= str(old.get("updated_at")):
                entry["annotations"][ann_id] = annotation
    return merged


def _values(annotation: dict[str, Any]) -> dict[str, Any]:
    """from_name -> the answer (text for text areas, the choice for choices)."""
    found: dict[str, Any] = {}
    for item in annotation.get("result") or []:
        value = item.get("value", {})
        if "text" in value:
            texts = [t.strip() for t in value["text"] if t and t.strip()]
            if texts:
                found[item["from_name"]] = texts[-1]
        elif value.get("choices"):
            found[item["from_name"]] = value["choices"][0]
    return found


def original_tiers(data: dict[str, Any]) -> tuple[str, ...]:
    return tuple(data[f"original_{k}"] for k in range(1, TIERS + 1))


def resolve(annotations: Sequence[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    """('pending' | 'skipped' | 'accept' | 'reject', the deciding annotation's answers)."""
    if not annotations:
        return "pending", None
    done = [a for a in annotations if not a.get("was_cancelled")]
    if not done:
        return "skipped", None
    votes = [(_values(a).get("decision"), a) for a in done]
    accepts = sum(v == "accept" for v, _ in votes)
    decision = "accept" if accepts * 2 > len(votes) else "reject"
    majority = [a for v, a in votes if (v == "accept") == (decision == "accept")]
    latest = max(majority, key=lambda a: (str(a.get("updated_at")), int(a["id"])))
    return decision, _values(latest)


def curated_record(key: str, data: dict[str, Any], answers: dict[str, Any]) -> Hierarchy:
    tiers = tuple(answers.get(f"tier_{k}") or original for k, original in enumerate(original_tiers(data), start=1))
    negative = tuple(data[f"negative_{k}"] for k in range(1, TIERS + 1)) if data.get("negative_1") else None
    confirmed = all(answers.get(f"negative_check_{k}") == CONFIRMED for k in range(1, TIERS + 1))
    return Hierarchy(id=key, positive=tiers, negative=negative if confirmed else None,
                     image_url=data.get("image_url") or None, source="label-studio", split="curated")


def krippendorff_alpha_nominal(units: Iterable[Sequence[str]]) -> float | None:
    """Krippendorff's alpha for nominal values; units with fewer than two values carry no information.
    None when there is no disagreement possible (a single value overall) or nothing to compare."""
    coincidences: collections.Counter[tuple[str, str]] = collections.Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = collections.Counter(values)
        for c in counts:
            for k in counts:
                pairs = counts[c] * (counts[k] - (c == k))
                coincidences[(c, k)] += pairs / (m - 1)
    totals: collections.Counter[str] = collections.Counter()
    for (c, _), value in coincidences.items():
        totals[c] += value
    n = sum(totals.values())
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if n <= 1 or expected == 0:
        return None
    observed = sum(v for (c, k), v in coincidences.items() if c != k)
    return 1.0 - (n - 1) * observed / expected


def _percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def answer_problems(record: Hierarchy, answers: dict[str, Any]) -> list[str]:
    """Why an accepted task's chain cannot enter the curated split (record checks, verdicts), or []."""
    problems = [f"{field}: {message}" for field, message in record.problems(TIERS)]
    for k in range(1, TIERS + 1):
        verdict = answers.get(f"verdict_{k}")
        if verdict is None:
            problems.append(f"tier {k}: no verdict")
        elif verdict == "not entailed":
            problems.append(f"tier {k}: accepted although marked 'not entailed'")
    return problems


EntailmentCheck = Callable[[list[tuple[str, ...]]], list[str | None]]


def curate(store: dict[str, Any], entailment: EntailmentCheck | None = None) -> tuple[list[Hierarchy], dict[str, Any]]:
    """Curated records (accepted items, edits applied, checks passed) and the curation statistics.

    ``entailment`` (e.g. an NLI model's ``judge_chains``) re-checks the links of every edited chain: a reason
    per chain, None where every link holds."""
    records: list[Hierarchy] = []
    status: collections.Counter[str] = collections.Counter()
    edited_tiers = [0] * TIERS
    verdicts = [collections.Counter() for _ in range(TIERS)]
    negative_checks = [collections.Counter() for _ in range(TIERS)]
    agreement_units: dict[str, list[list[str]]] = {"decision": [], "verdicts": []}
    lead_times: list[float] = []
    per_annotator: collections.Counter[str] = collections.Counter()
    failed: dict[str, list[str]] = {}
    edited_chains: dict[str, tuple[str, ...]] = {}
    originals: dict[str, tuple[str, ...]] = {}
    for key in sorted(store):
        data, annotations = store[key]["data"], list(store[key]["annotations"].values())
        decision, answers = resolve(annotations)
        done = [a for a in annotations if not a.get("was_cancelled")]
        lead_times.extend(float(a["lead_time"]) for a in done if a.get("lead_time") is not None)
        per_annotator.update(str(a.get("completed_by")) for a in done)
        if len(done) >= 2:
            answer_sets = [_values(a) for a in done]
            agreement_units["decision"].append([a.get("decision", "") for a in answer_sets if a.get("decision")])
            for k in range(1, TIERS + 1):
                agreement_units["verdicts"].append([a[f"verdict_{k}"] for a in answer_sets if a.get(f"verdict_{k}")])
        if decision in ("pending", "skipped") or answers is None:
            status[decision] += 1
            continue
        for k in range(TIERS):
            if answers.get(f"verdict_{k + 1}"):
                verdicts[k][answers[f"verdict_{k + 1}"]] += 1
            if answers.get(f"negative_check_{k + 1}"):
                negative_checks[k][answers[f"negative_check_{k + 1}"]] += 1
        if decision == "reject":
            status["rejected"] += 1
            continue
        record = curated_record(key, data, answers)
        problems = answer_problems(record, answers)
        if problems:
            failed[key] = problems
            continue
        originals[key] = original_tiers(data)
        if record.positive != originals[key]:
            edited_chains[key] = record.positive
        records.append(record)
    if entailment is not None and edited_chains:
        for key, reason in zip(edited_chains, entailment(list(edited_chains.values()))):
            if reason is not None:
                failed[key] = [f"edited chain: {reason}"]
        records = [r for r in records if r.id not in failed]
    for record in records:
        changed = [a != b for a, b in zip(record.positive, originals[record.id])]
        for k, change in enumerate(changed):
            edited_tiers[k] += change
        status["edited" if any(changed) else "accepted_as_is"] += 1
    completed = status["accepted_as_is"] + status["edited"] + status["rejected"] + len(failed)
    accepted = len(records)
    stats = {
        "tasks": len(store), "completed": completed, "pending": status["pending"], "skipped": status["skipped"],
        "accepted_as_is": status["accepted_as_is"], "edited": status["edited"], "rejected": status["rejected"],
        "failed_checks": dict(sorted(failed.items())),
        "percent_of_completed": {name: _percent(status[name], completed)
                                 for name in ("accepted_as_is", "edited", "rejected")},
        "edit_rate_per_tier": [round(e / accepted, 4) if accepted else None for e in edited_tiers],
        "entailment_rechecked": entailment is not None,
        "verdicts_per_tier": [dict(sorted(v.items())) for v in verdicts],
        "negative_checks_per_tier": [dict(sorted(c.items())) for c in negative_checks],
        "negatives_confirmed": sum(r.negative is not None for r in records),
        "agreement": {
            "overlapping_tasks": len(agreement_units["decision"]),
            "krippendorff_alpha_decision": krippendorff_alpha_nominal(agreement_units["decision"]),
            "krippendorff_alpha_verdicts": krippendorff_alpha_nominal(agreement_units["verdicts"]),
            "note": "alpha needs tasks with two or more annotations: push with --overlap 2 or more",
        },
        "seconds_per_annotation": {
            "mean": statistics.fmean(lead_times) if lead_times else None,
            "median": statistics.median(lead_times) if lead_times else None,
        },
        "annotations_per_annotator": dict(sorted(per_annotator.items())),
        "resolution_rule": "majority of completed annotations, tie = reject; tiers from the latest majority "
                           "annotation; skipped annotations do not vote",
    }
    return records, stats
