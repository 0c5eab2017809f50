"""Curation in Label Studio: the export -> curated records mapping (on a recorded export, no server needed)
and push / annotate / pull against a real server started for the session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hierarcaps.annotation.curation import curate, krippendorff_alpha_nominal, merge_export
from hierarcaps.annotation.server import read_label_config
from hierarcaps.errors import HierarcapsError

sys.path.insert(0, str(Path(__file__).parent))
from label_studio_server import TOKEN, label_studio_executable, running_server

RECORDED = Path(__file__).parent / "data" / "label_studio_export.json"


# -- the mapping, on an export recorded from the real server --------------------------------------------

def test_krippendorff_alpha_by_hand() -> None:
    # coincidences: o_aa = 2, o_ab = o_ba = 1, o_bb = 4; n_a = 3, n_b = 5, n = 8
    # alpha = 1 - (n - 1) * (o_ab + o_ba) / (2 n_a n_b) = 1 - 7 * 2 / 30 = 8 / 15
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "b"], ["b", "b"], ["b", "b"]]) == pytest.approx(8 / 15)
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal([["a", "a"], ["a"]]) is None           # nothing could disagree
    assert krippendorff_alpha_nominal([["a", "b"], ["b", "a"]]) == pytest.approx(-0.5)


def _expected_curation(records, stats) -> None:
    """What the scripted annotators of ``_annotate`` did, checked exactly."""
    by_id = {r.id: r for r in records}
    assert sorted(by_id) == ["0", "1", "5"]
    originals = _originals()
    assert by_id["0"].positive == originals["0"] and by_id["0"].negative is not None     # accepted as is
    assert by_id["1"].positive == (*originals["1"][:2], "a motorcycle on the grass", originals["1"][3])
    assert by_id["1"].negative is None                                  # one negative tier was not confirmed
    assert by_id["5"].positive == ("vehicle", *originals["5"][1:])      # the later accepting annotator's edit
    assert stats["tasks"] == 8 and stats["completed"] == 5 and stats["pending"] == 2 and stats["skipped"] == 1
    assert (stats["accepted_as_is"], stats["edited"], stats["rejected"]) == (1, 2, 2)
    assert stats["percent_of_completed"] == {"accepted_as_is": 20.0, "edited": 40.0, "rejected": 40.0}
    assert stats["edit_rate_per_tier"] == [round(1 / 3, 4), 0.0, round(1 / 3, 4), 0.0]
    assert stats["negatives_confirmed"] == 2
    assert stats["negative_checks_per_tier"][1] == {"not a negative": 1, "truly contradicts": 4}
    # overlap on tasks 4 (accept vs reject) and 5 (accept, accept): decision alpha by hand = 0.0
    assert stats["agreement"]["overlapping_tasks"] == 2
    assert stats["agreement"]["krippendorff_alpha_decision"] == pytest.approx(0.0)
    assert stats["seconds_per_annotation"] == {"mean": pytest.approx(86 / 7), "median": 12.0}


def _originals() -> dict[str, tuple[str, ...]]:
    export = json.loads(RECORDED.read_text())
    return {t["data"]["hierarchy_id"]: tuple(t["data"][f"original_{k}"] for k in range(1, 5)) for t in export}


def test_curation_of_a_recorded_export() -> None:
    export = json.loads(RECORDED.read_text())
    records, stats = curate(merge_export({}, export))
    _expected_curation(records, stats)


def test_merging_a_later_export_only_adds() -> None:
    export = json.loads(RECORDED.read_text())
    store = merge_export({}, export)
    shrunk = [{**task, "annotations": []} for task in export]          # annotations deleted on the server later
    again = merge_export(store, shrunk)
    assert curate(again)[0] == curate(store)[0]
    assert json.dumps(merge_export(again, export), sort_keys=True) == json.dumps(store, sort_keys=True)


# -- against a real server ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path):
    executable = label_studio_executable()
    if executable is None:
        if os.environ.get("HIERARCAPS_REQUIRE_SERVICES"):
            pytest.fail("HIERARCAPS_REQUIRE_SERVICES is set but no label-studio executable was found")
        pytest.skip("no Label Studio environment (.ci/run builds one in .venv-labelstudio)")
    with running_server(executable, tmp_path_factory.mktemp("label-studio"), shared_dir) as url:
        yield url


def _server(url: str, **kwargs: Any):
    from hierarcaps.annotation.server import Server

    return Server(url, TOKEN, backoff=0.01, **kwargs)


def _items(shared_dir: Path, tmp_path: Path, n: int) -> Path:
    """The first n expanded-set hierarchies whose image is among the local test images, ids "0".."n-1"."""
    import dataclasses

    from hierarcaps.data.csvio import read_hierarchies, write_parquet

    local = (r for r in read_hierarchies(shared_dir / "hierarcaps_test_expanded.csv.gz")
             if (shared_dir / "images" / str(r.image_file)).exists())
    records = [dataclasses.replace(r, id=str(i)) for i, r in zip(range(n), local)]
    return write_parquet(records, tmp_path / f"items-{n}.parquet")


def _result(values: dict[str, str]) -> list[dict[str, Any]]:
    result = []
    for name, value in values.items():
        kind = "textarea" if name.startswith("tier_") or name == "notes" else "choices"
        result.append({"from_name": name, "to_name": "caption", "type": kind,
                       "value": {"text": [value]} if kind == "textarea" else {"choices": [value]}})
    return result


def _review(task: Any, decision: str, edits: dict[int, str] | None = None, negatives_ok: int = 4) -> dict[str, str]:
    """An annotator's answers: the prediction's tiers with edits applied, verdicts, negative checks."""
    edits = edits or {}
    values = {f"tier_{k}": edits.get(k, task.data[f"original_{k}"]) for k in range(1, 5)}
    values |= {f"verdict_{k}": "edited" if k in edits else "correct" for k in range(1, 5)}
    values |= {f"negative_check_{k}": "truly contradicts" if k <= negatives_ok else "not a negative"
               for k in range(1, 5)}
    return {**values, "decision": decision}


def _annotate(server: Any, project_id: int) -> None:
    """Two annotators work through the project through the API, as the labeling UI would submit."""
    client = server.client
    anna = client.users.create(email="anna@hierarcaps.test", username="anna").id
    ben = client.users.create(email="ben@hierarcaps.test", username="ben").id
    tasks = {t.data["hierarchy_id"]: t for t in client.tasks.list(project=project_id, fields="all")}

    def submit(key: str, who: int, values: dict[str, str] | None, seconds: float) -> None:
        client.annotations.create(id=tasks[key].id, result=_result(values) if values else [],
                                  was_cancelled=values is None, completed_by=who, lead_time=seconds)

    submit("0", anna, _review(tasks["0"], "accept"), 10)
    submit("1", anna, _review(tasks["1"], "accept", {3: "a motorcycle on the grass"}, negatives_ok=1), 20)
    submit("2", anna, _review(tasks["2"], "reject"), 5)
    submit("3", anna, None, 3)                                                  # skipped
    submit("4", anna, _review(tasks["4"], "accept"), 12)
    submit("4", ben, _review(tasks["4"], "reject"), 14)                         # tie: rejected
    submit("5", anna, _review(tasks["5"], "accept"), 9)
    submit("5", ben, _review(tasks["5"], "accept", {1: "vehicle"}), 16)         # the later one's tiers win


@pytest.mark.integration
def test_push_annotate_pull_against_a_real_server(server_url: str, shared_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from hierarcaps.annotation.workflow import pull, push
    from hierarcaps.data.csvio import read_hierarchies

    server = _server(server_url)
    images = shared_dir / "images"
    first = push(_items(shared_dir, tmp_path, 6), "curation", server=server, image_dir=str(images),
                 document_root=str(shared_dir), batch_size=4, progress=False)
    assert (first["created"], first["already_there"]) == (6, 0)
    # the same items again add nothing; two new ones are added, through a network failure after the server
    # had already stored the batch (the retry must not duplicate) and one before it was sent
    real_import = server.client.projects.import_tasks
    failures = iter(["after", "before"])

    def flaky_import(*args: Any, **kwargs: Any) -> Any:
        failure = next(failures, None)
        if failure == "after":
            real_import(*args, **kwargs)
            raise httpx.ReadTimeout("response lost")
        if failure == "before":
            raise httpx.ConnectError("connection reset")
        return real_import(*args, **kwargs)

    monkeypatch.setattr(server.client.projects, "import_tasks", flaky_import)
    second = push(_items(shared_dir, tmp_path, 8), "curation", server=server, image_dir=str(images),
                  document_root=str(shared_dir), batch_size=1, progress=False)
    monkeypatch.undo()
    assert (second["created"], second["already_there"]) == (2, 6)
    project = server.find_project("curation")
    tasks = list(server.client.tasks.list(project=project.id, fields="all"))
    assert sorted(t.data["hierarchy_id"] for t in tasks) == [str(i) for i in range(8)]
    # the image is served by Label Studio from local files
    image = httpx.get(server_url + tasks[0].data["image"], headers={"Authorization": f"Token {TOKEN}"})
    assert image.status_code == 200 and image.content[:3] == b"\xff\xd8\xff"
    assert tasks[0].data["image_url"].startswith("http://images.cocodataset.org/")

    _annotate(server, project.id)
    out = tmp_path / "curated"
    stats = pull("curation", out, server=server)
    records = read_hierarchies(out / "curated.parquet")
    _expected_curation(records, stats)
    assert [(r.id, r.positive, r.image_url) for r in read_hierarchies(out / "curated.csv")] == \
        [(r.id, r.positive, r.image_url) for r in records]
    assert stats["files"]["curated.csv"] in (out / "SHA256SUMS").read_text()

    # more work later: pulling again only adds
    server.client.annotations.create(id=next(t.id for t in tasks if t.data["hierarchy_id"] == "6"),
                                     result=_result(_review(tasks[6], "accept")), lead_time=7)
    more = pull("curation", out, server=server)
    assert more["completed"] == 6 and {r.id for r in read_hierarchies(out / "curated.csv")} == {"0", "1", "5", "6"}


@pytest.mark.integration
def test_server_problems_are_explained(server_url: str, shared_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from hierarcaps.annotation.server import Server
    from hierarcaps.annotation.workflow import pull, push

    wrong = "x" * 40
    with pytest.raises(HierarcapsError, match="refused the API token") as refused:
        Server(server_url, wrong)
    assert wrong not in str(refused.value)
    with pytest.raises(HierarcapsError, match="cannot reach Label Studio"):
        _server("http://127.0.0.1:9", retries=1)
    server = _server(server_url)
    push(_items(shared_dir, tmp_path, 2), "other-config", server=server, progress=False)
    other = tmp_path / "other.xml"
    other.write_text('<View><Text name="caption" value="$caption"/>'
                     '<Choices name="decision" toName="caption"><Choice value="accept"/></Choices></View>')
    with pytest.raises(HierarcapsError, match="different labeling config"):
        push(_items(shared_dir, tmp_path, 2), "other-config", server=server, label_config=str(other))
    broken = tmp_path / "broken.xml"
    broken.write_text("<View><Choices name='x' toName='missing'><Choice value='a'/></Choices></View>")
    with pytest.raises(HierarcapsError, match="answered 400"):
        push(_items(shared_dir, tmp_path, 2), "broken-config", server=server, label_config=str(broken))
    # a half-finished export is retried, and if it stays broken nothing is written
    real = server.client.projects.exports.download_sync
    monkeypatch.setattr(server.client.projects.exports, "download_sync",
                        lambda *a, **k: iter([b"".join(real(*a, **k))[:-5]]))
    with pytest.raises(HierarcapsError, match=r"export .* was incomplete"):
        pull("other-config", tmp_path / "pulled", server=server)
    assert not (tmp_path / "pulled").exists()


def test_cli_never_prints_the_token(tmp_path: Path) -> None:
    secret = "s3cr3t-token-value"
    result = subprocess.run([sys.executable, "-m", "hierarcaps", "annotate", "pull", "--project", "p", "--out",
                             str(tmp_path), "--url", "http://127.0.0.1:9", "--token", secret, "--retries", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "cannot reach Label Studio" in result.stderr
    assert secret not in result.stdout + result.stderr


def test_accepted_chains_that_fail_the_record_checks_or_the_nli_stay_out() -> None:
    """An edit that repeats a tier, an accept beside 'not entailed', a missing verdict, and an edit the NLI
    rejects: each is reported per task and kept out of the curated split; a clean edit gets in."""
    def task(key: str, answers: dict[str, str]) -> dict:
        result = [{"from_name": name, "value": {"text": [value]} if name.startswith("tier_") else {"choices": [value]}}
                  for name, value in answers.items()]
        data = {"hierarchy_id": key, **{f"original_{k}": t for k, t in
                                        enumerate(("thing", "street", "street at night", "a busy street at night"), 1)}}
        return {"data": data, "annotations": [{"id": int(key), "result": result, "updated_at": "2026-01-01",
                                               "lead_time": 5.0, "completed_by": 1}]}

    verdicts = {f"verdict_{k}": "correct" for k in range(1, 5)}
    store = merge_export({}, [
        task("1", {"decision": "accept", **verdicts, "tier_2": "thing"}),                     # tier 2 == tier 1
        task("2", {"decision": "accept", **verdicts, "verdict_3": "not entailed"}),
        task("3", {"decision": "accept", **{k: v for k, v in verdicts.items() if k != "verdict_4"}}),
        task("4", {"decision": "accept", **verdicts, "tier_3": "street with a dog"}),          # the NLI says no
        task("5", {"decision": "accept", **verdicts, "tier_1": "place"}),                      # a good edit
    ])
    records, stats = curate(store, lambda chains: ["not_entailed:t4=>t3" if "dog" in c[2] else None
                                                  for c in chains])
    assert [r.id for r in records] == ["5"]
    failed = stats["failed_checks"]
    assert set(failed) == {"1", "2", "3", "4"}
    assert "repeats tier 1" in failed["1"][0] and "not entailed" in failed["2"][0]
    assert failed["3"] == ["tier 4: no verdict"] and failed["4"] == ["edited chain: not_entailed:t4=>t3"]
    assert stats["edited"] == 1 and stats["completed"] == 5
    config = read_label_config(None)
    assert all(f'name="verdict_{k}" toName="caption" choice="single-radio" showInline="true" required="true"'
               in config for k in range(1, 5))
