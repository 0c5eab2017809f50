"""Random-weight models built from configs, with the real CLIP tokenizer (open_clip's bundled BPE vocab).

They cost exactly what trained models of the same shape cost, so they measure speed honestly, and they
exercise the real loading code (``from_pretrained``, open_clip configs) without downloading weights.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
             "vision": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                            image_size=32, patch_size=8),
             "projection_dim": 32},
    "ViT-B-32": {"text": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
                 "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                image_size=224, patch_size=32),
                 "projection_dim": 512},
}


def clip_tokenizer() -> Any:
    """A transformers CLIPTokenizer equal to OpenAI CLIP's, built offline from open_clip's BPE file."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merge_pairs = [tuple(m.split()) for m in merges]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(p) for p in merge_pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merge_pairs,
                              model_max_length=77)
    return tokenizer


def save_random_hf_clip(folder: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight transformers CLIP (weights + processor) that ``from_pretrained`` loads."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    shape = PRESETS[preset]
    image_size = shape["vision"]["image_size"]
    config = CLIPConfig(text_config={**shape["text"], "vocab_size": 49408, "max_position_embeddings": 77,
                                     "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407},
                        vision_config=shape["vision"], projection_dim=shape["projection_dim"])
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=clip_tokenizer())
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_open_clip_config(path: str | Path, preset: str = "tiny") -> Path:
    """An open_clip model config JSON (usable as ``open_clip:<path>``) of a preset's shape."""
    shape = PRESETS[preset]
    config = {
        "embed_dim": shape["projection_dim"],
        "vision_cfg": {"image_size": shape["vision"]["image_size"], "layers": shape["vision"]["num_hidden_layers"],
                       "width": shape["vision"]["hidden_size"], "patch_size": shape["vision"]["patch_size"],
                       "head_width": shape["vision"]["hidden_size"] // shape["vision"]["num_attention_heads"]},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": shape["text"]["hidden_size"],
                     "heads": shape["text"]["num_attention_heads"], "layers": shape["text"]["num_hidden_layers"]},
    }
    path = Path(path)
    path.write_text(json.dumps(config, indent=2))
    return path
