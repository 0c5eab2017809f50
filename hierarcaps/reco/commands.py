"""CLI subcommands ``reco memory|stats|train`` and ``zeroshot``."""

from __future__ import annotations

import argparse
import json

from ..cli import command
from ..cli_options import echo, engine, engine_options, image_options
from ..models.registry import spec_help


def _reco_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    memory = sub.add_parser("memory", help="build a memory by embedding a collection with a frozen encoder")
    memory.add_argument("source", help="hierarchy file with images, CSV (image,caption), datasets folder, or .npz "
                                       "of precomputed embeddings (image, text[, ids, captions])")
    memory.add_argument("--model", default=None, help="the frozen encoder (not needed for .npz): " + spec_help())
    memory.add_argument("--out", required=True)
    memory.add_argument("--index", choices=["flat", "ivf", "hnsw", "ivfpq"], help="default: by size")
    memory.add_argument("--shard-size", type=int, default=10_000, help="items per embedding shard and index block")
    memory.add_argument("--on-disk", action="store_true",
                        help="IVF / IVF-PQ with on-disk inverted lists, filled block by block and memory-mapped "
                             "for search (memories larger than RAM)")
    memory.add_argument("--train-size", type=int, default=200_000,
                        help="vectors sampled to train IVF / IVF-PQ (at least 39 per list: 2.5M for 1B items)")
    image_options(memory)
    engine_options(memory)
    stats = sub.add_parser("stats", help="memory statistics")
    stats.add_argument("memory")
    train = sub.add_parser("train", help="train the fusion modules (each pair's own group excluded from its "
                                          "neighbours)")
    train.add_argument("--memory", required=True)
    train.add_argument("--train-pairs", help="pairs to train on instead of the memory's own: any memory source "
                                             "(embedded with --base)")
    train.add_argument("--base", required=True, help="the frozen encoder spec the memory was built with")
    train.add_argument("--out", required=True)
    train.add_argument("--fusion", choices=["transformer", "mlp", "mean"], default="transformer")
    train.add_argument("--sides", choices=["both", "image", "text"], default="both")
    train.add_argument("--fuse", choices=["cross", "same"], default="cross")
    train.add_argument("--cross-modal-search", action="store_true")
    for name, kind, default in (("k", int, 16), ("heads", int, 8), ("lr", float, 1e-4), ("batch-size", int, 256),
                                ("steps", int, 1000), ("temperature", float, 0.07), ("seed", int, 0)):
        train.add_argument(f"--{name}", type=kind, default=default)
    train.add_argument("--no-residual", action="store_true")
    train.add_argument("--duplicate-threshold", type=float, default=0.98,
                       help="neighbours at least this similar to the query count as the query itself")


@command("reco", "retrieval-enhanced models: build a memory, train fusion; score with evaluate --model reco:DIR",
         _reco_args)
def _reco(args: argparse.Namespace) -> int:
    from .memory import Memory

    if args.action == "stats":
        echo(json.dumps(Memory(args.memory).stats(), indent=2))
        return 0
    if args.action == "memory":
        from .memory import build_memory, write_memory
        from .sources import from_embeddings, load_items

        if args.source.endswith(".npz"):
            image, text, items = from_embeddings(args.source)
            write_memory(args.out, image, text, items, index=args.index, on_disk=args.on_disk,
                         engine=engine(args), block_size=args.shard_size, train_size=args.train_size)
        else:
            from ..errors import HierarcapsError
            from ..models.registry import load_encoder

            if not args.model:
                raise HierarcapsError("--model is needed to embed a collection")
            items = load_items(args.source, image_dir=args.image_dir, download=args.download,
                               image_source=args.image_source)
            build_memory(args.out, items, load_encoder(args.model, lazy=True), shard_size=args.shard_size,
                         index=args.index, on_disk=args.on_disk, engine=engine(args), spec=args.model,
                         train_size=args.train_size)
        echo(json.dumps(Memory(args.out).stats(), indent=2))
        return 0
    from .train import RecoConfig, RecoTrainer

    memory = Memory(args.memory)
    config = RecoConfig(memory=args.memory, out=args.out, base=args.base, k=args.k, fusion=args.fusion,
                        heads=args.heads, residual=not args.no_residual, sides=args.sides, fuse=args.fuse,
                        cross_modal_search=args.cross_modal_search,
                        duplicate_threshold=args.duplicate_threshold, lr=args.lr, batch_size=args.batch_size,
                        steps=args.steps, temperature=args.temperature, seed=args.seed)
    if args.train_pairs:
        from ..models.registry import load_encoder
        from .sources import embedded_pairs

        image, text, groups = embedded_pairs(args.train_pairs, load_encoder(args.base, lazy=True))
    else:
        image, text, groups = memory.vectors["image"], memory.vectors["text"], memory.groups
    trainer = RecoTrainer(config, image, text, groups)
    out = trainer.train()
    echo(f"saved {out}; score it with: hierarcaps evaluate --model reco:{out}")
    return 0


def _zeroshot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=spec_help())
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--images", help="a folder of class subfolders")
    group.add_argument("--dataset", help="a datasets folder or name with image and ClassLabel columns")
    p.add_argument("--split", default="test")
    p.add_argument("--templates", help="a text file, one template with {} per line")
    p.add_argument("--workers", type=int, default=1)


@command("zeroshot", "zero-shot classification accuracy of a model (e.g. a RECO model) on labelled images",
         _zeroshot_args)
def _zeroshot(args: argparse.Namespace) -> int:

    from ..benchmarks.zeroshot import DEFAULT_TEMPLATES, dataset_split, image_folder, read_templates, zero_shot
    from ..models.registry import load_encoder

    images, labels, names = image_folder(args.images) if args.images else dataset_split(args.dataset,
                                                                                       split=args.split)
    templates = read_templates(args.templates) if args.templates else DEFAULT_TEMPLATES
    echo(json.dumps(zero_shot(load_encoder(args.model, lazy=True), images, labels, names, templates,
                               workers=args.workers), indent=2))
    return 0
