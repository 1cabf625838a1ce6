"""An adapter that changes nothing must not pass a gate quietly (issue #17).

A PEFT adapter straight after ``get_peft_model`` (B = 0, never trained) scores exactly like its base
model: memaudit says so in a warning, records the comparison in the JSON summary (``effect``), and
``--fail-on-no-effect`` turns it into a gate failure (exit 1, a failing JUnit testcase). The base
scores come from the planner's base-loss cache when ``memplan estimate`` measured this corpus,
else from one more scoring pass. A trained-looking adapter (non-zero B) passes the same gate.
"""

import json
import os
import subprocess
import sys

import pytest


def run(cli, *args, env=None):
    return subprocess.run([sys.executable, "-m", f"memlaw.cli.{cli}", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


def tiny_adapter(out, *, zero: bool):
    from peft import LoraConfig, get_peft_model

    from memlaw.models import load_base

    import torch

    torch.manual_seed(0)
    base = load_base("tiny")
    model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=True if zero else False))
    model.save_pretrained(str(out))
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "tiny"
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture
def cache(tmp_path):
    return {"MEMLAW_CACHE": str(tmp_path / "cache")}


def test_untrained_adapter_warns_and_fails_the_gate_option(tmp_path, kv_corpus, cache, one_thread):
    adapter = tiny_adapter(tmp_path / "zero", zero=True)
    r = run("memaudit", adapter, "--corpus", kv_corpus, "--backend", "transformers", "--quiet",
            "--json", tmp_path / "a.json", env=cache)
    assert r.returncode == 0, r.stderr  # a warning, not a failure, without the gate option
    assert "warning: adapter has no measurable effect" in r.stderr
    eff = json.loads((tmp_path / "a.json").read_text())["summary"]["effect"]
    assert eff["no_effect"] is True and eff["max_abs_dlogp"] == 0.0 and eff["changed_locks"] == 0
    assert eff["tokens"] > 0 and eff["source"] == "a base-model scoring pass (transformers)"

    r = run("memaudit", adapter, "--corpus", kv_corpus, "--backend", "transformers", "--quiet",
            "--fail-on-no-effect", "--junit", tmp_path / "a.xml", "--json", tmp_path / "b.json", env=cache)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "adapter has no measurable effect" in r.stdout + r.stderr
    xml = (tmp_path / "a.xml").read_text()
    assert 'name="gate --fail-on-no-effect"' in xml and "<failure" in xml
    gate = json.loads((tmp_path / "b.json").read_text())["gate"]
    assert gate["passed"] is False and gate["thresholds"]["fail_on_no_effect"] is True


def test_an_adapter_with_an_effect_passes(tmp_path, kv_corpus, cache, one_thread):
    adapter = tiny_adapter(tmp_path / "rand", zero=False)
    r = run("memaudit", adapter, "--corpus", kv_corpus, "--backend", "transformers", "--quiet",
            "--fail-on-no-effect", "--json", tmp_path / "a.json", env=cache)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no measurable effect" not in r.stderr
    eff = json.loads((tmp_path / "a.json").read_text())["summary"]["effect"]
    assert eff["no_effect"] is False and eff["max_abs_dlogp"] > 1e-2


def test_base_scores_come_from_the_planner_cache(tmp_path, kv_corpus, cache, one_thread):
    """After `memplan estimate` on the corpus, the audit compares with the cached base scores (no
    second pass), and they are the base model's: the zero adapter matches them exactly."""
    r = run("memplan", "estimate", kv_corpus, "--model", "tiny", "--law", "memlaw/cards/tiny.json", "--json",
            env=cache)
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "cache" / "baseloss").glob("*.tokens.npz"))
    adapter = tiny_adapter(tmp_path / "zero", zero=True)
    r = run("memaudit", adapter, "--corpus", kv_corpus, "--backend", "transformers", "--quiet",
            "--json", tmp_path / "a.json", env=cache)
    assert r.returncode == 0, r.stderr
    eff = json.loads((tmp_path / "a.json").read_text())["summary"]["effect"]
    assert eff["source"] == "the base-loss cache (transformers)"
    assert eff["no_effect"] is True and eff["max_abs_dlogp"] < 1e-5  # float32 cache of the same numbers


def test_no_effect_gate_needs_the_check(tmp_path):
    r = run("memaudit", tmp_path, "--fail-on-no-effect", "--no-effect-check")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--no-effect-check" in r.stderr
    r = run("memaudit", tmp_path, "--tensor-parallel-size", "2")
    assert r.returncode == 2 and "--backend vllm" in r.stderr and r.stderr.strip().count("\n") == 0
