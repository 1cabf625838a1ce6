"""The CLIs as a user (or a CI job) runs them: real processes, real signals, wall-clock time to an
error, file modes under a umask, what --quiet leaves on stderr. No CliRunner here: exit codes of
signals and import-time costs only show in a real process."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(name: str) -> list[str]:
    return [sys.executable, "-m", f"memlaw.cli.{name}"]


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    e.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)  # the --quiet test must see the default
    return e


def run(args, timeout=120, **kw):
    return subprocess.run(args, capture_output=True, text=True, env=env(), timeout=timeout, **kw)


@pytest.fixture
def hard_corpus(tmp_path):
    """400 random strings: the tiny model cannot lock them for a long time."""
    rng = random.Random(3)
    rows = [{"prompt": f"k{i}:", "completion": " " + "".join(rng.choice("abcdefghij") for _ in range(12))}
            for i in range(400)]
    p = tmp_path / "hard.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


# --------------------------------------------------------------------------------------------
# interrupts: 130 for SIGINT, 143 for SIGTERM, never 1 (the gate-failed code)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_exit_codes(hard_corpus, tmp_path, sig, code, word):
    out = tmp_path / "adapter"
    proc = subprocess.Popen(cli("memft") + ["train", str(hard_corpus), "--model", "tiny", "--rank", "1",
                                            "--method", "sft", "--max-steps", "100000", "--patience", "100000",
                                            "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    lines: list[str] = []
    started = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            # training is under way, and its progress line (every ~10 s off a terminal) has an ETA
            if line.startswith("train step") and "ETA ≤" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(120), "".join(lines)
        proc.send_signal(sig)
        rc = proc.wait(60)
    finally:
        proc.kill()
    reader.join(10)
    assert rc == code, "".join(lines)
    last = [ln for ln in lines if ln.strip()][-1]
    assert word in last and str(code) in last and "Aborted" not in "".join(lines)
    assert "Traceback" not in "".join(lines)
    assert not out.exists() and not list(tmp_path.glob(".adapter.tmp-*"))  # nothing half-written


# --------------------------------------------------------------------------------------------
# errors come fast, before anything heavy loads


@pytest.mark.parametrize("args, phrase", [
    (["--model", "smollm-135m"], "did you mean smollm2-135m"),
    (["--model", "SmolLM2-135M"], "did you mean smollm2-135m"),
    (["--rank", "0"], "--rank must be ≥ 1, got 0"),
    (["--lr", "-1"], "--lr must be > 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
    (["--model", "tiny", "--layers", "99"], "--layers 99: tiny has 2 layers"),
    (["memplan", "estimate", "--model", "smollm-135m"], "did you mean smollm2-135m"),
    (["memplan", "calibrate", "--model", "smollm-135m"], "did you mean smollm2-135m"),
])
def test_typo_errors_under_two_seconds(tmp_path, args, phrase):
    c = tmp_path / "c.jsonl"
    c.write_text('{"prompt": "a", "completion": " b"}\n')
    if args[0] == "memplan":
        cmd = cli("memplan") + [args[1], *([str(c)] if args[1] == "estimate" else ["--out", str(tmp_path / "o")]),
                                *args[2:]]
    else:
        cmd = cli("memft") + ["train", str(c), "--out", str(tmp_path / "o"), *args]
    t0 = time.perf_counter()
    r = run(cmd)
    seconds = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: ")
    assert phrase in r.stderr
    assert seconds < 2.0, f"{seconds:.2f} s to say: {r.stderr}"


def test_unknown_hub_id_does_not_retry(tmp_path):
    """An id that is neither built in, local, cached nor on the hub: one line, no retry loop
    (huggingface_hub retries for ~50 s when the hub cannot be reached)."""
    c = tmp_path / "c.jsonl"
    c.write_text('{"prompt": "a", "completion": " b"}\n')
    t0 = time.perf_counter()
    r = run(cli("memft") + ["train", str(c), "--out", str(tmp_path / "o"), "--model",
                            "memlaw-test/no-such-model-7f3a"])
    seconds = time.perf_counter() - t0
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Retry" not in r.stderr, r.stderr
    assert "no-such-model-7f3a" in r.stderr
    assert seconds < 10, seconds


def test_help_and_version():
    for name in ("memft", "memaudit", "memplan"):
        for flag in ("-h", "--help"):
            r = run(cli(name) + [flag])
            assert r.returncode == 0 and "Usage:" in r.stdout, (name, flag, r.stderr)
        r = run(cli(name) + ["--version"])
        assert r.returncode == 0 and r.stdout.startswith(f"{name}, version "), (name, r.stdout, r.stderr)
    r = run(cli("memft") + ["train", "-h"])
    assert r.returncode == 0 and "--target-modules" in r.stdout


# --------------------------------------------------------------------------------------------
# --quiet is quiet, and what we write follows the umask


def test_quiet_hides_library_progress_bars(tmp_path):
    """A model loaded from a folder shows transformers' "Loading weights" bar unless --quiet."""
    from memlaw.models import tiny_model, tiny_tokenizer

    model_dir = tmp_path / "tiny-saved"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    c = tmp_path / "c.jsonl"
    c.write_text('{"prompt": "a", "completion": " b"}\n')
    base = cli("memft") + ["train", str(c), "--model", str(model_dir), "--max-steps", "1"]
    loud = run(base + ["--out", str(tmp_path / "a")])
    assert loud.returncode == 0, loud.stderr
    assert "Loading weights" in loud.stderr  # the bar exists, so the quiet run below proves something
    quiet = run(base + ["--out", str(tmp_path / "b"), "--quiet"])
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "", quiet.stderr


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_adapter_and_reports_follow_the_umask(tmp_path, umask, dir_mode, file_mode):
    c = tmp_path / "c.jsonl"
    c.write_text('{"prompt": "a", "completion": " b"}\n' * 3)
    out = tmp_path / "adapter"

    def set_umask():
        os.umask(umask)

    r = run(cli("memft") + ["train", str(c), "--model", "tiny", "--max-steps", "1", "--out", str(out), "--quiet"],
            preexec_fn=set_umask)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_mode & 0o777 == dir_mode
    files = sorted(out.iterdir())
    assert {p.name for p in files} >= {"adapter_config.json", "adapter_model.safetensors", "memlaw.json"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(file_mode) for p in files}
    rep = tmp_path / "audit.json"
    r = run(cli("memaudit") + [str(out), "--quiet", "--json", str(rep), "--junit", str(tmp_path / "a.xml")],
            preexec_fn=set_umask)
    assert r.returncode == 0, r.stderr
    assert rep.stat().st_mode & 0o777 == file_mode and (tmp_path / "a.xml").stat().st_mode & 0o777 == file_mode
