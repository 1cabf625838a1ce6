"""Law cards (build, save, load, validation), points files, and the memplan fit / law show CLI."""

import dataclasses
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from memlaw.card import (SCHEMA_VERSION, LawCard, build_card, card_summary, load_card, read_points,
                         save_card)
from memlaw.cli.memplan import main
from memlaw.errors import UserError
from memlaw.law import Law

TRUE = Law(C=2.0, alpha=0.4, beta=0.3, b=0.05)
META = {
    "base_model": {"name": "tiny", "config_sha256": "ab" * 32, "weights_sha256": "cd" * 32},
    "template": {"target_modules": ["q_proj", "v_proj"], "layers": None, "alpha": "2*rank",
                 "params_per_rank": 4096},
    "recipe": {"objective": "sft", "lr": 1e-3, "batch_size": 8, "stop_rule": "coverage", "max_steps": 500,
               "seed": 0, "dtype": "float32"},
    "data_kind": "random",
}
PML = {"law_form": "pml"}


def make_points(L_before=2.0, seed=0):
    """Sweep points from the true law with 2% noise; adapters past L_before memorise everything."""
    rng = np.random.default_rng(seed)
    pts = []
    for rank in (2, 8, 32, 128):
        for length in (256, 1024, 4096):
            dl = TRUE.predict(rank, length) * (1 + 0.02 * rng.standard_normal())
            la = max(L_before - dl, 0.01)  # saturated adapters sit at ~0 loss
            cov = 1.0 if la <= 0.05 else float(np.clip(1.2 - la, 0, 0.999))
            pts.append({"rank": rank, "length": length, "loss_before": L_before, "loss_after": la,
                        "loss_after_B": la + 0.01, "coverage": cov, "steps": 100 * rank, "seconds": 0.5 * rank})
    return pts


@pytest.fixture(scope="module")
def card():
    return build_card(make_points(), n_boot=40, **META, **PML)


def test_build_card(card):
    assert card.schema_version == SCHEMA_VERSION
    assert card.r2 > 0.98
    assert card.law().alpha == pytest.approx(0.4, abs=0.05)
    assert card.n_saturated >= 1 and sum(p["saturated"] for p in card.points) == card.n_saturated
    assert card.domain == {"rank": [2.0, 128.0], "length": [256.0, 1024.0 * 4]}
    assert set(card.intervals) == {"C", "alpha", "beta", "b"} and card.interval_level == 0.9
    assert len(card.bootstrap_samples) > 30 and len(card.bootstrap_samples[0]) == 4
    assert set(card.coverage_loss) == {"0.9", "0.99", "1.0"}
    assert card.template["params_per_rank"] == 4096 and card.data_kind == "random"
    rows = dict(card_summary(card))
    assert "R²" in rows and rows["base model"] == "tiny"


def test_delta_loss_definitions():
    """raw: L_before − L_after; source (the default): only the nats below the random source's ln N."""
    source = 1.5
    pts = [dict(p, loss_before=4.0, loss_source=source) for p in make_points(L_before=2.0)]
    c = build_card(pts, n_boot=0, delta_definition="source", **META, **PML)
    assert c.delta_definition == "source"
    for p in c.points:
        assert p["delta_loss"] == pytest.approx(source - p["loss_after"])
    plain = build_card(pts, n_boot=0, delta_definition="raw", **META, **PML)
    assert plain.delta_definition == "raw"
    for p in plain.points:
        assert p["delta_loss"] == pytest.approx(4.0 - p["loss_after"])
    # the same law shifted by the free 2.5 nats: only b moves
    assert plain.law().b - c.law().b == pytest.approx(4.0 - source, abs=1e-6)
    assert plain.law().alpha == pytest.approx(c.law().alpha, abs=1e-6)
    # a source entropy above L_before changes nothing
    high = build_card([dict(p, loss_source=99.0) for p in make_points()], n_boot=0, delta_definition="source", **META, **PML)
    assert high.coefficients == pytest.approx(build_card(make_points(), n_boot=0, delta_definition="raw", **META,
                                                         **PML).coefficients)


def test_a_point_that_did_not_converge_is_never_fitted_as_converged():
    """The convergence evidence decides: a point whose second cycle still lowered the loss by more
    than 10 % of ΔL (or that carries no evidence) is censored — a lower bound — and leaves R² and
    the fit's equality residuals; marking it converged by hand does not override its evidence."""
    pts = make_points()
    free = [i for i, p in enumerate(pts) if p["coverage"] < 1.0]
    k = free[0]
    dl = pts[k]["loss_before"] - pts[k]["loss_after"]
    pts[k]["loss_after_B"] = pts[k]["loss_after"] + 0.2 * dl + 0.1  # still improving fast
    pts[k]["converged"] = True  # a stale flag: the evidence wins
    del pts[free[1]]["loss_after_B"]  # no evidence at all
    c = build_card(pts, n_boot=0, **META, **PML)
    stored = {(p["rank"], p["length"]): p for p in c.points}
    assert stored[(pts[k]["rank"], pts[k]["length"])]["censored"] == "not_converged"
    assert stored[(pts[free[1]]["rank"], pts[free[1]]["length"])]["censored"] == "not_converged"
    assert c.n_not_converged == 2
    # its ΔL sits below the law; as a censored point it pulls nothing down. Fitted as an equality
    # (flag removed, evidence removed) it would.
    low = dict(pts[k], loss_after=pts[k]["loss_after"] + 0.5 * dl, loss_after_B=pts[k]["loss_after"] + 0.5 * dl)
    cens = build_card(pts[:k] + [dict(low, loss_after_B=low["loss_after"] + dl)] + pts[k + 1:], n_boot=0, **META, **PML)
    eq = build_card(pts[:k] + [low] + pts[k + 1:], n_boot=0, **META, **PML)
    assert cens.r2 > eq.r2
    x = (pts[k]["rank"], pts[k]["length"])
    assert cens.law().predict(*x) > eq.law().predict(*x)


def test_build_card_needs_enough_points():
    with pytest.raises(UserError, match="at least 5"):
        build_card(make_points()[:4], **META, **PML)
    bad = make_points()
    for p in bad[3:]:
        p["loss_after"] = None  # failed runs are not usable
    with pytest.raises(UserError, match="ranks and lengths"):
        build_card(bad, **META, **PML)
    with pytest.raises(UserError, match="lacks loss_before, loss_after, coverage"):
        build_card([{"rank": 1, "length": 2}], **META, **PML)


def test_save_load_roundtrip(card, tmp_path):
    path = tmp_path / "law.json"
    save_card(card, path)
    text = path.read_text()
    assert "NaN" not in text
    d = json.loads(text)
    assert d["coefficients"].keys() == {"C", "alpha", "beta", "b"}
    back = load_card(path)
    assert isinstance(back, LawCard)
    assert back == card
    assert back.law() == card.law()


VALIDATED = {"mean_abs_error": 0.05, "max_abs_error": 0.254, "cells": 28, "corpora": 10}


def test_validation_record_round_trips_and_shows(card, tmp_path):
    """A card's held-out record survives save/load and is shown; a fit never writes one."""
    assert card.validation == {}
    path = tmp_path / "law.json"
    save_card(dataclasses.replace(card, validation={"unigram": VALIDATED, "source": "here"}), path)
    back = load_card(path)
    assert back.validation["unigram"] == VALIDATED
    rows = dict(card_summary(back))
    assert rows["held-out coverage (unigram)"] == ("off by 0.050 on average and by up to 0.254 over 28 "
                                                    "(corpus, rank) cells of 10 corpora")


def test_target_headroom_round_trips_and_interpolates_in_log_of_the_miss_share(card, tmp_path):
    assert card.target_headroom == {} and card.headroom(0.99, "context") == 1.0  # a fit never records one
    path = tmp_path / "law.json"
    save_card(dataclasses.replace(card, target_headroom={"predictor": "context", "targets": {"0.9": 1.1, "0.99": 2.0},
                                                         "source": "here"}), path)
    back = load_card(path)
    assert back.target_headroom["targets"] == {"0.9": 1.1, "0.99": 2.0}
    assert back.headroom(0.9, "context") == pytest.approx(1.1)
    assert back.headroom(0.99, "context") == pytest.approx(2.0)
    # halfway between the two in log10(1 − t): 1 − t = 10^−1.5
    assert back.headroom(1 - 10 ** -1.5, "context") == pytest.approx(1.55)
    assert back.headroom(0.95, "context") == pytest.approx(1.1 + 0.9 * math.log10(2))
    assert back.headroom(1.0, "context") == pytest.approx(2.0)  # beyond the last target: its value
    assert back.headroom(0.5, "context") == pytest.approx(1.1)  # below the first: its value
    assert back.headroom(0.99, "unigram") == 1.0  # recorded for another predictor: none
    assert dict(card_summary(back))["target headroom (context)"].startswith("0.9: ×1.10, 0.99: ×2.00")
    assert "target headroom (context)" not in dict(card_summary(card))


def test_key_factor_round_trips_and_scales_by_the_digit_keyed_share(card, tmp_path):
    assert card.key_factor == {} and card.key_scale(1.0) == 1.0  # a fit never measures one
    path = tmp_path / "law.json"
    save_card(dataclasses.replace(card, key_factor={"digits_only_keys": 0.6, "source": "here"}), path)
    back = load_card(path)
    assert back.key_factor["digits_only_keys"] == 0.6
    assert back.key_scale(0.0) == 1.0
    assert back.key_scale(1.0) == pytest.approx(0.6)
    assert back.key_scale(0.5) == pytest.approx(0.8)
    assert dict(card_summary(back))["key factor (digit-only keys)"].startswith("0.600: ")
    assert "key factor (digit-only keys)" not in dict(card_summary(card))


NAMED = {"predictor": "unigram", "seeds": 3,
         "targets": {"0.9": {"reached": 11, "cases": 12, "missed": ["pb_digits"]},
                     "0.99": {"reached": 9, "cases": 12, "missed": ["hex_keys", "pb_large"]}}}


def test_named_rank_record_round_trips_and_picks_the_nearest_target(card, tmp_path):
    from memlaw.card import named_rank_phrase

    path = tmp_path / "law.json"
    save_card(dataclasses.replace(card, validation={"unigram": VALIDATED, "named_rank": NAMED}), path)
    back = load_card(path)
    assert back.validation["named_rank"] == NAMED
    assert named_rank_phrase(back.validation, 0.999) == ("the rank named for coverage 0.99 reached it on every "
                                                         "seed (3) on 9 of 12 held-out corpora (missed: hex_keys, "
                                                         "pb_large)")
    assert "for coverage 0.9 reached it" in named_rank_phrase(back.validation, 0.92)
    assert named_rank_phrase({"unigram": VALIDATED}, 0.9) is None
    fitted_here = {"named_rank": dict(NAMED, headroom_chosen_here=True)}
    assert named_rank_phrase(fitted_here, 0.99).endswith(
        "(missed: hex_keys, pb_large); the card's target headroom was chosen on the same corpora")
    shown = [v for k, v in card_summary(back) if k == "held-out named rank (unigram)"]
    assert len(shown) == 2 and "11 of 12" in shown[0]


def _write_card(tmp_path, card, mutate):
    d = card.to_dict()
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))  # json.dumps writes NaN literally, as a careless writer would
    return path


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(schema_version=99), "schema version 99.*reads version 2"),
    (lambda d: d.pop("coefficients"), "missing field.*coefficients"),
    (lambda d: d.pop("r2"), "missing field.*r2"),
    (lambda d: d["coefficients"].update(alpha=float("nan")), "coefficient 'alpha'"),
    (lambda d: d["coefficients"].update(C="big"), "coefficient 'C'"),
    (lambda d: d["coefficients"].update(b=float("inf")), "coefficient 'b'"),
    (lambda d: d.update(points="none"), "'points'"),
    (lambda d: d["domain"].pop("rank"), "domain 'rank'"),
    (lambda d: d.update(validation=[]), "'validation'"),
    (lambda d: d.update(validation={"unigram": {"mean_abs_error": 0.05}}), "'validation'"),
    (lambda d: d.update(validation={"unigram": dict(VALIDATED, max_abs_error=float("nan"))}), "'validation'"),
    (lambda d: d.update(validation={"named_rank": dict(NAMED, targets={})}), "'validation.named_rank'"),
    (lambda d: d.update(validation={"named_rank": dict(NAMED, targets={"0.99": {"reached": 13, "cases": 12}})}),
     "'validation.named_rank'"),
    (lambda d: d.update(validation={"named_rank": dict(NAMED, targets={"most": {"reached": 1, "cases": 2}})}),
     "'validation.named_rank'"),
    (lambda d: d.update(validation={"named_rank": dict(NAMED, targets={"0.9": {"reached": 1, "cases": 2,
                                                                                "missed": [3]}})}),
     "'validation.named_rank'"),
    (lambda d: d.update(key_factor={"digits_only_keys": 0}), "'key_factor.digits_only_keys'"),
    (lambda d: d.update(key_factor={"digits_only_keys": "low"}), "'key_factor.digits_only_keys'"),
    (lambda d: d.update(key_factor=[0.6]), "'key_factor.digits_only_keys'"),
    (lambda d: d.update(target_headroom={"targets": {"0.99": 1.8}}), "'target_headroom'"),
    (lambda d: d.update(target_headroom={"predictor": "context", "targets": {"0.99": 0.8}}), "'target_headroom'"),
    (lambda d: d.update(target_headroom={"predictor": "context", "targets": {"1.0": 1.8}}), "'target_headroom'"),
    (lambda d: d.update(target_headroom={"predictor": "context", "targets": {"0.99": "wide"}}), "'target_headroom'"),
    (lambda d: d.update(target_headroom=[1.8]), "'target_headroom'"),
])
def test_load_card_rejects_bad_cards(card, tmp_path, mutate, match):
    path = _write_card(tmp_path, card, mutate)
    with pytest.raises(UserError, match=match) as e:
        load_card(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_load_card_not_json_or_missing(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(UserError, match="not JSON") as e:
        load_card(p)
    assert str(p) in str(e.value)
    p.write_text("[1, 2]")
    with pytest.raises(UserError, match="object"):
        load_card(p)
    with pytest.raises(UserError, match="no such") as e:
        load_card(tmp_path / "nope.json")
    assert "nope.json" in str(e.value)


def test_read_points_truncated_last_line_and_dedup(tmp_path):
    p = tmp_path / "points.jsonl"
    lines = [json.dumps({"rank": 1, "length": 10, "loss_after": 1.0}),
             json.dumps({"rank": 2, "length": 10, "loss_after": 0.5}),
             json.dumps({"rank": 1, "length": 10, "loss_after": 0.9}),  # re-run: first one wins
             json.dumps({"rank": 1, "length": 10, "seed": 1, "loss_after": 0.8}),  # another seed: kept
             '{"rank": 4, "length": 1']  # killed writer
    p.write_text("\n".join(lines))
    pts = read_points(p)
    assert [(q["rank"], q.get("seed"), q["loss_after"]) for q in pts] == [(1, None, 1.0), (2, None, 0.5),
                                                                          (1, 1, 0.8)]


def test_read_points_bad_middle_line(tmp_path):
    p = tmp_path / "points.jsonl"
    p.write_text('{"rank": 1, "length": 10}\n{oops\n{"rank": 2, "length": 10}\n')
    with pytest.raises(UserError, match=r"points.jsonl:2"):
        read_points(p)
    with pytest.raises(UserError, match="no such"):
        read_points(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------
# CLI


@pytest.fixture()
def sweep_dir(tmp_path):
    d = tmp_path / "sweep"
    d.mkdir()
    with open(d / "points.jsonl", "w") as f:
        for p in make_points():
            f.write(json.dumps(p) + "\n")
    (d / "sweep.json").write_text(json.dumps(META))
    return d


def test_cli_fit_and_show(sweep_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "law.json"
    args = ["fit", str(sweep_dir / "points.jsonl"), "--out", str(out), "--n-boot", "30"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "alpha" in r.output and "R²" in r.output
    d = json.loads(out.read_text())
    assert {f for f in LawCard.__dataclass_fields__} <= set(d)
    assert d["base_model"]["name"] == "tiny" and d["template"]["alpha"] == "2*rank"
    assert d["recipe"]["objective"] == "sft"

    # refuses to overwrite without --force
    r = runner.invoke(main, args)
    assert r.exit_code == 2 and "--force" in r.stderr and r.stderr.startswith("error: ")
    assert runner.invoke(main, args + ["--force"]).exit_code == 0

    r = runner.invoke(main, ["law", "show", str(out)])
    assert r.exit_code == 0, r.output
    assert "R²" in r.output and "tiny" in r.output and "L_before" in r.output and "L_end" in r.output and "random" in r.output
    assert "key factor" not in r.output  # a fit never measures one; key_kind.py --record adds it
    d["key_factor"] = {"digits_only_keys": 0.729}
    out.write_text(json.dumps(d))
    r = runner.invoke(main, ["law", "show", str(out)])
    assert r.exit_code == 0 and "0.729 of the law's nats" in r.output


def test_cli_fit_base_model_option_without_sweep_json(tmp_path, sweep_dir):
    (sweep_dir / "sweep.json").unlink()
    runner = CliRunner()
    out = tmp_path / "law.json"
    args = ["fit", str(sweep_dir / "points.jsonl"), "--out", str(out), "--n-boot", "0"]
    r = runner.invoke(main, args)
    assert r.exit_code == 2 and "--base-model" in r.stderr
    r = runner.invoke(main, args + ["--base-model", "my-model"])
    assert r.exit_code == 0, r.output
    assert load_card(out).base_model["name"] == "my-model"


def test_cli_bad_card_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 7}))
    r = CliRunner().invoke(main, ["law", "show", str(bad)])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "bad.json" in r.stderr
    assert "Traceback" not in r.output

    r = CliRunner().invoke(main, ["fit", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o.json")])
    assert r.exit_code == 2 and "none.jsonl" in r.stderr


def capacity_points(seed=0, source=5.0):
    """Random-token sweep points from a capacity law (C·r^α nats, α = 1.3), L_before 8 above a
    source entropy of 5: the first 3 nats are free, and a rank that holds more than the records
    carry sits at the data's ceiling."""
    rng = np.random.default_rng(seed)
    pts = []
    for rank in (1, 2, 4, 8, 16):
        for length in (64, 256, 1024):
            stored = 100.0 * rank ** 1.3 * (1 + 0.03 * rng.standard_normal()) / length
            la = max(source - stored, 0.02)
            pts.append({"rank": rank, "length": length, "loss_before": 8.0, "loss_source": source, "loss_after": la,
                        "loss_after_B": la + 0.01, "coverage": 0.0 if la > 1 else 0.9, "steps": 10})
    return pts


def test_capacity_card_censors_points_at_the_data_ceiling():
    """The default form and ΔL: capacity on the source ΔL. A point whose adapter holds ≥ 90 % of
    what its records carry is bounded by the data, not the rank: censored ('near_ceiling'), so
    it never drags the nats-per-rank down; the pml form does not apply that rule."""
    pts = capacity_points()
    c = build_card(pts, n_boot=20, **META)
    assert c.law_form == "capacity" and c.delta_definition == "source"
    assert c.law().alpha == pytest.approx(1.3, abs=0.08) and c.law().C == pytest.approx(100.0, rel=0.15)
    near = [p for p in c.points if p["censored"] == "near_ceiling"]
    assert near and all(p["loss_after"] <= 0.1 * 5.0 for p in near)
    assert all(p["saturated"] for p in near) and c.n_saturated >= len(near)
    pml = build_card(pts, n_boot=0, law_form="pml", **META)
    assert not any(p["censored"] == "near_ceiling" for p in pml.points)
    rows = dict(card_summary(c))
    assert "capacity" in rows["law"] and "near the data's ceiling" in rows["points"]


def test_law_form_round_trips_and_unknown_forms_are_refused(tmp_path):
    c = build_card(capacity_points(), n_boot=0, **META)
    save_card(c, tmp_path / "c.json")
    assert load_card(tmp_path / "c.json").law_form == "capacity"
    d = json.loads((tmp_path / "c.json").read_text())
    d["law_form"] = "cubic"
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="law_form"):
        load_card(tmp_path / "bad.json")
    del d["law_form"]  # cards from before the capacity form
    (tmp_path / "old.json").write_text(json.dumps(d))
    assert load_card(tmp_path / "old.json").law_form == "pml"
    with pytest.raises(UserError, match="law form"):
        build_card(capacity_points(), n_boot=0, law_form="cubic", **META)
