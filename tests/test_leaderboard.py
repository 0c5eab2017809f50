"""Submissions: the harness round trip, every kind of bad input, the board files and a real browser."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from submissions import random_submission, unit

from hierarcaps.data import load_official
from hierarcaps.errors import HierarcapsError
from hierarcaps.leaderboard import archive, board, review
from hierarcaps.leaderboard.submission import image_ids, text_ids, write_submission
from hierarcaps.leaderboard.validate import validate

DIM = 16


@pytest.fixture
def valid(tmp_path: Path) -> Path:
    """A valid submission of random embeddings."""
    return random_submission(tmp_path / "sub")


def problems(path: Path) -> list[str]:
    sub, report = validate(path)
    assert sub is None, "expected the submission to be rejected"
    return report.problems


def edit_meta(folder: Path, **changes: object) -> None:
    meta = json.loads((folder / "submission.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (folder / "submission.json").write_text(json.dumps(meta))


def edit_arrays(folder: Path, **arrays: np.ndarray | None) -> None:
    with np.load(folder / "embeddings.npz") as data:
        current = {k: data[k] for k in data.files}
    for key, value in arrays.items():
        if value is None:
            current.pop(key)
        else:
            current[key] = value
    np.savez(folder / "embeddings.npz", **current)


def test_valid_submission_passes(valid: Path) -> None:
    sub, report = validate(valid)
    assert sub is not None and report.problems == [] and report.notes == []
    assert sub.text.shape == (4000, DIM) and sub.image.shape == (1000, DIM)


def test_schema_statement_protocol_and_checksum_errors(valid: Path) -> None:
    meta = json.loads((valid / "submission.json").read_text())
    meta["model"].pop("name")
    meta["model"]["parameters"] = "many"
    edit_meta(valid, model=meta["model"], test_set_not_used_for_training_or_tuning=False,
              protocol="hierarcaps-v0", dataset_checksum="sha256:0")
    found = problems(valid)
    assert any("submission.json: model: missing name" in p for p in found)
    assert any("model.parameters: must be an integer" in p for p in found)      # every problem, not the first
    assert any("test_set_not_used_for_training_or_tuning" in p for p in found)
    assert any("protocol" in p for p in found) and any("dataset_checksum" in p for p in found)


def test_missing_extra_and_duplicated_ids(valid: Path) -> None:
    ids = (valid / "text_ids.txt").read_text().splitlines()
    ids[5] = "nonsense-1"        # one unknown, and so one missing
    ids[7] = ids[6]              # one duplicated, and so another missing
    (valid / "text_ids.txt").write_text("\n".join(ids) + "\n")
    found = problems(valid)
    assert any("text ids: 1 duplicated" in p for p in found)
    assert any("text ids: 2 missing" in p for p in found)
    assert any("text ids: 1 unknown (e.g. nonsense-1)" in p for p in found)


def test_ids_in_another_order_are_aligned(valid: Path) -> None:
    reference, _ = validate(valid)
    ids = (valid / "image_ids.txt").read_text().splitlines()
    with np.load(valid / "embeddings.npz") as data:
        image = data["image"]
    order = np.random.default_rng(1).permutation(len(ids))
    (valid / "image_ids.txt").write_text("\n".join(ids[i] for i in order) + "\n")
    edit_arrays(valid, image=image[order])
    shuffled, _ = validate(valid)
    np.testing.assert_array_equal(shuffled.image, reference.image)


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: {"text": a["text"].reshape(1000, 4, DIM)}, "shape"),
    (lambda a: {"text": (a["text"] * 100).astype(np.int32)}, "dtype int32"),
    (lambda a: {"image": np.ones((1000, DIM + 1), np.float32)}, "dimension 17"),
    (lambda a: {"text": np.where(np.arange(4000)[:, None] == 3, np.nan, a["text"])}, "NaN"),
    (lambda a: {"image": np.zeros_like(a["image"])}, "zero vector"),
    (lambda a: {"image": None}, "image: missing"),
])
def test_array_problems(valid: Path, change, message: str) -> None:
    with np.load(valid / "embeddings.npz") as data:
        arrays = {k: data[k] for k in data.files}
    edit_arrays(valid, **change(arrays))
    assert any(message in p for p in problems(valid)), problems(valid)


def test_unnormalised_vectors_are_normalised_and_said_so(valid: Path) -> None:
    reference, _ = validate(valid)
    with np.load(valid / "embeddings.npz") as data:
        edit_arrays(valid, text=data["text"] * 3)
    sub, report = validate(valid)
    assert sub is not None and any("4000 vector(s) were not unit length" in n for n in report.notes)
    np.testing.assert_allclose(sub.text, reference.text, atol=1e-5)


def test_declared_radii_must_be_present_and_undeclared_ones_refused(valid: Path) -> None:
    edit_meta(valid, text_radii=True)
    assert any("declared in submission.json but absent" in p for p in problems(valid))
    edit_meta(valid, text_radii=False)
    edit_arrays(valid, text_radii=np.ones(4000, np.float32))
    assert any("not declared" in p for p in problems(valid))


def test_pickles_are_refused_in_every_disguise(valid: Path) -> None:
    import pickle

    (valid / "extra.pkl").write_bytes(pickle.dumps({"x": 1}))
    assert any("extra.pkl: pickle-capable" in p for p in problems(valid))
    (valid / "extra.pkl").unlink()
    (valid / "notes.txt").write_bytes(pickle.dumps([1, 2], protocol=4))
    assert any("notes.txt: pickle-capable" in p for p in problems(valid))
    (valid / "notes.txt").unlink()
    with np.load(valid / "embeddings.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["text"] = np.array([object()] * 4000, dtype=object)
    np.savez(valid / "embeddings.npz", **arrays)
    assert any("text: dtype object" in p for p in problems(valid))           # refused from its header


def test_files_over_the_size_limit(valid: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hierarcaps.leaderboard import validate as validate_module

    monkeypatch.setattr(validate_module, "MAX_FILE_BYTES", 100_000)
    assert any("embeddings.npz" in p and "over the limit" in p for p in problems(valid))


def zip_of(folder: Path, path: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for file in folder.iterdir():
            z.write(file, f"sub/{file.name}")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


def test_archives_that_validate_and_archives_that_are_refused(valid: Path, tmp_path: Path) -> None:
    assert validate(zip_of(valid, tmp_path / "ok.zip"))[0] is not None
    with tarfile.open(tmp_path / "ok.tar.gz", "w:gz") as t:
        t.add(valid, arcname="sub")
    assert validate(tmp_path / "ok.tar.gz")[0] is not None

    assert any("absolute path" in p for p in problems(zip_of(valid, tmp_path / "abs.zip", {"/etc/x": b"1"})))
    assert any("'..'" in p for p in problems(zip_of(valid, tmp_path / "up.zip", {"../../x": b"1"})))
    many = {f"f{i}.txt": b"1" for i in range(archive.MAX_MEMBERS)}
    assert any("more than the limit" in p for p in problems(zip_of(valid, tmp_path / "many.zip", many)))
    bomb = {"sub/bomb.txt": b"\0" * (50 * 2**20)}
    assert any("compression ratio" in p for p in problems(zip_of(valid, tmp_path / "bomb.zip", bomb)))

    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as t:
        t.add(valid, arcname="sub")
        info = tarfile.TarInfo("sub/evil")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    assert any("link" in p for p in problems(link))
    dots = tmp_path / "dots.tar.gz"
    with tarfile.open(dots, "w:gz") as t:
        data = b"x"
        info = tarfile.TarInfo("../escape.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    assert any("'..'" in p for p in problems(dots))
    assert not (tmp_path.parent / "escape.txt").exists()


def test_add_is_idempotent_deterministic_and_guards_revisions(valid: Path, tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    folder, status = board.add(valid, lb)
    assert status == "added" and folder == lb / "entries" / "random-16" / "r1"
    first = (folder / "result.json").read_bytes()
    assert board.add(valid, lb) == (folder, "unchanged")
    (folder / "result.json").unlink()
    board.add(valid, lb)
    assert (folder / "result.json").read_bytes() == first                     # scoring is deterministic
    with np.load(valid / "embeddings.npz") as data:
        edit_arrays(valid, root=-data["root"])
    with pytest.raises(HierarcapsError, match="bump the revision"):
        board.add(valid, lb)
    assert board.add(valid, lb, replace="random-16/r1")[1] == "replaced"


def test_build_is_byte_stable_and_check_finds_stale_pages_and_duplicates(valid: Path, tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    board.add(valid, lb)
    assert any("out of date" in p for p in review.check(lb))
    board.build(lb)
    pages = {name: (lb / name).read_bytes() for name in ("README.md", "index.html")}
    board.build(lb)
    assert pages == {name: (lb / name).read_bytes() for name in pages}
    assert review.check(lb) == []
    assert "random-16" in pages["README.md"].decode() and "caption length (characters)" in pages["README.md"].decode()
    shutil.copytree(lb / "entries" / "random-16", lb / "entries" / "copy")
    found = review.check(lb)
    assert any("a copy of" in p and "the same embeddings" in p for p in found) and any("should be" in p for p in found)


def test_round_trip_from_the_harness_gives_the_harness_metrics(tmp_path: Path, test_image_dir: Path) -> None:
    from hierarcaps.harness.commands import export_submission
    from hierarcaps.harness.evaluation import EvalOptions, evaluate
    from hierarcaps.models.random_models import save_random_hf_clip

    model = str(save_random_hf_clip(tmp_path / "tiny", "tiny"))
    options = EvalOptions(image_dir=str(test_image_dir), progress=False, workers=0)
    direct = evaluate(model, options)
    folder = export_submission(model, options, tmp_path / "sub")
    assert json.loads((folder / "submission.json").read_text())["model"]["name"] == "tiny"   # never the path
    assert any("test_set_not_used" in p for p in problems(folder))       # the attestation is the submitter's
    edit_meta(folder, test_set_not_used_for_training_or_tuning=True)
    assert (folder / "text_ids.txt").read_text().splitlines() == text_ids(load_official("test"))
    assert (folder / "image_ids.txt").read_text().splitlines() == image_ids(load_official("test"))
    entry, _ = board.add(folder, tmp_path / "lb")
    scored = json.loads((entry / "result.json").read_text())
    import jsonschema

    from hierarcaps.results import schema_path

    jsonschema.validate(scored, json.loads(schema_path().read_text()))          # the same schema as evaluate's
    assert scored["metrics"] == json.loads(json.dumps(direct["metrics"]))


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test the page in a real browser: .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (CI installs Debian's package)")
    return path


def dom(url: str, tmp_path: Path) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000", "--dump-dom", url]
    return subprocess.run([chromium(), *flags], capture_output=True, text=True, timeout=120, check=True).stdout


def test_the_page_renders_every_entry_and_sorts_in_a_real_browser(valid: Path, tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    rng = np.random.default_rng(5)
    records = load_official("test")
    board.add(valid, lb)
    for i in range(2):
        other = write_submission(tmp_path / f"s{i}", records, unit(rng, 1)[0], unit(rng, 4000), unit(rng, 1000),
                                 {"model": {"name": f"other-{i}", "revision": "r1", "parameters": 10 ** (i + 2),
                                            "licence": "mit", "link": "", "training_data": "none"},
                                  "test_set_not_used_for_training_or_tuning": True})
        board.add(other, lb)
    board.build(lb)
    page = (lb / "index.html").as_uri()
    plain = dom(page, tmp_path)
    names = ["random-16", "other-0", "other-1"]
    assert all(name in plain for name in names) and plain.count('class="reference"') == 3
    ascending = dom(page + "#sort=parameters-asc", tmp_path)
    descending = dom(page + "#sort=parameters-desc", tmp_path)
    order = lambda text: sorted(names, key=text.index)  # noqa: E731
    assert order(ascending) == ["random-16", "other-0", "other-1"]
    assert order(descending) == ["other-1", "other-0", "random-16"]
    assert 'data-sorted="desc"' in descending


def test_the_committed_board_is_consistent() -> None:
    from .conftest import REPO

    assert review.check(REPO / "leaderboard") == []
