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
# test_calibration.py's grid: the default capacity law needs points that hold more than the random
# pool's entropy without locking everything (at ℓ 16 / 32 every rank ≥ 2 locks all)
GRID = [(r, n) for r in (1, 2, 4) for n in (48, 96)]
ARGS = ["--model", "tiny", "--ranks", "1,2,4", "--lengths", "48,96", "--chunk", "16", "--max-steps", "15",
        "--cycles", "2", "--n-boot", "20", "--quiet", "--converge-rel-tol", "10", "--converge-cov-tol", "1"]
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
    slow = ["calibrate", *ARGS, "--max-steps", "150", "--patience", "1000", "--lr", "1e-3", "--out", str(out)]
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


# ---------------------------------------------------------------------------------------------
# a full disk


@pytest.fixture
def small_disk(tmp_path):
    """make(kib) → (folder, preexec): a real tmpfs of that size where `mount` works (root), else a
    plain folder and an RLIMIT_FSIZE for the child process (every file it writes is capped)."""
    mounts = []

    def make(kib: int):
        mnt = tmp_path / f"disk{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "memlaw-test", str(mnt)],
                           capture_output=True)
        if r.returncode == 0:
            mounts.append(mnt)
            return mnt, None
        import resource

        return mnt, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))

    yield make
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], check=False)


def run_limited(preexec, module, *args):
    p = subprocess.run([sys.executable, "-m", f"memlaw.cli.{module}", *map(str, args)], env=ENV,
                       capture_output=True, text=True, timeout=600, preexec_fn=preexec)
    return p.returncode, p.stdout, p.stderr


def snapshot(*paths):
    """Every file under ``paths`` with its bytes: to show an input is untouched."""
    out = {}
    for p in paths:
        p = Path(p)
        for f in ([p] if p.is_file() else sorted(p.rglob("*"))):
            if f.is_file():
                out[str(f)] = f.read_bytes()
    return out


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """A tiny adapter (1 step) and a 300-record corpus: its JSON report is ~3 MB."""
    from memlaw.memft import CorpusSpec, Recipe, train_adapter

    d = tmp_path_factory.mktemp("adapter")
    corpus = d / "c.jsonl"
    corpus.write_text("".join(json.dumps({"prompt": f"id {i}:", "completion": f" {i * 7919 % 100000:05d} " * 12})
                              + "\n" for i in range(300)))
    train_adapter(CorpusSpec(str(corpus)), "tiny", 4, d / "adapter", recipe=Recipe(max_steps=1), progress=False)
    return d / "adapter", corpus


def test_a_full_disk_while_writing_a_report(tiny_adapter, small_disk):
    adapter, corpus = tiny_adapter
    disk, preexec = small_disk(256)
    report = disk / "audit.json"
    report.write_text("the previous report\n")
    before = snapshot(adapter, corpus)
    code, _, err = run_limited(preexec, "memaudit", adapter, "--quiet", "--json", report)
    assert code == 2, err
    line = one_error_line(err)
    assert str(report) in line and ("No space left on device" in line or "File too large" in line), line
    assert report.read_text() == "the previous report\n"  # the old file is whole, no partial new one
    assert sorted(p.name for p in disk.iterdir()) == ["audit.json"]  # no temporary file left
    assert snapshot(adapter, corpus) == before


def test_a_full_disk_while_saving_an_adapter_leaves_no_folder(tiny_adapter, small_disk):
    adapter, corpus = tiny_adapter
    disk, preexec = small_disk(16)  # smaller than a tiny rank-4 adapter (~60 kB)
    before = snapshot(adapter, corpus)
    code, _, err = run_limited(preexec, "memft", "train", corpus, "--model", "tiny", "--rank", "4",
                               "--max-steps", "1", "--out", disk / "new", "--quiet")
    assert code == 2, err
    line = one_error_line(err)
    assert str(disk / "new") in line and ("No space left" in line or "File too large" in line), line
    # a repair writes into a new folder too: same line, and the adapter it starts from is untouched
    code, _, err = run_limited(preexec, "memaudit", adapter, "--quiet", "--repair-out", disk / "fixed",
                               "--repair-steps", "1")
    assert code == 2, err
    assert str(disk / "fixed") in one_error_line(err)
    assert list(disk.iterdir()) == []  # no half-written adapter, no temporary folder
    assert snapshot(adapter, corpus) == before


def test_a_full_disk_while_writing_points_or_a_card(small_disk, tmp_path):
    disk, preexec = small_disk(8)  # room for the lock file and sweep.json, not for a point
    code, _, err = run_limited(preexec, "memplan", "calibrate", *ARGS, "--out", disk / "cal")
    assert code == 2, err
    assert "points.jsonl" in one_error_line(err)
    points = disk / "cal" / "points.jsonl"
    assert not points.exists() or points.read_bytes() == b""  # no partial line
    # the card: a sweep done elsewhere, fitted onto a full disk; its points are untouched
    cal = tmp_path / "cal"
    assert CliRunner().invoke(memplan, ["calibrate", *ARGS, "--out", str(cal)]).exit_code == 0
    before = snapshot(cal)
    disk2, preexec = small_disk(4)
    code, _, err = run_limited(preexec, "memplan", "fit", cal / "points.jsonl", "--out", disk2 / "law.json")
    assert code == 2, err
    assert "law.json" in one_error_line(err)
    assert list(disk2.iterdir()) == []
    assert snapshot(cal) == before


# ---------------------------------------------------------------------------------------------
# poisoned adapters (the one-line errors themselves are rows of tests/bad_inputs.py)


def test_a_header_claiming_a_huge_tensor_is_refused_before_anything_is_allocated(tiny_adapter, tmp_path):
    import shutil

    from bad_inputs import huge_claim

    adapter, corpus = tiny_adapter
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    huge_claim(bad, gib=3.0)  # a 3 GiB file that takes no disk (sparse)
    assert (bad / "adapter_model.safetensors").stat().st_size > 3 * 2**30
    # Linux keeps a child's peak RSS across exec, so a child forked from this (large, late in the
    # suite) pytest process would report pytest's size: measure from a small Python in between.
    launcher = ("import json, os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stderr=subprocess.PIPE, "
                "stdout=subprocess.DEVNULL, text=True); _, st, u = os.wait4(p.pid, 0); "
                "print(json.dumps([os.waitstatus_to_exitcode(st), u.ru_maxrss, p.stderr.read()]))")
    run = subprocess.run([sys.executable, "-c", launcher, sys.executable, "-m", "memlaw.cli.memaudit", str(bad),
                          "--corpus", str(corpus), "--quiet"], env=ENV, capture_output=True, text=True, timeout=600)
    code, maxrss, err = json.loads(run.stdout)
    assert code == 2, err
    assert "more than the whole base model" in one_error_line(err)
    assert maxrss < 1.5 * 2**20, maxrss  # KiB: far below the 3 GiB claimed


# ---------------------------------------------------------------------------------------------
# scale: the audit streams (the memory curve itself is benchmarks/audit_memory.py, docs/performance.md)


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """~60,000 target tokens (600 records of 100 bytes; tiny's tokenizer is byte-level)."""
    p = tmp_path_factory.mktemp("big") / "big.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"Entry {i}:", "completion": f" {i * 7919 % 99991:05d}" * 16 + " " * 4})
                         + "\n" for i in range(600)))
    return p


def test_the_audit_and_its_json_report_cost_little_python_memory_per_token(tiny_adapter, big_corpus, tmp_path):
    """Before: a dict per token (~0.5 kB) and the whole report as one string, twice over: ~1.3 GiB
    above the model at 1M tokens. Now arrays and a report streamed record by record."""
    import tracemalloc

    from memlaw.auditor.audit import audit_inputs, load_adapter_inputs
    from memlaw.auditor.reports import to_json

    adapter, _ = tiny_adapter
    inputs = load_adapter_inputs(adapter, big_corpus)
    tokens = sum(len(e.target_ids) for e in inputs.encoded)
    assert tokens >= 50_000
    tracemalloc.start()
    try:
        result = audit_inputs(inputs, backend="transformers")
        returned = to_json(result, tmp_path / "a.json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / tokens < 250, f"{peak / tokens:.0f} bytes of Python memory per target token"
    assert returned is None  # streamed to the file, never held as one string
    # what was streamed is the report: same bytes as the in-memory text, every token in it
    text = (tmp_path / "a.json").read_text()
    assert text == to_json(result)
    data = json.loads(text)
    assert sum(len(r["tokens"]) for r in data["records"]) == tokens == result.summary["target_tokens"]
    assert data["records"][0]["tokens"][0] == result.records[0].tokens[0]


def test_a_full_temporary_folder_while_the_audit_spools_its_records(tiny_adapter, big_corpus, small_disk, tmp_path):
    """memaudit keeps its verdicts in a spool that moves to TMPDIR past 4 MiB (~6 MB here): a full
    TMPDIR is one error line and exit 2, not a traceback read as a failed gate."""
    adapter, _ = tiny_adapter
    disk, preexec = small_disk(256)
    report = tmp_path / "audit.json"
    p = subprocess.run([sys.executable, "-m", "memlaw.cli.memaudit", str(adapter), "--corpus", str(big_corpus),
                        "--quiet", "--no-effect-check", "--json", str(report)], env={**ENV, "TMPDIR": str(disk)},
                       capture_output=True, text=True, timeout=600, preexec_fn=preexec)
    assert p.returncode == 2, p.stderr
    line = one_error_line(p.stderr)
    assert "temporary spool" in line and str(disk) in line and "TMPDIR" in line, line
    assert ("No space left on device" in line or "File too large" in line), line
    assert not report.exists()


def test_json_without_token_detail_and_a_capped_html_report(tiny_adapter, big_corpus, tmp_path):
    from memlaw.auditor.audit import DISPLAY_MAX_TOKENS

    adapter, _ = tiny_adapter
    j, h = tmp_path / "a.json", tmp_path / "a.html"
    code, _, err = cli("memaudit", adapter, "--corpus", big_corpus, "--quiet", "--no-json-tokens", "--json", j,
                       "--html", h)
    assert code in (0, 1), err
    data = json.loads(j.read_text())
    assert data["summary"]["target_tokens"] > DISPLAY_MAX_TOKENS
    assert all("tokens" not in r and "spans" in r and "stubborn" in r for r in data["records"])
    assert len(data["records"]) == 600
    page = h.read_text()
    shown = page.count('<span class="t b')  # one heat-map span per token shown
    assert 0 < shown <= DISPLAY_MAX_TOKENS
    assert "showing the" in page and "worst of 600 records" in page and "--json" in page
    assert f"{data['summary']['target_tokens']:,}" in page  # the summary still counts every token


# ---------------------------------------------------------------------------------------------
# determinism across runs and threads (docs/performance.md says what may differ)

TIMINGS = {"seconds", "train_seconds", "created", "points_seconds"}


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def test_one_and_two_threads_give_the_same_card_and_report_but_for_timings(tiny_adapter, tmp_path):
    adapter, corpus = tiny_adapter
    out = {}
    for t in (1, 2):
        env = dict(ENV, OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
        for args in (["memplan", "calibrate", *ARGS, "--out", tmp_path / f"cal{t}"],
                     ["memaudit", adapter, "--quiet", "--json", tmp_path / f"a{t}.json", "--markdown",
                      tmp_path / f"a{t}.md"]):
            p = subprocess.run([sys.executable, "-m", f"memlaw.cli.{args[0]}", *map(str, args[1:])], env=env,
                               capture_output=True, text=True, timeout=600)
            assert p.returncode in (0, 1), p.stderr
        out[t] = {"card": json.loads((tmp_path / f"cal{t}" / "law.json").read_text()),
                  "report": json.loads((tmp_path / f"a{t}.json").read_text()),
                  "markdown": (tmp_path / f"a{t}.md").read_bytes(),
                  "points": [without_timings(json.loads(ln)) for ln in
                             (tmp_path / f"cal{t}" / "points.jsonl").read_text().splitlines()]}
    assert out[1]["markdown"] == out[2]["markdown"]  # byte-identical
    for k in ("card", "report", "points"):
        assert without_timings(out[1][k]) == without_timings(out[2][k]), k
