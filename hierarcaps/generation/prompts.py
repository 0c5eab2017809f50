"""The prompts the LLM stages send: an instruction and worked demonstrations, as chat turns.

A prompt is a conversation: the instruction and the first demonstration's caption in the first user turn,
each demonstration's hierarchy as the assistant's reply, one turn per demonstration, and the caption to
work on as the last user turn. Several demonstrations from different domains (people, animals, vehicles,
food, indoor scenes, landscapes) keep a small model from copying one example's words into every answer;
the replies are spaced JSON (``{"tier_1": "animal", "tier_2": ...}``), exactly the form the constrained decoder
then writes. Models without a chat template get the same turns as plain text.

Prompts live in a folder a lab edits: ``seed.txt`` (the instruction), ``augment.txt`` (the instruction when
accepted chains are the demonstrations) and ``examples.json`` (the seed demonstrations); ``builtin`` is the
set that ships inside the package (``hierarcaps generate init`` writes a copy to edit).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .. import jsonfile
from .._io import read_bounded
from ..errors import DataError

FIELDS = ["tier_1", "tier_2", "tier_3"]
BUILTIN = "builtin"
MAX_PROMPT_BYTES = 2**20
Message = dict[str, str]


@dataclasses.dataclass(frozen=True)
class Prompts:
    """The instructions and the seed demonstrations (caption, tier 1, tier 2, tier 3)."""

    seed: str
    augment: str
    examples: tuple[tuple[str, str, str, str], ...]


def example_folder() -> Path:
    """The runnable example that ships with the package: ``config.yaml``, ``captions.csv``, ``prompts/``."""
    return Path(str(resources.files("hierarcaps.generation") / "assets" / "example"))


def builtin_folder() -> Path:
    """The prompts that ship with the package (the example's)."""
    return example_folder() / "prompts"


def load_prompts(folder: str | Path) -> Prompts:
    """The prompts of a folder (``builtin``: the package's), each file checked, one line per problem."""
    folder = builtin_folder() if str(folder) == BUILTIN else Path(folder)
    texts = {}
    for name in ("seed.txt", "augment.txt", "examples.json"):
        path = folder / name
        if not path.exists():
            raise DataError("prompt file missing (a prompts folder holds seed.txt, augment.txt, examples.json)",
                            file=str(path))
        texts[name] = read_bounded(path, MAX_PROMPT_BYTES, what="prompt file").decode("utf-8-sig").strip()
    return Prompts(texts["seed.txt"], texts["augment.txt"], examples(texts["examples.json"], folder / "examples.json"))


def examples(text: str, path: Path) -> tuple[tuple[str, str, str, str], ...]:
    """The demonstrations of ``examples.json``: a list of objects with caption, tier_1, tier_2, tier_3."""
    document = jsonfile.parse(text.encode("utf-8"), file=str(path))
    if not isinstance(document, list) or not document:
        raise DataError("expected a non-empty list of demonstrations", file=str(path))
    found = []
    for row, item in enumerate(document, start=1):
        keys = ("caption", *FIELDS)
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip() for k in keys):
            raise DataError(f"needs non-empty {', '.join(keys)}", file=str(path), row=row)
        if separated := [k for k in keys if "=>" in item[k]]:
            raise DataError("contains the tier separator '=>' (a demonstration's tiers would split apart in the "
                            "official files)", file=str(path), row=row, field=separated[0])
        found.append((item["caption"], item["tier_1"], item["tier_2"], item["tier_3"]))
    return tuple(found)


def reply(tiers: Sequence[str]) -> str:
    """A hierarchy as the assistant writes it: spaced JSON of tiers 1-3 (the form the decoder constrains to)."""
    return json.dumps(dict(zip(FIELDS, tiers)), ensure_ascii=False)


def conversation(instruction: str, demonstrations: Sequence[tuple[str, Sequence[str]]], caption: str
                 ) -> list[Message]:
    """Chat turns: the instruction with the first demonstration's caption, each demonstration's reply, and the
    caption to work on. ``demonstrations`` are (caption, tiers 1-3)."""
    turns: list[Message] = []
    for number, (shown, tiers) in enumerate(demonstrations):
        turns.append({"role": "user", "content": (instruction + "\n\n" if number == 0 else "") + f"caption: {shown}"})
        turns.append({"role": "assistant", "content": reply(tiers)})
    lead = "" if demonstrations else instruction + "\n\n"
    turns.append({"role": "user", "content": f"{lead}caption: {caption}"})
    return turns


def seed_conversation(prompts: Prompts, caption: str) -> list[Message]:
    return conversation(prompts.seed, [(e[0], e[1:]) for e in prompts.examples], caption)


def plain_text(turns: Sequence[Message]) -> str:
    """The turns as plain text for models without a chat template: the reply follows the last caption."""
    return "\n".join(turn["content"] + ("\n" if turn["role"] == "assistant" else "") for turn in turns) + "\n"


def write_example(target: Path) -> Path:
    """The package's runnable example (config, captions, prompts) written to ``target`` to edit; an existing
    file is never overwritten."""
    from ..errors import HierarcapsError

    source = example_folder()
    files = [p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    taken = [str(target / p.relative_to(source)) for p in files if (target / p.relative_to(source)).exists()]
    if taken:
        raise HierarcapsError(f"{taken[0]} exists; init writes only into a new or empty folder")
    for path in files:
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(path.read_bytes())
    return target / "config.yaml"
