"""CLI subcommands ``reco memory|stats|train``."""

from __future__ import annotations

import argparse
import json

from ..configs import add_options, from_options
from ..data.images import image_options
from ..models.registry import spec_help
from ..subcommand import Command, echo, engine, engine_options, whole_number
from .index import INDEX_TYPES

TRAIN_OPTIONS = ["fusion", "learned", "objective", "neighbour_dropout", "memory_noise", "sides", "holdout",
                 "concepts", "confidence", "k", "heads", "ff_mult", "start", "residual", "fuse", "cross_modal_search",
                 "duplicate_threshold", "temperature", "steps", "batch_size",
                 "lr", "weight_decay", "warmup_steps", "max_grad_norm", "eval_every", "checkpoint_every",
                 "val_fraction", "keep", "patience", "vocabulary_limit", "seed"]
TRAIN_HELP = {
    "fusion": "auto: train the learned fusion (--learned) and keep it only if, on held-out concepts it never "
              "trained on, its accuracy minus the best training-free option's has a paired bootstrap interval "
              "above 0; otherwise that option (the frozen base, or mean fusion on the refined sides or on the query "
              "side alone)",
    "learned": "the learned fusion auto trains and weighs: vote (two scalars per side: neighbours weighted by "
               "their agreement with each other; on unseen concepts the one learned fusion measured to beat the "
               "training-free options), transformer (RECO's; --fusion transformer keeps it as RECO does) or mlp",
    "neighbour_dropout": "in training, the share of each query's neighbours left unread (the nearest is always "
                         "read); 0: off, as RECO",
    "memory_noise": "in training, the share of neighbours swapped for random memory rows (never the pair's own "
                    "image); 0: off, as RECO",
    "ff_mult": "the transformer's / MLP's hidden width in multiples of the embedding width",
    "objective": "vocabulary: every distinct training text (or class) as an answer; in-batch: RECO's loss; "
                 "supervised: class names from a label column of --train-pairs",
    "holdout": "concept: hold out whole concepts (labels, or clusters of the frozen text embeddings), drawn by "
               "size, half to select the step and half, untouched, to decide auto; group: whole images; class: "
               "whole labels",
    "concepts": "clusters standing for concepts when the pairs have no labels (default about sqrt(pairs))",
    "confidence": "of the paired bootstrap interval auto needs above 0",
    "start": "what a learned fusion starts as and adds its update to: best, the best training-free option on each "
             "side (step 0 equals it); mean fusion; or the query itself",
    "duplicate_threshold": "in training, neighbours at least this similar to the query count as the query",
    "keep": "the weights a run ends with: those of the best held-out evaluation, or the last step's",
    "patience": "stop after this many held-out evaluations without improvement",
    "vocabulary_limit": "answers scored per step; more distinct texts than this are sampled",
}


def _reco_args(p: argparse.ArgumentParser) -> None:
    from .config import RecoConfig

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    memory = sub.add_parser("memory", help="build a memory by embedding a collection with a frozen encoder")
    memory.add_argument("source", help="hierarchy file with images, CSV (image,caption), datasets folder, or .npz "
                                       "of precomputed embeddings (image, text[, ids, captions])")
    memory.add_argument("--model", default=None, help="the frozen encoder (not needed for .npz): " + spec_help())
    memory.add_argument("--out", required=True)
    memory.add_argument("--index", choices=INDEX_TYPES, help="default: flat to 100k items, ivf below 1M, "
                        "ivffs from 1M (on disk: ivf to 4M, ivfpq beyond)")
    memory.add_argument("--shard-size", type=whole_number(1, 10**8), default=10_000,
                        help="items per embedding shard and index block")
    memory.add_argument("--on-disk", action="store_true",
                        help="IVF / IVF-PQ with on-disk inverted lists, filled block by block and memory-mapped "
                             "for search (memories larger than RAM)")
    memory.add_argument("--train-size", type=whole_number(1, 10**9), default=200_000,
                        help="vectors sampled to train IVF / IVF-PQ (at least 39 per list: 2.5M for 1B items)")
    memory.add_argument("--exclude", metavar="SOURCE",
                        help="evaluation items (any memory source, embedded with --model): memory items near-"
                             "duplicate to one of them are left out, as RECO removes evaluation images")
    memory.add_argument("--exclude-threshold", type=float, default=0.98, help="cosine that counts as a near-duplicate")
    image_options(memory)
    engine_options(memory)
    stats = sub.add_parser("stats", help="memory statistics")
    stats.add_argument("memory")
    train = sub.add_parser("train", help="train the fusion modules, selected on held-out data against mean fusion")
    train.add_argument("--memory", required=True)
    train.add_argument("--train-pairs", help="pairs to train on instead of the memory's own: any memory source "
                                             "(embedded with --base; a label column gives classes)")
    train.add_argument("--base", required=True, help="the frozen encoder spec the memory was built with")
    train.add_argument("--out", required=True)
    add_options(train, RecoConfig, TRAIN_OPTIONS, TRAIN_HELP)
    engine_options(train)


def _build_memory(args: argparse.Namespace) -> None:
    from ..errors import HierarcapsError
    from .memory_build import BuildOptions, build_memory, write_memory
    from .sources import embedded_vectors, from_embeddings, load_items

    options = BuildOptions(index=args.index, on_disk=args.on_disk, block_size=args.shard_size,
                           train_size=args.train_size, engine=engine(args), progress=True,
                           exclude_threshold=args.exclude_threshold)
    encoder = None
    if not args.source.endswith(".npz") or (args.exclude and not args.exclude.endswith(".npz")):
        from ..models.registry import load_encoder

        if not args.model:
            raise HierarcapsError("--model is needed to embed a collection")
        encoder = load_encoder(args.model, lazy=True)
    if args.exclude:
        options.exclude = embedded_vectors(args.exclude, encoder, image_dir=args.image_dir, download=args.download,
                                           image_source=args.image_source)
    if args.source.endswith(".npz"):
        image, text, items = from_embeddings(args.source)
        write_memory(args.out, image, text, items, options)
        return
    items = load_items(args.source, image_dir=args.image_dir, download=args.download, image_source=args.image_source)
    build_memory(args.out, items, encoder, options, shard_size=args.shard_size, spec=args.model)


def _reco(args: argparse.Namespace) -> int:
    from .memory import Memory

    if args.action == "stats":
        echo(json.dumps(Memory(args.memory).stats(), indent=2))
        return 0
    if args.action == "memory":
        _build_memory(args)
        echo(json.dumps(Memory(args.out).stats(), indent=2))
        return 0
    from .config import RecoConfig
    from .sources import embedded_pairs, memory_pairs
    from .train import RecoTrainer

    config = from_options(RecoConfig, args, memory=args.memory, out=args.out, base=args.base)
    if args.train_pairs:
        from ..models.registry import load_encoder

        pairs = embedded_pairs(args.train_pairs, load_encoder(args.base, lazy=True))
    else:
        pairs = memory_pairs(Memory(args.memory))
    trainer = RecoTrainer(config, pairs, engine=engine(args))
    out = trainer.train()
    info = json.loads((out / "reco.json").read_text())
    echo(f"saved {out}: {info['selection']['why']}\nscore it with: hierarcaps evaluate --model reco:{out}")
    return 0


COMMANDS = (
    Command("reco", "retrieval-enhanced models: build a memory, train fusion; score with evaluate --model reco:DIR",
         _reco_args, _reco),
)
