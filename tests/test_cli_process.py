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


def run(args, timeout=900, **kw):  # generous: a shared machine can starve a process for minutes
    return subprocess.run(args, capture_output=True, text=True, env=env(), timeout=timeout, **kw)


@pytest.fixture
def hard_corpus(tmp_path):
    """200 random strings: the tiny model cannot lock them for a long time."""
    rng = random.Random(3)
    rows = [{"prompt": f"k{i}:", "completion": " " + "".join(rng.choice("abcdefghij") for _ in range(12))}
            for i in range(200)]
    p = tmp_path / "hard.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


# --------------------------------------------------------------------------------------------
# interrupts: 130 for SIGINT, 143 for SIGTERM, never 1 (the gate-failed code)


def _as_foreground_job():
    """A job started in the background by a non-interactive shell inherits SIGINT ignored (POSIX), and
    Python keeps an inherited SIG_IGN, as it should: Ctrl-C at a terminal is not meant for it. The
    suite may run that way (``make test &`` in a script), so the child gets the disposition of a
    command typed at a terminal, the case this test is about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig, code, word", [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "terminated")])
def test_signal_exit_codes(hard_corpus, tmp_path, sig, code, word):
    out = tmp_path / "adapter"
    proc = subprocess.Popen(cli("memft") + ["train", str(hard_corpus), "--model", "tiny", "--rank", "1",
                                            "--method", "sft", "--max-steps", "100000", "--patience", "100000",
                                            "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            preexec_fn=_as_foreground_job)
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
        assert started.wait(600), "".join(lines)  # generous: on a shared machine imports alone can take minutes
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


def _timed(cmd) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a command; return it with its wall-clock seconds and the CPU seconds it used."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = run(cmd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


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
    # The wait a starved machine adds to any process start: the same CLI saying only its version.
    _, base_wall, base_cpu = _timed(cmd[:3] + ["--version"])
    r, wall, cpu = _timed(cmd)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: ")
    assert phrase in r.stderr
    # Under 2 s of wall clock; on a machine so busy that merely starting the CLI takes longer, under
    # 2 s beyond that start (a retry loop or a model load would still blow it), and under 2 s of CPU.
    waiting = max(0.0, base_wall - base_cpu)
    assert cpu < 2.0 and wall < 2.0 + waiting, (f"{wall:.2f} s wall, {cpu:.2f} s CPU (CLI start: {base_wall:.2f} s "
                                                 f"wall, {base_cpu:.2f} s CPU) to say: {r.stderr}")
    print(f"time to error: {wall:.2f} s wall, {cpu:.2f} s CPU; --version: {base_wall:.2f} s wall")


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


def test_repair_defaults_to_the_adapters_own_recipe(tmp_path):
    """Without --lr/--batch-size a repair continues with the lr and batch the adapter was trained
    with (its memlaw.json), said in one line, and recorded in the repaired adapter's sidecar."""
    c = tmp_path / "c.jsonl"
    c.write_text("".join(f'{{"prompt": "k{i}:", "completion": " v{i * 7}"}}\n' for i in range(6)))
    src = tmp_path / "src"
    r = run(cli("memft") + ["train", str(c), "--model", "tiny", "--method", "sft", "--lr", "0.005",
                            "--batch-size", "3", "--max-steps", "2", "--out", str(src), "--quiet"])
    assert r.returncode == 0, r.stderr
    out = tmp_path / "fixed"
    r = run(cli("memaudit") + [str(src), "--repair-out", str(out), "--repair-steps", "2", "--min-exact", "1.0"])
    assert r.returncode in (0, 1), r.stderr
    assert f"repair with --lr 0.005 --batch-size 3, from {src / 'memlaw.json'}" in " ".join(r.stdout.split())
    recipe = json.loads((out / "memlaw.json").read_text())["recipe"]
    assert recipe["lr"] == 0.005 and recipe["batch_size"] == 3


def test_train_defaults_to_the_shipped_cards_template(tmp_path):
    """`memft train` with no template flags trains the template, lr and batch of the law card
    shipped for the model (the calibrated template; on SmolLM2 the one fast on a CPU), says so,
    and any flag given wins over the card."""
    card = json.loads((ROOT / "memlaw" / "cards" / "tiny.json").read_text())
    c = tmp_path / "c.jsonl"
    c.write_text("".join(f'{{"prompt": "k{i}:", "completion": " v{i}"}}\n' for i in range(5)))
    r = run(cli("memft") + ["train", str(c), "--model", "tiny", "--max-steps", "1", "--out", str(tmp_path / "a")])
    assert r.returncode == 0, r.stderr
    assert "defaults from the law card tiny.json" in r.stderr
    side = json.loads((tmp_path / "a" / "memlaw.json").read_text())
    assert side["template"]["target_modules"] == card["template"]["target_modules"]
    assert side["template"]["layers"] == card["template"]["layers"]
    assert side["recipe"]["lr"] == card["recipe"]["lr"] and side["recipe"]["batch_size"] == 5  # "all" records
    r = run(cli("memft") + ["train", str(c), "--model", "tiny", "--max-steps", "1", "--target-modules", "q_proj",
                            "--lr", "0.003", "--out", str(tmp_path / "b"), "--quiet"])
    assert r.returncode == 0, r.stderr
    side = json.loads((tmp_path / "b" / "memlaw.json").read_text())
    assert side["template"]["target_modules"] == ["q_proj"] and side["template"]["layers"] == card["template"]["layers"]
    assert side["recipe"]["lr"] == 0.003
