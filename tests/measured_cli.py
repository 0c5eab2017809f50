"""The CLI run in a fresh process with its peak memory and CPU time measured: what a crafted input may cost.

Bombs are measured against a budget (1 GB, 20 CPU seconds with the interpreter's start): unbounded, they ran
for minutes at gigabytes. CPU time, not wall time, so a busy machine (other tests on every core) cannot fail a
bounded command; the child also runs under a hard CPU limit, so an unbounded one is killed instead of hanging.
Each must end with one line and exit 1.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

MEMORY_BUDGET_MB = 1024
CPU_BUDGET_S = 20.0            # a fresh interpreter included; an unbounded bomb ran for minutes
CPU_LIMIT_S = 120              # the child's hard limit: past it the kernel stops it
PROGRESS = re.compile(r"\d+%\|")  # a progress bar's line, not a message

PEAK_REPORTER = """
import atexit, os, sys

def report_peak():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["HC_PEAK_FILE"], "w") as out:
        out.write(peak)

atexit.register(report_peak)
sys.argv = ["hierarcaps", *sys.argv[1:]]
from hierarcaps.cli import run
sys.exit(run())
"""


def _cpu_limit() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(args: list[str], tmp_path: Path) -> tuple[int, str, str, float, float]:
    """The CLI in a fresh process: (exit code, stdout, stderr, its own peak RSS in MB, its CPU seconds). The peak
    is the process's VmHWM at exit (rusage's maxrss would carry over the peak of this test process)."""
    peak_file = tmp_path / "peak_kb"
    before = _children_cpu()
    done = subprocess.run([sys.executable, "-c", PEAK_REPORTER, *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=900, preexec_fn=_cpu_limit,
                          env={**os.environ, "HC_PEAK_FILE": str(peak_file)})
    seconds = _children_cpu() - before
    assert peak_file.exists(), (done.returncode, done.stderr[-500:])      # killed at the CPU limit: unbounded
    return done.returncode, done.stdout, done.stderr, int(peak_file.read_text()) / 1024, seconds


def assert_refused_within_budget(args: list[str], tmp_path: Path, expect: str) -> None:
    code, stdout, stderr, peak_mb, seconds = run_measured(args, tmp_path)
    assert code == 1, (stdout, stderr)
    assert "Traceback" not in stderr and expect in stdout + stderr, (stdout, stderr)
    assert peak_mb < MEMORY_BUDGET_MB and seconds < CPU_BUDGET_S, (peak_mb, seconds)


def assert_one_line_failure(args: list[str], tmp_path: Path, expect: str) -> str:
    """The command fails with exit 1 and one line containing ``expect`` (on stderr; for commands that list
    problems, such as ``validate``, one problem line on stdout and the count on stderr), no traceback, within
    budget; returns that line."""
    code, stdout, stderr, peak_mb, seconds = run_measured(args, tmp_path)
    errors = [line for line in stderr.splitlines() if line.strip() and not PROGRESS.search(line)]
    problems = [line for line in stdout.splitlines() if line.startswith("problem: ")] or stdout.splitlines()
    lines = errors if len(errors) == 1 and expect in errors[0] else problems
    assert code == 1 and len(errors) == 1 and len(lines) == 1, (code, stdout, stderr)
    assert expect in lines[0] and "Traceback" not in stderr, (expect, stdout, stderr)
    assert peak_mb < MEMORY_BUDGET_MB and seconds < CPU_BUDGET_S, (peak_mb, seconds)
    return lines[0]
