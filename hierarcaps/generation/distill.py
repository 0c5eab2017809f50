"""The Flan-T5 student: trained on accepted chains in both directions, then used to build hierarchies.

- specific -> generic: ``generalize: <caption>`` -> ``t1 => t2 => t3``
- generic -> specific: ``specify: t1 => ... => tk`` -> tier k+1 (``specify:`` alone -> a tier 1)

The student is a real checkpoint (``distill.student``) or, where no weights can be had, a T5 built from
``distill.scratch`` with a BPE tokenizer trained on the training chains. It trains with the package's one
training loop (``hierarcaps.training``): checkpoints every ``checkpoint_every`` steps, and a killed run
resumes to the same weights; on the run's device (a GPU when there is one), in bf16 mixed precision there
when ``distill.dtype`` says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_open
from ..errors import HierarcapsError
from ..models.folders import NO_REMOTE_CODE, SAFE_WEIGHTS
from ..models.torch_utils import torch_dtype
from .config import BuildConfig, DistillConfig

GENERALIZE, SPECIFY, SEP = "generalize: ", "specify: ", " => "
Chain = tuple[str, ...]


def generalize_source(caption: str) -> str:
    return GENERALIZE + caption


def specify_source(tiers_so_far: Sequence[str]) -> str:
    return SPECIFY + SEP.join(tiers_so_far)


def training_pairs(chains: Sequence[Chain]) -> list[tuple[str, str]]:
    """Both directions of every chain: one generalize pair and one specify pair per tier."""
    pairs = []
    for chain in chains:
        pairs.append((generalize_source(chain[-1]), SEP.join(chain[:-1])))
        pairs.extend((specify_source(chain[:k]), chain[k]) for k in range(len(chain)))
    return pairs


def train_scratch_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A T5-style tokenizer (pad 0, eos 1, unk 2) learned from the training text. BPE, because its training
    is deterministic (the unigram trainer's is not), and a resumed run must rebuild the same student."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                  show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


def chain_groups(chains: Sequence[Chain]) -> list[str]:
    """The group of each training pair: its chain (both directions of a chain stay on one side of the split)."""
    return [str(number) for number, chain in enumerate(chains) for _ in range(len(chain) + 1)]


class Distiller:
    """Train the student on chains with the package's training loop; ``run()`` returns the final model's folder.

    The training settings are ``config``'s (``steps``, ``batch_size``, ``lr``, ``eval_every``, ...); held-out
    pairs are whole chains; the run ends with the last step's weights, as configured (``keep``).
    """

    selection = "val_loss"
    higher_is_better = False

    def __init__(self, config: DistillConfig, chains: Sequence[Chain], out: Path, seed: int,
                 progress: bool = True, device: str = "cpu") -> None:
        from ..training import holdout

        self.config = dataclasses.replace(config, seed=seed, progress=progress)
        self.out, self.device = Path(out), device
        pairs = training_pairs(chains)
        train, val = holdout(chain_groups(chains), self.config.val_fraction, seed)
        self.train_pairs, self.val_pairs = [pairs[i] for i in train], [pairs[i] for i in val]
        if not self.train_pairs:
            raise HierarcapsError("no accepted chains to distill: every chain was rejected upstream")
        digest = json.dumps([dataclasses.asdict(self.config), pairs], sort_keys=True, default=str)
        self.run_hash = hashlib.sha256(digest.encode()).hexdigest()[:16]

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config, T5ForConditionalGeneration

        torch.manual_seed(self.config.seed)
        if self.config.scratch is None:
            self.tokenizer = AutoTokenizer.from_pretrained(self.config.student, **NO_REMOTE_CODE)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(self.config.student, **SAFE_WEIGHTS)
        else:
            folder = self.out / "tokenizer"
            if not (folder / "tokenizer.json").exists():   # trained once; a resumed run reuses it
                texts = [t for pair in self.train_pairs for t in pair]
                tokenizer = train_scratch_tokenizer(texts, self.config.tokenizer_vocab)
                tmp = self.out / "tokenizer.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                tokenizer.save_pretrained(tmp)
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
            self.tokenizer = AutoTokenizer.from_pretrained(folder, **NO_REMOTE_CODE)
            t5 = T5Config(vocab_size=len(self.tokenizer), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                          **self.config.scratch)
            self.model = T5ForConditionalGeneration(t5)
        self.model.to(self.device)

    def _batch(self, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
        sources = self.tokenizer([s for s, _ in pairs], padding=True, truncation=True,
                                 max_length=self.config.max_source_length, return_tensors="pt")
        targets = self.tokenizer([t for _, t in pairs], padding=True, truncation=True,
                                 max_length=self.config.max_target_length, return_tensors="pt")
        labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, -100)
        return {k: v.to(self.device) for k, v in {**sources, "labels": labels}.items()}

    def _forward(self, batch: dict[str, Any]) -> Any:
        """The loss of a batch, under bf16 autocast on a GPU when the config asks for it."""
        import contextlib

        import torch

        mixed = torch_dtype(self.config.dtype, self.device) == torch.bfloat16 and self.device.startswith("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16) if mixed else contextlib.nullcontext():
            return self.model(**batch).loss.float()

    # -- the task ------------------------------------------------------------------------------------------------
    def parameters(self) -> list[Any]:
        return list(self.model.parameters())

    def trained_state(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_trained_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)

    def after_step(self) -> None:
        pass

    def loss(self, micro_batch: int) -> dict[str, Any]:
        from ..training import batch_rows

        self.model.train()
        size = min(self.config.batch_size, len(self.train_pairs))
        rows = next(batch_rows(len(self.train_pairs), size, self.config.seed, micro_batch))
        return {"loss": self._forward(self._batch([self.train_pairs[i] for i in rows]))}

    def evaluate(self) -> dict[str, float]:
        """Token-weighted cross-entropy on the held-out chains."""
        import torch

        if not self.val_pairs:
            return {}
        total, tokens = 0.0, 0
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(self.val_pairs), 64):
                batch = self._batch(self.val_pairs[start:start + 64])
                n = int((batch["labels"] != -100).sum())
                total += float(self._forward(batch)) * n
                tokens += n
        return {"val_loss": total / tokens}

    # -- the run --------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        from ..training import TrainingLoop

        final = self.out / "model"
        if final.exists():   # it appears (by rename) only once complete
            return final
        self._load()
        loop = TrainingLoop(self, self.config, self.out, self.run_hash, desc="Distilling")
        summary = loop.run()
        return self._finish(loop, summary)

    def _finish(self, loop: Any, summary: dict[str, Any]) -> Path:
        """The model and its summary first (the run is complete once the model is in place), the curves after:
        without matplotlib the run still ends, and says which plot it skipped."""
        from ..training import write_log

        final, tmp = self.out / "model", self.out / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.eval()
        self.model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        val = [e["val_loss"] for e in loop.log if "val_loss" in e]
        seconds = summary["train_seconds"]
        done = summary["steps"] - loop.first_step
        record = {"train_pairs": len(self.train_pairs), "val_pairs": len(self.val_pairs), "steps": summary["steps"],
                  "val_loss_first": val[0] if val else None, "val_loss_last": val[-1] if val else None,
                  "seconds_this_session": seconds,
                  "pairs_per_s": done * self.config.batch_size / seconds if seconds else None,
                  "config": dataclasses.asdict(self.config)}
        # beside the model, not in it: the model folder's content hash is the student's version
        with atomic_open(self.out / "summary.json") as handle:
            json.dump(record, handle, indent=2)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        loop.finish_checkpoints()
        write_log(self.out, loop.log, summary=summary)
        return final


class Student:
    """A trained student for batched generation in both directions."""

    def __init__(self, folder: str | Path, config: BuildConfig, *, device: str = "cpu", dtype: str = "auto"
                 ) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, **NO_REMOTE_CODE)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(folder, **SAFE_WEIGHTS).eval()
        self.model.to(device, dtype=torch_dtype(dtype, device))
        self.config, self.device = config, device

    def _generate(self, sources: list[str], seed: int, samples: int) -> list[list[str]]:
        import torch

        torch.manual_seed(seed)
        config, out = self.config, []
        sampling = samples > 1
        for start in range(0, len(sources), config.batch_size):
            batch = self.tokenizer(sources[start:start + config.batch_size], padding=True,
                                   return_tensors="pt").to(self.device)
            with torch.inference_mode():
                tokens = self.model.generate(
                    **batch, max_new_tokens=config.max_new_tokens, do_sample=sampling, num_return_sequences=samples,
                    temperature=config.temperature if sampling else None, top_p=config.top_p if sampling else None)
            texts = [t.strip() for t in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
            out.extend(texts[i:i + samples] for i in range(0, len(texts), samples))
        return out

    def generalize_text(self, captions: list[str], seed: int) -> list[str]:
        """The raw greedy ``t1 => t2 => t3`` output for each caption."""
        return [texts[0] for texts in self._generate([generalize_source(c) for c in captions], seed, 1)]

    def generalize(self, captions: list[str], seed: int) -> list[Chain | None]:
        """Tiers 1-3 for each caption, as a full chain ending in the caption; None if not 3 tiers."""
        chains: list[Chain | None] = []
        for caption, text in zip(captions, self.generalize_text(captions, seed)):
            tiers = tuple(t.strip() for t in text.split(SEP.strip()))
            chains.append((*tiers, caption) if len(tiers) == 3 else None)
        return chains

    def specify(self, prefixes: list[Sequence[str]], samples: int, seed: int) -> list[list[str]]:
        """``samples`` sampled next tiers under each prefix chain."""
        return self._generate([specify_source(p) for p in prefixes], seed, samples)



def tier1_scores(student: Student, train: Sequence[Chain], held_out: Sequence[Any]) -> dict[str, float]:
    """How often the student's tier 1 for a held-out caption equals its reference tier 1 (``exact``) or any
    tier 1 of the same image (``any_of_image``: images carry several valid chains), against always
    answering the most frequent training tier 1 (the trivial baseline). ``held_out`` are ``Hierarchy``s."""
    import collections

    references: dict[Any, set[str]] = collections.defaultdict(set)
    for record in held_out:
        references[record.image_url or record.id].add(record.positive[0].lower())
    guesses = [t.split(SEP.strip())[0].strip().lower()
               for t in student.generalize_text([r.positive[-1] for r in held_out], seed=0)]
    frequent = collections.Counter(c[0].lower() for c in train).most_common(1)[0][0]

    def rates(answers: Sequence[str]) -> tuple[float, float]:
        exact = sum(a == r.positive[0].lower() for a, r in zip(answers, held_out)) / len(held_out)
        anywhere = sum(a in references[r.image_url or r.id] for a, r in zip(answers, held_out)) / len(held_out)
        return exact, anywhere

    exact, anywhere = rates(guesses)
    base_exact, base_anywhere = rates([frequent] * len(held_out))
    return {"exact": exact, "any_of_image": anywhere, "baseline_exact": base_exact,
            "baseline_any_of_image": base_anywhere, "baseline_answer": frequent, "held_out": len(held_out)}
