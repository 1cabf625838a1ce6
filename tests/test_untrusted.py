"""Untrusted inputs stay data: remote code is never run unless asked, and a repair killed at any
moment leaves the output path either absent or complete."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memlaw.errors import UserError
from memlaw.models import load_base, tiny_model, tiny_tokenizer


def test_remote_code_is_never_run_unless_asked(tmp_path):
    """A model folder whose config points at custom code: loading it must not execute that code."""
    folder = tmp_path / "custom"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                    "from transformers import LlamaConfig\n"
                                    "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilConfig"}
    cfg["model_type"] = "evil"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError):
        load_base(str(folder))
    assert not marker.exists()


@pytest.mark.parametrize("kill_at", [0.5, 3.0, 8.0])  # start-up, loading, training
def test_a_killed_repair_leaves_no_half_written_adapter(tmp_path, kill_at):
    from memlaw.memft import CorpusSpec, Recipe, train_adapter

    corpus = tmp_path / "kv.jsonl"
    corpus.write_text("".join(json.dumps({"prompt": f"k{i:02d}:", "completion": f" v{i * 7 % 97:02d}"}) + "\n"
                              for i in range(24)))
    adapter = tmp_path / "adapter"
    train_adapter(CorpusSpec(str(corpus)), "tiny", 2, adapter, recipe=Recipe(method="sft", lr=1e-2, max_steps=3),
                  progress=False)
    before = {p.name: p.read_bytes() for p in adapter.iterdir()}
    out = tmp_path / "fixed"
    cmd = [sys.executable, "-m", "memlaw.cli.memaudit", str(adapter), "--min-exact", "1.0", "--repair-out",
           str(out), "--method", "ot", "--repair-steps", "100000", "--lr", "1e-4", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_at)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # no output until the adapter is complete (one rename)
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == before
    # and a rerun with a small budget completes into the same path
    r = subprocess.run(cmd[:cmd.index("100000")] + ["20"] + cmd[cmd.index("100000") + 1:], env=env,
                       capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr[-1000:]
    assert (out / "adapter_model.safetensors").is_file() and (out / "memlaw.json").is_file()
