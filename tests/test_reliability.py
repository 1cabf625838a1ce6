"""Reliability beyond bad flags (issue 18): two writers on one sweep folder, a torn last line, a
full disk, poisoned adapters, a large corpus, and 1 against 2 threads. Real processes, real files,
a real filesystem limit (a small tmpfs, else an RLIMIT_FSIZE child)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from memlaw.card import read_points
from memlaw.cli.memplan import main as memplan

ROOT = Path(__file__).resolve().parent.parent
GRID = [(r, n) for r in (1, 2, 4) for n in (16, 32)]
ARGS = ["--model", "tiny", "--ranks", "1,2,4", "--lengths", "16,32", "--chunk", "16", "--max-steps", "15",
        "--n-boot", "20", "--quiet"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
           PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def cli(module: str, *args, cwd=None, timeout=600):
    """Run a memlaw CLI as its own process; (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", f"memlaw.cli.{module}", *map(str, args)], env=ENV, cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


def grid_of(points):
    return sorted((p["rank"], p["length"]) for p in points)


# ---------------------------------------------------------------------------------------------
# two writers, one sweep folder


def wait_for(cond, proc, what, limit=240):
    deadline = time.monotonic() + limit
    while not cond():
        assert proc.poll() is None, f"the first sweep ended before {what}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_second_sweep_on_the_same_folder_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    out = tmp_path / "cal"
    # slow points (~1 s each) so the first run is still going when the second starts
    slow = ["calibrate", *ARGS, "--max-steps", "150", "--patience", "1000", "--lr", "1e-4", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "memlaw.cli.memplan", *slow], env=ENV, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = out / ".memlaw.lock"
    try:
        def holds():
            try:
                return json.loads(lock.read_text())["pid"] == first.pid
            except (OSError, ValueError, KeyError):
                return False

        wait_for(holds, first, "the first sweep took its lock")
        code, _, err = cli("memplan", *slow, cwd=tmp_path)  # a second, real process
        assert code == 2
        line = one_error_line(err)
        assert str(out) in line and f"pid {first.pid}" in line and "in use" in line, line
        assert first.poll() is None  # the first run goes on
        # the first is killed mid-sweep (SIGKILL: no clean-up at all); its lock must not block
        wait_for(lambda: (out / "points.jsonl").exists(), first, "a first point")
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait()
        first.stderr.close()
    assert lock.exists() and json.loads(lock.read_text())["pid"] == first.pid  # the file stays, stale
    n_before = len((out / "points.jsonl").read_text().splitlines())
    assert n_before < len(GRID)
    code, outp, err = cli("memplan", *slow, cwd=tmp_path)
    assert code == 0, err
    pts = read_points(out / "points.jsonl")
    assert grid_of(pts) == sorted(GRID)
    assert len((out / "points.jsonl").read_text().splitlines()) == len(GRID)  # each point exactly once
    assert f"{len(GRID) - n_before} measured now" in outp


def test_a_merge_into_a_folder_in_use_is_refused(tmp_path):
    """merge takes the same lock: a merge and a sweep (or two merges) never write one folder."""
    from memlaw.lock import FolderLock

    a = tmp_path / "a"
    assert CliRunner().invoke(memplan, ["calibrate", *ARGS, "--out", str(a)]).exit_code == 0
    out = tmp_path / "merged"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from memlaw.lock import FolderLock\n"
                               f"with FolderLock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = cli("memplan", "merge", a, "--out", out)
        assert code == 2 and f"pid {holder.pid}" in one_error_line(err)
        assert not (out / "points.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = cli("memplan", "merge", a, "--out", out)  # the holder is gone: the lock with it
    assert code == 0, err
    assert grid_of(read_points(out / "points.jsonl")) == sorted(GRID)
    # a refused merge (bad input) leaves no folder behind, lock file included
    with FolderLock(tmp_path / "x"):
        pass
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# a torn last line


def test_a_torn_last_line_is_dropped_said_and_measured_again(tmp_path):
    out = tmp_path / "cal"
    res = CliRunner().invoke(memplan, ["calibrate", *ARGS, "--out", str(out)])
    assert res.exit_code == 0, res.output
    path = out / "points.jsonl"
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    # a writer killed mid-line: the last point cut in half, no newline
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    (out / "law.json").unlink()
    res = CliRunner().invoke(memplan, ["calibrate", *ARGS, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "dropped a truncated last line" in res.output and "points.jsonl" in res.output, res.output
    assert "1 measured now" in res.output
    after = path.read_bytes().splitlines(keepends=True)
    assert after[:-1] == lines[:-1] and len(after) == len(GRID)
    assert grid_of(read_points(path)) == sorted(GRID)
    assert (out / "law.json").exists()

    # a last point that is whole but lost its newline is kept, not measured again
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    res = CliRunner().invoke(memplan, ["calibrate", *ARGS, "--out", str(out)])
    assert res.exit_code == 0 and "0 measured now" in res.output and "truncated" not in res.output, res.output
    assert path.read_bytes().endswith(b"\n") and len(path.read_bytes().splitlines()) == len(GRID)

    # merging a shard with a torn tail: skipped and said, and the shard's file is left alone
    torn = path.read_bytes()[:-20]
    path.write_bytes(torn)
    res = CliRunner().invoke(memplan, ["merge", str(out), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "skipped its truncated last line" in res.output, res.output
    assert path.read_bytes() == torn
