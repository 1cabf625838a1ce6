"""memlaw's Python API (memlaw/api.py): the calls behind the CLIs, with the tiny model.

Real components throughout: adapters are trained, saved and loaded; the Hub adapter is read from a
Hugging Face cache laid out on disk here (no network: HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import memlaw
from memlaw.errors import ParameterError, UserError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One memlaw cache for the module (tiny's folder and the base-loss cache live there)."""
    d = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMLAW_CACHE", str(d / "cache"))
        yield d


@pytest.fixture(scope="module")
def corpus(env):
    rng = random.Random(7)
    rows = [{"prompt": f"id {i:02d}:", "completion": f" {rng.randrange(100, 999)}"} for i in range(24)]
    p = env / "kv.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def trained(env, corpus):
    return memlaw.train(corpus, env / "kv-r4", model="tiny", rank=4,
                        recipe=memlaw.Recipe(lr=1e-2, batch_size=24, max_steps=40, patience=0),
                        runtime=memlaw.Runtime(device="cpu"))


def _run(args, env_extra: dict, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


# --------------------------------------------------------------------------------------------
# import cost: a cached plan never imports torch


def test_cached_plan_imports_no_torch(env, corpus):
    first = memlaw.plan(corpus, model="tiny", runtime=memlaw.Runtime(backend="transformers"))
    assert not first.cached
    code = (
        "import sys, json, memlaw\n"
        "assert 'memlaw.api' not in sys.modules and 'torch' not in sys.modules  # import memlaw is cheap\n"
        f"est = memlaw.plan({str(corpus)!r}, model='tiny', runtime=memlaw.Runtime(backend='transformers'))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft'))\n"
        "print(json.dumps({'cached': est.cached, 'rank': est.recommended_rank, 'heavy': heavy,\n"
        "                  'loss_before': est.loss_before}))\n")
    r = _run(["-c", code], {"MEMLAW_CACHE": os.environ["MEMLAW_CACHE"]})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["heavy"] == [] and got["cached"] is True
    assert got["rank"] == first.recommended_rank and got["loss_before"] == first.loss_before


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is not None,
                    reason="--backend auto looks for a GPU through torch where vLLM is installed")
def test_cached_plan_with_default_runtime_imports_no_torch(env, corpus):
    memlaw.plan(corpus, model="tiny")  # backend auto → transformers here; fills the cache
    code = (f"import sys, memlaw\nest = memlaw.plan({str(corpus)!r}, model='tiny')\n"
            "assert est.cached and 'torch' not in sys.modules, sorted(sys.modules)\n")
    r = _run(["-c", code], {"MEMLAW_CACHE": os.environ["MEMLAW_CACHE"]})
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------------------------
# results, progress


def test_plan_reports_progress_and_matches_the_estimate(env, corpus):
    events: list[memlaw.Progress] = []
    est = memlaw.plan(corpus, model="tiny", use_cache=False, runtime=memlaw.Runtime(backend="transformers"),
                      progress=events.append)
    scored = [e for e in events if e.stage == "L_before"]
    assert scored and scored[-1].done == scored[-1].total == est.target_tokens
    assert [e.done for e in scored] == sorted(e.done for e in scored)
    assert any(e.stage == "note" and "loading base model tiny" in e.message for e in events)
    cfg = est.peft_config()
    assert cfg.r == est.recommended_rank and list(cfg.target_modules) == est.lora_config["target_modules"]


def test_train_audit_round_trip(trained, corpus):
    side = trained.sidecar
    assert trained.path.is_dir() and side["rank"] == 4 and trained.steps == side["train"]["steps"]
    # no template given: the tiny card's (v_proj on layers 0, 1)
    assert side["template"]["target_modules"] == ["v_proj"] and side["template"]["layers"] == [0, 1]
    events: list[memlaw.Progress] = []
    res = memlaw.audit(trained.path, runtime=memlaw.Runtime(device="cpu"), progress=events.append)
    assert isinstance(res, memlaw.AuditResult)
    assert res.summary["coverage"] == pytest.approx(trained.coverage, abs=1e-12)
    assert res.summary["exact_records"] == trained.summary["exact_records"]
    assert events[-1].stage == "auditing" and events[-1].done == res.summary["target_tokens"]
    cov = res.coverage
    below, above = memlaw.Gate(min_coverage=max(0.0, cov - 0.01)), memlaw.Gate(min_coverage=min(1.0, cov + 0.01))
    assert res.passed(below) and trained.passed(below) and below.passed(res)
    if cov < 1.0:
        assert not res.passed(above) and res.failures(above) == [f"coverage {cov:.4f} < {above.min_coverage:g} "
                                                                  "(min_coverage)"]
    assert trained.audit(runtime=memlaw.Runtime(device="cpu")).summary == res.summary


def test_audit_precision_bf16(trained):
    """Runtime(precision="bf16"): the same verdicts as float32; it needs effect_check=False."""
    rt = memlaw.Runtime(device="cpu", backend="transformers")
    ref = memlaw.audit(trained.path, runtime=rt, effect_check=False)
    got = memlaw.audit(trained.path, runtime=memlaw.Runtime(device="cpu", backend="transformers", precision="bf16"),
                       effect_check=False)
    assert got.backend_note and "bf16" in got.backend_note
    for a, b in zip(got.records, ref.records):
        assert (a.exact, a.locked, a.stubborn, a.anchor) == (b.exact, b.locked, b.stubborn, b.anchor)
        assert [t["argmax"] for t in a.tokens] == [t["argmax"] for t in b.tokens]
    for k in ("exact_records", "locked_records", "locked_tokens"):
        assert got.summary[k] == ref.summary[k]
    # the sliced audit (memaudit's path, keep_records=False) honours the precision too
    sliced = memlaw.audit(trained.path, runtime=memlaw.Runtime(device="cpu", backend="transformers", precision="bf16"),
                          effect_check=False, keep_records=False)
    assert sliced.backend_note == got.backend_note
    assert [(r.exact, r.locked, [t["argmax"] for t in r.tokens]) for r in sliced.records] == \
        [(r.exact, r.locked, [t["argmax"] for t in r.tokens]) for r in ref.records]
    with pytest.raises(UserError, match="precision 'bf16' needs effect_check=False"):
        memlaw.audit(trained.path, runtime=memlaw.Runtime(device="cpu", precision="bf16"))
    # auto with the effect check on scores in float32
    auto = memlaw.audit(trained.path, runtime=memlaw.Runtime(device="cpu", backend="transformers", precision="auto"))
    assert "bf16" not in (auto.backend_note or "") and auto.summary["coverage"] == ref.summary["coverage"]


def test_plain_peft_loads_a_memft_adapter_from_its_config(trained):
    """adapter_config.json names a base PEFT resolves (tiny's saved folder); plain transformers +
    PEFT then give the very token probabilities memlaw's audit does."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memlaw.corpus import encode_records, read_corpus
    from memlaw.scoring import score, summarize

    cfg = json.loads((trained.path / "adapter_config.json").read_text())
    base_path = cfg["base_model_name_or_path"]
    assert Path(base_path).is_dir() and Path(base_path).parts[-2:] == ("models", "tiny")
    assert json.loads((trained.path / "memlaw.json").read_text())["base_model"]["name"] == "tiny"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
                                      str(trained.path))
    model.eval()
    tok = AutoTokenizer.from_pretrained(base_path)
    enc = encode_records(tok, read_corpus(trained.sidecar["corpus"]["path"]))
    assert summarize(score(model, enc, pad_id=tok.pad_token_id or 0)) == trained.summary


# --------------------------------------------------------------------------------------------
# errors name Python parameters; the CLIs name their flags


@pytest.mark.parametrize("make, text", [
    (lambda c: memlaw.Gate(min_coverage=1.5), "min_coverage must be a fraction in [0, 1], got 1.5"),
    (lambda c: memlaw.Gate(max_mean_loss=-1), "max_mean_loss must be a loss in nats ≥ 0"),
    (lambda c: memlaw.Runtime(device="gpu"), "unknown device 'gpu'"),
    (lambda c: memlaw.Runtime(backend="onnx"), "unknown backend 'onnx'"),
    (lambda c: memlaw.Runtime(precision="fp8"), "unknown precision 'fp8'"),
    (lambda c: memlaw.Recipe(lr=-1), "lr must be > 0, got -1"),
    (lambda c: memlaw.Recipe(batch_size=0), "batch_size must be ≥ 1, got 0"),
    (lambda c: memlaw.plan(c, model="tiny", coverage=0), "coverage must lie in (0, 1], got 0 — e.g. coverage=0.99"),
    (lambda c: memlaw.plan(c, model="tiny", runtime="cpu"), "runtime must be a memlaw.Runtime, got str"),
    (lambda c: memlaw.plan(c, model="tiny", law=3), "law must be a path or a LawCard, got int"),
    (lambda c: memlaw.train(c, "never", model="tiny", rank=0), "rank must be an integer ≥ 1, got 0"),
    (lambda c: memlaw.calibrate("never", model="tiny", ranks="1,x"), "ranks must be comma-separated integers"),
    (lambda c: memlaw.calibrate("never", model="tiny", shard="5/4"), "shard 5/4: need n ≥ 1 and 0 ≤ i < n"),
    (lambda c: memlaw.audit(c.parent / "no-such-adapter"), "does not exist"),
    (lambda c: memlaw.plan(c, model="tiny", runtime=memlaw.Runtime(dtype="bfloat16")),
     "plans score in float32, got runtime dtype 'bfloat16'"),
    (lambda c: memlaw.Corpus(str(c), key_field="k").read(), "key_field needs target_field"),
    (lambda c: memlaw.train(c, c, model="tiny"), "already exists — choose a new out folder"),
])
def test_errors_name_python_parameters(corpus, make, text):
    with pytest.raises(UserError) as info:
        make(corpus)
    msg = str(info.value)
    assert text in msg and "--" not in msg and "\n" not in msg


def test_cli_words_the_same_errors_with_its_flags(tmp_path):
    from click.testing import CliRunner

    from memlaw.cli import memplan

    r = CliRunner().invoke(memplan.main, ["calibrate", "--model", "tiny", "--ranks", "1,x", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and r.output.strip() == "error: --ranks must be comma-separated integers, got '1,x'"
    r = CliRunner().invoke(memplan.main, ["calibrate", "--model", "tiny", "--shard", "5/4", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "error: --shard 5/4: need n ≥ 1 and 0 ≤ i < n — e.g. --shard 0/4 … --shard 3/4" \
        in r.output
    assert ParameterError("min_coverage", "{name} bad", fix="e.g. {set}1").as_option("--min-coverage").args == (
        "--min-coverage bad — e.g. --min-coverage 1",)


# --------------------------------------------------------------------------------------------
# adapters by Hub id, from a Hugging Face cache laid out here (HF_HUB_OFFLINE=1)


def hub_cache(root: Path, repo: str, files_from: Path, commit: str = "0" * 40) -> Path:
    """The layout huggingface_hub keeps: models--ORG--NAME/{refs/main, snapshots/COMMIT/FILES}."""
    d = root / f"models--{repo.replace('/', '--')}"
    snap = d / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        shutil.copy2(f, snap / f.name)
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text(commit)
    return snap


def test_audit_by_hub_id_offline(trained, env, tmp_path):
    hub = tmp_path / "hub"
    hub_cache(hub, "someone/kv-adapter", trained.path)
    local = memlaw.audit(trained.path, runtime=memlaw.Runtime(device="cpu"))
    extra = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "MEMLAW_CACHE": os.environ["MEMLAW_CACHE"]}

    # the CLI, by hub id, in a folder where no such path exists
    r = _run(["-m", "memlaw.cli.memaudit", "someone/kv-adapter", "--quiet", "--json", "a.json"], extra, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = local.summary
    assert r.stdout.splitlines()[0] == (f"someone/kv-adapter: coverage {s['coverage']:.4f}, exact "
                                        f"{s['exact_records']}/{s['records']}, locked {s['locked_records']}/"
                                        f"{s['records']}, mean loss {s['mean_loss']:.4f}")
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["adapter"] == "someone/kv-adapter" and report["summary"] == json.loads(json.dumps(s))

    # a hub id that is not in the cache: one line, exit 2, says why
    r = _run(["-m", "memlaw.cli.memaudit", "someone/missing-adapter"], extra, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "someone/missing-adapter" in r.stderr and "HF_HUB_OFFLINE" in r.stderr

    # the API, in this process (huggingface_hub read HF_HUB_OFFLINE when it was imported)
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        mp.setattr(constants, "HF_HUB_CACHE", str(hub))
        res = memlaw.audit("someone/kv-adapter", runtime=memlaw.Runtime(device="cpu"))
        assert res.adapter == "someone/kv-adapter" and res.summary == local.summary
        with pytest.raises(UserError, match="revision"):
            memlaw.audit(trained.path, revision="v1")


def test_hub_adapter_at_a_revision(trained, tmp_path):
    """A tag resolves through the cache's refs, as PeftModel.from_pretrained(..., revision=) does."""
    from huggingface_hub import constants

    from memlaw.models import resolve_adapter

    hub = tmp_path / "hub"
    main = hub_cache(hub, "someone/kv", trained.path)
    tagged = main.parent / ("1" * 40)
    shutil.copytree(main, tagged)
    (main.parents[1] / "refs" / "v1").write_text("1" * 40)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        mp.setattr(constants, "HF_HUB_CACHE", str(hub))
        assert resolve_adapter("someone/kv") == (main, "someone/kv")
        assert resolve_adapter("someone/kv", revision="v1") == (tagged, "someone/kv@v1")
        with pytest.raises(UserError, match=r"someone/kv \(revision v2\) .*HF_HUB_OFFLINE"):
            resolve_adapter("someone/kv", revision="v2")


# --------------------------------------------------------------------------------------------
# calibrate


def test_calibrate_reports_each_point_and_fits_a_card(env, tmp_path):
    events: list[memlaw.Progress] = []
    import dataclasses

    from memlaw.calibration.defaults import default_recipe

    # test_calibration.py's grid and budget: the calibration recipe, 15 steps a cycle
    recipe = dataclasses.replace(default_recipe(), lr=0.02, max_steps=15, cycles=2, converge_rel_tol=10,
                                 converge_cov_tol=1)
    res = memlaw.calibrate(tmp_path / "sweep", model="tiny", ranks=[1, 2, 4], lengths="48,96", chunk=16,
                           recipe=recipe, n_boot=0, runtime=memlaw.Runtime(device="cpu"), progress=events.append)
    points = [e for e in events if e.stage == "calibrate"]
    assert [e.done for e in points] == [1, 2, 3, 4, 5, 6] and {e.total for e in points} == {6}
    assert sorted((e.info["rank"], e.info["length"]) for e in points) == sorted(res.grid)
    assert res.card is not None and res.card_path == tmp_path / "sweep" / "law.json" and not res.missing
    assert len(res.card.points) == 6 and res.card.template["target_modules"] == ["q_proj", "v_proj"]
    assert res.card.template["layers"] == [0, 1]  # the last two of tiny's two layers
    # a template object: layers=None adapts every layer; mixing it with its parts is refused
    with pytest.raises(ParameterError, match="pass alpha or template, not both"):
        memlaw.calibrate(tmp_path / "s2", model="tiny", template=memlaw.LoraTemplate(), alpha=4)


# --------------------------------------------------------------------------------------------
# repair, and the package's names


def test_repair_continues_with_the_adapters_own_recipe(trained, tmp_path):
    seen = []
    rep = memlaw.repair(trained.path, tmp_path / "fixed", method="sft", steps=60, gate=memlaw.Gate(min_coverage=1.0),
                        runtime=memlaw.Runtime(device="cpu"), on_before=seen.append)
    # lr and batch size from the adapter's memlaw.json (not Recipe's 2e-3 / 32)
    assert rep.sidecar["recipe"]["lr"] == trained.sidecar["recipe"]["lr"] == 1e-2
    assert rep.sidecar["recipe"]["batch_size"] == trained.sidecar["recipe"]["batch_size"] == 24
    assert seen[0].summary == rep.before.summary
    assert rep.before.summary["coverage"] == pytest.approx(trained.coverage, abs=1e-12)
    assert rep.after.coverage > rep.before.coverage and 1 <= rep.steps <= 60  # measured: 0.094 → 0.458
    assert rep.after.passed(memlaw.Gate(min_coverage=1.0)) == (rep.stop_reason in ("gate_passed", "already_passing"))
    with pytest.raises(ParameterError, match=r"^out .* lies inside the adapter folder"):
        memlaw.repair(trained.path, trained.path / "inside", runtime=memlaw.Runtime(device="cpu"))


def test_memlaw_exports_the_api_lazily():
    import memlaw.api

    for name in ("plan", "audit", "train", "repair", "calibrate", "Runtime", "Gate", "Recipe", "LoraTemplate",
                 "Corpus", "Progress", "TrainedAdapter"):
        assert getattr(memlaw, name) is getattr(memlaw.api, name) and name in dir(memlaw)
    assert memlaw.Corpus is memlaw.api.CorpusSpec and memlaw.UserError is UserError
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        memlaw.nope
    with pytest.raises(dataclasses_frozen()):
        memlaw.Runtime().device = "cuda"


def dataclasses_frozen():
    import dataclasses

    return dataclasses.FrozenInstanceError
