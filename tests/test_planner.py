"""memlaw.planner and `memplan estimate`: the tiny model, a law card built from synthetic sweep points
with known coefficients, so the expected rank is a hand computation.

The card's points follow ΔL = C·r^α·ℓ^(−β) + b (2% multiplicative noise, so the bootstrap interval
has a width); C is chosen so the test corpus needs a continuous rank of about 5.3 at coverage 1.0
(→ practical rank 8). The ΔL a coverage needs comes from the corpus's per-token base losses
(memlaw.planner.coverage, unit-tested in test_coverage.py); the expected rank is recomputed here
from the card's fitted coefficients with the closed-form inverse, not with memlaw.law.rank_for_delta.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shlex
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from memlaw.card import build_card, save_card
from memlaw.errors import UserError
from memlaw.memft import CorpusSpec, LoraTemplate

ALPHA, BETA, B = 0.5, 0.3, 0.05
R_TARGET = 5.3
LOSS_AFTER_CYCLE = (0.1, 0.2, 0.4, 0.7, 1.2)
COVERAGE_OF = {0.1: 1.0, 0.2: 1.0, 0.4: 0.995, 0.7: 0.95, 1.2: 0.6}
LENGTHS = (100, 200, 400, 800)
RANKS = (1, 2, 4, 8, 16, 32)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py




@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("MEMLAW_CACHE", str(d))
    return d


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def corpus_rows(n: int = 30, seed: int = 3, conflict: bool = True) -> list[dict]:
    rng = random.Random(seed)
    rows = [{"prompt": f"user {i:02d} code:", "completion": " " + "".join(rng.choice("abcdefghjk") for _ in range(9))}
            for i in range(n)]
    if conflict:  # the key of record 0 again, with another target
        rows.append({"prompt": rows[0]["prompt"], "completion": " zzzzzzzzz"})
    return rows


@pytest.fixture(scope="module")
def base():
    from memlaw.models import load_base

    return load_base("tiny")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "codes.jsonl", corpus_rows())


@pytest.fixture(scope="module")
def measured(base, corpus):
    """ℓ, L_before and the per-token log p of the corpus under the tiny model, scored here."""
    from memlaw.corpus import encode_records, read_corpus
    from memlaw.scoring import score

    encoded = encode_records(base.tokenizer, read_corpus(corpus))
    scores = score(base.model, encoded, pad_id=base.tokenizer.pad_token_id)
    lp = np.concatenate([s.logprob for s in scores])
    rows = [json.loads(x) for x in corpus.read_text().splitlines()]
    return {"ell": int(lp.size), "loss_before": float(-lp.mean()), "logprob": lp,
            "ids": np.concatenate([s.target_ids for s in scores]),
            "bytes": sum(len(r["completion"].encode()) for r in rows)}


def need(measured, coverage: float = 1.0) -> tuple[float, float]:
    """(ΔL needed, coverage planned) for the test corpus at the `unigram` price (the hand inversions
    below run the estimate with it): its one conflict blocks one token (the first byte after the
    shared " "), so coverage 1.0 is planned at 1 − 1/ℓ."""
    from memlaw.planner.coverage import LossProfile, delta_for_coverage

    planned = min(coverage, 1 - 1 / measured["ell"])
    profile = LossProfile.from_losses(-measured["logprob"], measured["ids"])
    return delta_for_coverage(profile, planned, "unigram"), planned


def make_card(base, *, delta: float, ell: int, r_target: float = R_TARGET, template: LoraTemplate | None = None,
              lengths=LENGTHS, noise: float = 0.02, seed: int = 0):
    """A card whose law needs ≈ r_target to reach ΔL = ``delta`` at ℓ."""
    template = template or LoraTemplate()
    C = (delta - B) * ell ** BETA / r_target ** ALPHA
    rng = np.random.default_rng(seed)
    points = []
    for i, (r, l) in enumerate((r, l) for r in RANKS for l in lengths):
        dl = (C * r ** ALPHA * l ** (-BETA) + B) * (1 + noise * rng.standard_normal())
        la = LOSS_AFTER_CYCLE[i % len(LOSS_AFTER_CYCLE)]
        points.append({"rank": r, "length": l, "loss_before": dl + la, "loss_after": la,
                       "coverage": COVERAGE_OF[la], "steps": 10, "seconds": 1.0, "converged": True})
    tdict = template.to_dict()
    tdict["params_per_rank"] = template.params_per_rank(base.model)
    card = build_card(points, base_model=base.identity, template=tdict,
                      recipe={"method": "ot", "lr": 0.002, "batch_size": 32, "max_steps": 600},
                      data_kind="random", n_boot=200, seed=0, law_form="pml", delta_definition="raw",
                      saturation_loss=0.0)  # the points follow the law exactly: none is censored
    return card, C


@pytest.fixture(scope="module")
def card(base, measured):
    card, C = make_card(base, delta=need(measured)[0], ell=measured["ell"])
    return card


@pytest.fixture(scope="module")
def card_file(card, tmp_path_factory):
    path = tmp_path_factory.mktemp("card") / "law.json"
    save_card(card, path)
    return path


def hand_rank(card, measured, coverage: float = 1.0) -> float:
    c = card.coefficients
    delta = need(measured, coverage)[0]
    return ((delta - c["b"]) * measured["ell"] ** c["beta"] / c["C"]) ** (1 / c["alpha"])


def run_estimate(corpus, card, coverage=1.0, **kw):
    from memlaw.planner.estimate import estimate

    return estimate(CorpusSpec(str(corpus)), card, coverage, **kw)


def cache_entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "baseloss").glob("*.json") if not p.name.startswith("identity-"))


# --------------------------------------------------------------------------------------------
# the card is what we meant it to be


def test_capacity_card_names_the_rank_whose_nats_cover_the_corpus(base, corpus, measured, tmp_path, monkeypatch):
    """With the capacity form (the shipped cards') the rank is r = (ℓ·ΔL_needed / C)^(1/α): the
    smallest rank whose C·r^α nats cover what the corpus needs (here with the `unigram` price)."""
    monkeypatch.setenv("MEMLAW_CACHE", str(tmp_path / "cache"))
    template = LoraTemplate()
    tdict = dict(template.to_dict(), params_per_rank=template.params_per_rank(base.model))
    C, alpha = 40.0, 1.3
    points = [{"rank": r, "length": l, "loss_before": 6.0, "loss_after": 6.0 - C * r ** alpha / l,
               "coverage": 0.0, "steps": 10, "converged": True} for r in (1, 2, 4, 8) for l in (256, 512, 1024)]
    card = build_card(points, base_model=base.identity, template=tdict, recipe={"method": "sft", "lr": 0.02},
                      data_kind="random", n_boot=50, seed=0)
    assert card.law_form == "capacity" and card.law().alpha == pytest.approx(alpha)
    est = run_estimate(corpus, card, 0.9, predictor="unigram")
    from memlaw.planner.coverage import LossProfile, delta_for_coverage

    needed = delta_for_coverage(LossProfile.from_losses(-measured["logprob"], measured["ids"]), 0.9, "unigram")
    assert est.predictor == "unigram" and est.delta_needed == pytest.approx(needed)
    r = (measured["ell"] * needed / C) ** (1 / alpha)
    assert est.rank_raw == pytest.approx(r, rel=1e-6)
    assert est.recommended_rank == max(1, 2 ** math.ceil(math.log2(r)))


def test_synthetic_card_recovers_coefficients(card):
    c = card.coefficients
    assert c["alpha"] == pytest.approx(ALPHA, abs=0.05)
    assert c["beta"] == pytest.approx(BETA, abs=0.05)
    assert card.coverage_loss["1.0"] == pytest.approx(0.4)
    assert card.coverage_loss["0.99"] == pytest.approx(0.7)
    assert card.coverage_loss["0.9"] == pytest.approx(1.2)
    assert card.n_saturated == 0 and len(card.bootstrap_samples) > 100


# --------------------------------------------------------------------------------------------
# the rank


def test_rank_is_the_hand_inversion_rounded_to_a_power_of_two(corpus, card, measured, base):
    est = run_estimate(corpus, card, predictor="unigram")
    assert est.target_tokens == measured["ell"] == measured["bytes"]  # byte-level tokenizer: ℓ = bytes
    assert est.loss_before == pytest.approx(measured["loss_before"], rel=1e-9)
    delta, planned = need(measured)
    assert est.coverage_planned == pytest.approx(planned) and est.max_coverage == pytest.approx(planned)
    assert est.delta_needed == pytest.approx(delta, rel=1e-9)
    assert 0 < est.loss_target < est.loss_before

    r = hand_rank(card, measured)
    assert r == pytest.approx(R_TARGET, rel=0.25)  # the card is what we built
    assert est.rank_raw == pytest.approx(r, rel=1e-9)
    assert est.rank == 2 ** math.ceil(math.log2(r)) == 8
    assert est.recommended_rank == est.rank  # the floor is far below for all-linear LoRA

    lo, hi = est.rank_interval
    lo_raw, hi_raw = est.rank_interval_raw
    assert lo_raw <= est.rank_raw <= hi_raw and lo_raw < hi_raw
    assert lo <= est.rank <= hi
    assert est.bootstrap["samples"] == len(card.bootstrap_samples)

    ppr = LoraTemplate().params_per_rank(base.model)
    assert est.params_per_rank == ppr == card.template["params_per_rank"]
    assert est.trainable_params == 8 * ppr
    fp32, bf16 = est.adapter_bytes["fp32"], est.adapter_bytes["bf16"]
    assert fp32 - est.adapter_header_bytes == 8 * ppr * 4
    assert 0 < est.adapter_header_bytes < 20_000
    assert 8 * ppr * 2 < bf16 < fp32
    # at rank 8 ≥ 5.3 the law's ΔL exceeds the need: the predicted coverage reaches the plan
    assert card.law().predict(8, est.target_tokens) > est.delta_needed
    assert est.predicted_coverage >= est.coverage_planned - 1e-12
    assert 0 <= est.predicted_loss_after <= est.loss_target
    assert [x["rank"] for x in est.coverage_by_rank] == [2, 4, 8, 16]
    covs = [x["coverage"] for x in est.coverage_by_rank]
    assert covs == sorted(covs) and covs[0] < est.coverage_planned  # rank 2 falls short
    assert est.full_rank == {"min": 32, "max": 64, "modules": 14}  # tiny: k/v 64→32, others ≥ 64


def test_adapter_bytes_match_a_saved_peft_adapter(corpus, card, tmp_path):
    """The size is built the way safetensors writes it: compare with a real save at that rank."""
    import torch

    from memlaw.memft import make_lora_model
    from memlaw.models import load_base

    est = run_estimate(corpus, card)
    model = make_lora_model(load_base("tiny").model, LoraTemplate(), est.recommended_rank, seed=0)
    model.save_pretrained(str(tmp_path / "fp32"), safe_serialization=True)
    assert (tmp_path / "fp32" / "adapter_model.safetensors").stat().st_size == est.adapter_bytes["fp32"]
    model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"), safe_serialization=True)
    assert (tmp_path / "bf16" / "adapter_model.safetensors").stat().st_size == est.adapter_bytes["bf16"]


def test_default_estimate_prices_tokens_in_context(corpus, card, measured, base):
    """The default predictor (`context`, docs/results.md §2) prices each token at the cheapest of its
    base loss, its unigram code and its loss after other records of the corpus: the estimate's ΔL is
    that price's inversion, from an in-context pass scored here by hand through the same windows."""
    from memlaw.backends import get_backend
    from memlaw.corpus import encode_records, read_corpus
    from memlaw.planner.baseloss import context_settings
    from memlaw.planner.context import context_losses
    from memlaw.planner.coverage import DEFAULT_PREDICTOR, LossProfile, delta_for_coverage

    est = run_estimate(corpus, card, 0.9)
    assert est.predictor == DEFAULT_PREDICTOR == "context"
    encoded = encode_records(base.tokenizer, read_corpus(corpus))
    alone = [-lp for lp in np.split(measured["logprob"], np.cumsum([e.n_target for e in encoded])[:-1])]
    in_context = context_losses(get_backend("transformers", allow_auto=False), base.model, encoded, alone,
                                **context_settings(base))
    profile = LossProfile.from_losses(-measured["logprob"], measured["ids"], np.concatenate(in_context))
    assert est.delta_needed == pytest.approx(delta_for_coverage(profile, 0.9, "context"), rel=1e-3)
    # and not the unigram price's (which the hand inversions above check)
    assert est.delta_needed != pytest.approx(run_estimate(corpus, card, 0.9, predictor="unigram").delta_needed, rel=1e-3)


def test_lower_coverage_needs_no_more_rank(corpus, card, measured):
    e90 = run_estimate(corpus, card, 0.9, predictor="unigram")
    e100 = run_estimate(corpus, card, 1.0, predictor="unigram")
    assert e90.loss_target > e100.loss_target and e90.delta_needed < e100.delta_needed
    assert e90.rank_raw == pytest.approx(hand_rank(card, measured, 0.9))
    assert e90.rank_raw < e100.rank_raw and e90.rank <= e100.rank
    e95 = run_estimate(corpus, card, 0.95, predictor="unigram")
    assert e90.rank_raw <= e95.rank_raw <= e100.rank_raw
    # the default price too: a lower target never needs more
    d90, d95, d100 = (run_estimate(corpus, card, c) for c in (0.9, 0.95, 1.0))
    assert d90.rank_raw <= d95.rank_raw <= d100.rank_raw


def test_lora_config_and_memft_command(corpus, card):
    from peft import LoraConfig

    from memlaw.cli.memft import main as memft_main

    est = run_estimate(corpus, card)
    cfg = est.lora_config
    assert cfg["r"] == est.recommended_rank and cfg["lora_alpha"] == 2.0 * cfg["r"]
    assert cfg["target_modules"] == list(LoraTemplate().target_modules)
    assert cfg["layers_to_transform"] is None and cfg["task_type"] == "CAUSAL_LM"
    LoraConfig(**cfg)  # a valid config
    ns: dict = {"base_model": None}
    code = est.lora_config_python.replace("model = get_peft_model(base_model, config)\n", "")
    exec(code, ns)
    assert ns["config"].r == cfg["r"]

    args = shlex.split(est.memft_command)
    assert args[:3] == ["memft", "train", str(corpus)]
    ctx = memft_main.commands["train"].make_context("train", args[2:])  # every flag parses
    p = ctx.params
    assert p["rank"] == est.recommended_rank and p["model"] == "tiny" and p["alpha"] == "2*rank"
    assert p["target_modules"] == ",".join(cfg["target_modules"]) and p["method"] == "ot"
    assert p["lr"] == 0.002 and p["batch_size"] == 32


def test_memft_command_states_the_cards_convergence_test(corpus, card):
    """A card trained until converged under its own tolerances: the printed line carries them, so
    `memft train` stops by the card's test, not memlaw's defaults."""
    from memlaw.cli.memft import main as memft_main

    strict = dict(card.recipe, until_converged=True, cycles=16, converge_rel_tol=0.02, converge_abs_tol=0.01,
                  converge_cov_tol=0.005)
    est = run_estimate(corpus, dataclasses.replace(card, recipe=strict))
    assert "--until-converged --converge-rel-tol 0.02 --converge-abs-tol 0.01 --converge-cov-tol 0.005" in \
        est.memft_command
    p = memft_main.commands["train"].make_context("train", shlex.split(est.memft_command)[2:]).params
    assert (p["cycles"], p["until_converged"]) == (16, True)
    assert (p["converge_rel_tol"], p["converge_abs_tol"], p["converge_cov_tol"]) == (0.02, 0.01, 0.005)
    loose = dict(card.recipe, until_converged=False)
    assert "--converge" not in run_estimate(corpus, dataclasses.replace(card, recipe=loose)).memft_command


# --------------------------------------------------------------------------------------------
# the capacity floor


def test_capacity_floor_is_the_hand_computation(corpus, card, measured, base):
    est = run_estimate(corpus, card)
    lp = measured["logprob"]
    bits = float(np.sum(np.maximum(0.0, -lp / math.log(2) - 1.0)))
    assert est.capacity_floor_bits == pytest.approx(bits, rel=1e-9)
    assert est.information_bits == pytest.approx(float(np.sum(-lp / math.log(2))), rel=1e-9)
    assert est.capacity_floor_params == pytest.approx(bits / 3.6, rel=1e-9)
    ppr = LoraTemplate().params_per_rank(base.model)
    assert est.capacity_floor_rank == math.ceil(bits / 3.6 / ppr)
    assert est.base_coverage == pytest.approx(float(np.mean(lp > -math.log(2))))


def test_floor_above_the_law_raises_the_recommendation(corpus, card, measured, base):
    """A small template (q_proj of layer 0: 128 parameters per rank) and a law whose offset alone
    covers the need (any rank): the floor decides."""
    small = LoraTemplate(target_modules=("q_proj",), layers=(0,))
    tdict = small.to_dict()
    tdict["params_per_rank"] = small.params_per_rank(base.model)
    coef = dict(card.coefficients, b=100.0)
    easy = dataclasses.replace(card, template=tdict, coefficients=coef,
                               bootstrap_samples=[[coef["C"], coef["alpha"], coef["beta"], 100.0]])
    est = run_estimate(corpus, easy)
    floor = math.ceil(est.capacity_floor_bits / 3.6 / 128)
    assert est.params_per_rank == 128 and est.capacity_floor_rank == floor > 1
    assert not est.any_rank and est.rank == 1 and est.rank_raw == 0.0  # the law: rank 1; the floor: more
    assert any("smallest rank, 1" in n for n in est.notes)
    assert est.recommended_rank == 2 ** math.ceil(math.log2(floor))
    assert est.trainable_params == est.recommended_rank * 128
    assert est.lora_config["r"] == est.recommended_rank
    assert est.lora_config["target_modules"] == ["q_proj"] and est.lora_config["layers_to_transform"] == [0]
    assert any("capacity floor" in w for w in est.warnings)
    assert "--layers 0" in est.memft_command and "--target-modules q_proj" in est.memft_command


# --------------------------------------------------------------------------------------------
# the cache


def test_second_run_is_cached_and_loads_no_model(corpus, card, cache, monkeypatch):
    first = run_estimate(corpus, card)
    assert first.cached is False
    assert len(cache_entries(cache)) == 1

    import memlaw.models
    import memlaw.planner.baseloss as bl

    def boom(*a, **k):
        raise AssertionError("a cached estimate must not load or score the model")

    monkeypatch.setattr(memlaw.models, "load_base", boom)
    monkeypatch.setattr(bl, "base_losses", boom)
    second = run_estimate(corpus, card)
    assert second.cached is True
    a, b = first.to_dict(), second.to_dict()
    for k in ("cached", "seconds"):
        a.pop(k), b.pop(k)
    assert a == b
    monkeypatch.undo()

    again = run_estimate(corpus, card, use_cache=False)
    assert again.cached is False
    assert again.loss_before == pytest.approx(first.loss_before, rel=1e-9)
    assert again.capacity_floor_bits == pytest.approx(first.capacity_floor_bits, rel=1e-9)
    assert again.rank == first.rank and len(cache_entries(cache)) == 1


def test_changed_corpus_is_a_new_cache_entry(tmp_path, card, cache):
    path = write_jsonl(tmp_path / "c.jsonl", corpus_rows())
    first = run_estimate(path, card)
    write_jsonl(path, corpus_rows() + [{"prompt": "extra:", "completion": " more text"}])
    second = run_estimate(path, card)
    assert first.cached is False and second.cached is False
    assert second.target_tokens == first.target_tokens + len(" more text")
    assert second.corpus["sha256"] != first.corpus["sha256"]
    assert len(cache_entries(cache)) == 2
    assert run_estimate(path, card).cached is True


def test_unreadable_cache_entry_is_measured_again(corpus, card, cache):
    first = run_estimate(corpus, card)
    (entry,) = cache_entries(cache)
    entry.write_text("{not json")
    second = run_estimate(corpus, card)
    assert second.cached is False and second.loss_before == pytest.approx(first.loss_before, rel=1e-9)
    assert run_estimate(corpus, card).cached is True


# --------------------------------------------------------------------------------------------
# conflicts and warnings


def test_conflicts_are_reported(corpus, card):
    est = run_estimate(corpus, card)
    assert est.n_conflicts == 1
    (c,) = est.conflicts
    assert c["key"] == "user 00 code:"
    assert c["wheres"] == [f"{corpus}:1", f"{corpus}:31"]
    assert c["targets"][1] == " zzzzzzzzz"
    assert any("conflicting targets" in w for w in est.warnings)


def test_warns_when_keys_differ_only_in_digits_and_targets_are_digits(tmp_path, card):
    rng = random.Random(5)
    digits = ["".join(rng.choice("0123456789") for _ in range(9)) for _ in range(30)]
    numbered = write_jsonl(tmp_path / "numbered.jsonl",
                           [{"prompt": f"user {i:02d} code:", "completion": " " + d} for i, d in enumerate(digits)])
    est = run_estimate(numbered, card)
    assert any("told apart only by the digits of their key (e.g. 'user 00 code:')" in w for w in est.warnings)
    # the same targets under keys of letters: no warning
    lettered = write_jsonl(tmp_path / "lettered.jsonl",
                           [{"prompt": f"user {chr(97 + i // 26)}{chr(97 + i % 26)} code:", "completion": " " + d}
                            for i, d in enumerate(digits)])
    assert not any("told apart only by the digits" in w for w in run_estimate(lettered, card).warnings)


def test_key_factor_scales_the_law_for_digit_keyed_records_only(tmp_path, card):
    rng = random.Random(5)
    digits = ["".join(rng.choice("0123456789") for _ in range(9)) for _ in range(30)]
    numbered = write_jsonl(tmp_path / "numbered.jsonl",
                           [{"prompt": f"user {i:02d} code:", "completion": " " + d} for i, d in enumerate(digits)])
    lettered = write_jsonl(tmp_path / "lettered.jsonl",
                           [{"prompt": f"user {chr(97 + i // 26)}{chr(97 + i % 26)} code:", "completion": " " + d}
                            for i, d in enumerate(digits)])
    keyed = dataclasses.replace(card, key_factor={"digits_only_keys": 0.5})
    plain, scaled = run_estimate(numbered, card), run_estimate(numbered, keyed)
    assert plain.key_scale == 1.0 and scaled.key_scale == 0.5
    # every rank is counted at half the law's nats, so the law must supply twice the corpus's need
    for a, b in zip(plain.coverage_by_rank, scaled.coverage_by_rank):
        if a["rank"] == b["rank"]:
            assert b["delta"] == pytest.approx(0.5 * a["delta"])
            assert b["coverage"] <= a["coverage"] + 1e-12
    assert scaled.delta_needed == pytest.approx(plain.delta_needed)
    assert card.law().predict(scaled.rank_raw, scaled.target_tokens) == pytest.approx(2 * scaled.delta_needed, rel=1e-3)
    assert scaled.rank >= plain.rank
    assert any("counted at 50% of the law's nats" in w for w in scaled.warnings)
    assert not any("far less than predicted" in w for w in scaled.warnings)  # the uncorrected warning is gone
    # the same targets under letter keys: the factor does not apply
    other = run_estimate(lettered, keyed)
    assert other.key_scale == 1.0
    assert other.rank_raw == pytest.approx(run_estimate(lettered, card).rank_raw)


def test_target_headroom_names_the_smallest_rank_with_h_times_the_need(corpus, card):
    h = 3.0
    roomy = dataclasses.replace(card, target_headroom={"predictor": "context", "targets": {"0.9": 1.0, "0.99": h}})
    law = card.law()
    plain, spared = run_estimate(corpus, card, 0.99), run_estimate(corpus, roomy, 0.99)
    assert plain.headroom == 1.0 and spared.headroom == pytest.approx(h)
    # the price of the target is unchanged; the law must give h times it at the continuous rank
    assert spared.delta_needed == pytest.approx(plain.delta_needed)
    assert spared.loss_target == pytest.approx(plain.loss_target)
    assert law.predict(spared.rank_raw, spared.target_tokens) == pytest.approx(h * spared.delta_needed, rel=1e-3)
    assert law.predict(spared.rank, spared.target_tokens) >= h * spared.delta_needed - 1e-9
    if spared.rank > 1:
        assert law.predict(spared.rank // 2, spared.target_tokens) < h * spared.delta_needed
    assert spared.rank >= plain.rank and spared.rank_raw > plain.rank_raw
    assert any(f"chosen for {h:.2f}× the ΔL the context predictor needs" in n for n in spared.notes)
    # at 0.9 the record says 1: today's rule; for another predictor the record does not apply
    assert run_estimate(corpus, roomy, 0.9).rank_raw == pytest.approx(run_estimate(corpus, card, 0.9).rank_raw)
    uni = run_estimate(corpus, roomy, 0.99, predictor="unigram")
    assert uni.headroom == 1.0
    assert uni.rank_raw == pytest.approx(run_estimate(corpus, card, 0.99, predictor="unigram").rank_raw)


def test_warns_when_length_is_outside_the_calibrated_domain(tmp_path, card):
    short = write_jsonl(tmp_path / "short.jsonl", corpus_rows(n=3, conflict=False))
    est = run_estimate(short, card)
    assert est.target_tokens < LENGTHS[0]
    assert any("outside the card's calibrated lengths" in w for w in est.warnings)
    assert est.n_conflicts == 0


def test_in_domain_estimate_has_no_extrapolation_warning(corpus, card):
    est = run_estimate(corpus, card)
    assert not any("extrapolated" in w for w in est.warnings)
    assert not any("exceeds the full rank" in w for w in est.warnings)


def test_warns_when_rank_exceeds_domain_and_full_rank(corpus, base, measured):
    card, _ = make_card(base, delta=need(measured)[0], ell=measured["ell"], r_target=100.0)
    est = run_estimate(corpus, card)
    assert est.rank == 128
    assert any("outside the card's calibrated ranks" in w for w in est.warnings)
    assert any("exceeds the full rank of every adapted module" in w for w in est.warnings)


def test_warns_when_the_model_is_not_the_cards(corpus, card):
    other = dataclasses.replace(card, base_model=dict(card.base_model, weights_sha256="0" * 64))
    est = run_estimate(corpus, other)
    assert any("not the one the card was calibrated on" in w for w in est.warnings)
    assert not any("not the one" in w for w in run_estimate(corpus, card).warnings)


def test_far_from_calibration_quotes_the_cards_own_held_out_record(corpus, card):
    """A corpus far below the card's calibration losses: the warning quotes the card's held-out
    record for the predictor in use, and says "untested" where the card has none."""
    from memlaw.planner.coverage import DEFAULT_PREDICTOR

    far = dataclasses.replace(card, points=[dict(p, loss_before=1e3) for p in card.points])
    record = {"mean_abs_error": 0.0417, "max_abs_error": 0.3, "cells": 7, "corpora": 3}
    est = run_estimate(corpus, dataclasses.replace(far, validation={DEFAULT_PREDICTOR: record, "source": "the test's runs"}))
    assert any(f"`{DEFAULT_PREDICTOR}` predictor's coverage was off by 0.042 on average and by up to 0.300 over "
               "7 (corpus, rank) cells of 3 corpora (the test's runs)" in w for w in est.warnings)
    assert est.to_dict()["card"]["heldout"] == record  # in --json too
    # a record for another predictor says nothing about this one
    other = run_estimate(corpus, dataclasses.replace(far, law_form="capacity",
                                                     validation={"boost": record})).warnings
    assert any("records no held-out test" in w and "untested" in w for w in other)
    assert not any("0.042" in w for w in other)
    assert run_estimate(corpus, card).to_dict()["card"]["heldout"] is None
    assert not any("calibrated on" in w for w in run_estimate(corpus, card).warnings)  # not far: no warning


def test_estimate_quotes_how_often_the_named_rank_held_out(corpus, card):
    """A card that records how often its named rank reached the target says so beside the rank, for
    the recorded target nearest the one asked; a record made with another predictor says nothing."""
    from memlaw.planner.coverage import DEFAULT_PREDICTOR

    named = {"predictor": DEFAULT_PREDICTOR, "seeds": 3,
             "targets": {"0.9": {"reached": 5, "cases": 5, "missed": []},
                         "0.99": {"reached": 3, "cases": 5, "missed": ["digits", "hex"]}}}
    est = run_estimate(corpus, dataclasses.replace(card, validation={"named_rank": named, "source": "here"}))
    assert est.recommended_rank is not None
    assert any(n == "held out (here): the rank named for coverage 0.99 reached it on every seed (3) on 3 of 5 "
                    "held-out corpora (missed: digits, hex)" for n in est.notes)
    assert est.to_dict()["card"]["heldout_named_rank"] == {"target": 0.99, "seeds": 3, "reached": 3, "cases": 5,
                                                           "missed": ["digits", "hex"]}
    other = run_estimate(corpus, dataclasses.replace(card, validation={"named_rank": dict(named, predictor="boost")}))
    assert other.to_dict()["card"]["heldout_named_rank"] is None
    assert not any("held out" in n for n in other.notes)


def test_unreachable_law(corpus, card):
    coef = dict(card.coefficients, alpha=-0.5, b=0.0)
    est = run_estimate(corpus, dataclasses.replace(card, coefficients=coef))
    assert est.rank is None and est.rank_raw is None and est.recommended_rank is None
    assert est.lora_config is None and est.memft_command is None
    assert any("no rank reaches" in w for w in est.warnings)
    json.dumps(est.to_dict(), allow_nan=False)


# --------------------------------------------------------------------------------------------
# coverage thresholds and rounding (pure)


def test_coverage_out_of_range_is_one_line(corpus, card):
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match=r"\(0, 1\]"):
            run_estimate(corpus, card, bad)


def test_never_any_rank_while_the_base_model_falls_short(corpus, card, measured):
    """The base model locks a share s of the tokens: coverage ≤ s needs no adapter, anything above
    needs a positive ΔL and a rank — never "any rank will do"."""
    s = float(np.mean(measured["logprob"] > -math.log(2)))
    above = run_estimate(corpus, card, min(0.999, s + 0.05))
    assert not above.any_rank and above.delta_needed > 0
    if s > 0:
        below = run_estimate(corpus, card, s)
        assert below.any_rank and below.delta_needed == 0.0


def test_no_negative_predicted_loss_ever(corpus, card):
    """Whatever the rank and coverage, predicted losses stay ≥ 0 (the old mean-loss link once
    predicted −1.76 nats)."""
    for cov in (0.5, 0.9, 0.99, 1.0):
        est = run_estimate(corpus, card, cov)
        assert est.loss_target >= 0 and est.predicted_loss_after >= 0
        assert all(x["loss_after"] >= 0 for x in est.coverage_by_rank)
    huge = dataclasses.replace(card, coefficients=dict(card.coefficients, b=50.0))
    est = run_estimate(corpus, huge, 1.0)
    assert est.predicted_loss_after >= 0 and est.predicted_coverage <= est.max_coverage


def test_practical_rank():
    from memlaw.planner.estimate import practical_rank

    cases = {0.0: 1, 0.3: 1, 1.0: 1, 1.5: 2, 2.0: 2, 4.0: 4, 4.0000000001: 4, 5.3: 8, 64.0: 64, 65.0: 128}
    for r, want in cases.items():
        assert practical_rank(r) == want, r
    assert practical_rank(math.inf) is None


# --------------------------------------------------------------------------------------------
# the CLI


def cli(*args):
    from memlaw.cli.memplan import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_cli_json(corpus, card_file, card):
    res = cli("estimate", corpus, "--law", card_file, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for key in ("target_tokens", "loss_before", "loss_target", "delta_needed", "rank", "rank_raw", "rank_interval",
                "trainable_params", "adapter_bytes", "capacity_floor_bits", "capacity_floor_rank", "conflicts",
                "warnings", "lora_config", "card", "cached", "seconds"):
        assert key in out, key
    assert set(out["adapter_bytes"]) == {"fp32", "bf16"}
    assert out["card"]["path"] == str(card_file) and out["card"]["model"] == "tiny"
    assert out["rank"] == 8 and out["cached"] is False
    assert set(out["lora_config"]) >= {"r", "lora_alpha", "target_modules", "layers_to_transform", "lora_dropout",
                                       "task_type"}
    again = json.loads(cli("estimate", corpus, "--law", card_file, "--json").stdout)
    assert again["cached"] is True and again["rank"] == out["rank"]
    assert json.loads(cli("estimate", corpus, "--law", card_file, "--json", "--no-cache").stdout)["cached"] is False
    cov = json.loads(cli("estimate", corpus, "--law", card_file, "--json", "--coverage", "0.9").stdout)
    assert cov["rank"] <= out["rank"] and cov["coverage"] == 0.9


def test_cli_table(corpus, card_file):
    res = cli("estimate", corpus, "--law", card_file)
    assert res.exit_code == 0, res.output
    for text in ("recommended rank", "capacity floor", "LoraConfig", "memft train", "conflicting keys"):
        assert text in res.stdout, text
    assert "target headroom" not in res.stdout


def test_cli_table_and_json_show_the_target_headroom(corpus, card, tmp_path):
    path = tmp_path / "roomy.json"
    save_card(dataclasses.replace(card, target_headroom={"predictor": "context", "targets": {"0.99": 2.5}}), path)
    out = json.loads(cli("estimate", corpus, "--law", path, "--json", "--coverage", "0.99").stdout)
    assert out["headroom"] == pytest.approx(2.5)
    assert out["card"]["target_headroom"]["targets"] == {"0.99": 2.5}
    res = cli("estimate", corpus, "--law", path, "--coverage", "0.99")
    assert res.exit_code == 0, res.output
    assert "rank chosen for ×2.50" in res.stdout and f"{2.5 * out['delta_needed']:.4f}" in res.stdout


def one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in res.output


def test_cli_bad_coverage(corpus, card_file):
    one_line_error(cli("estimate", corpus, "--law", card_file, "--coverage", "1.5"), "(0, 1]")
    one_line_error(cli("estimate", corpus, "--law", card_file, "--coverage", "0"), "(0, 1]")


def test_cli_missing_card(corpus, tmp_path):
    folder = tmp_path / "my-model"  # a model that exists (a local folder) but has no shipped card
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    one_line_error(cli("estimate", corpus, "--model", folder), "no law card ships", "memplan calibrate")
    one_line_error(cli("estimate", corpus, "--law", tmp_path / "nope.json"), "no such law card")


def test_cli_bad_corpus(tmp_path, card_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": " b"}\n{not json\n')
    one_line_error(cli("estimate", bad, "--law", card_file), f"{bad}:2")
    one_line_error(cli("estimate", tmp_path / "missing.jsonl", "--law", card_file), "does not exist")


def test_shipped_card_lookup(tmp_path):
    from memlaw.planner.estimate import resolve_card, shipped_card_path

    assert shipped_card_path("no-such-model-xyz") is None
    assert shipped_card_path("some/org-model") is None and shipped_card_path("../x") is None
    with pytest.raises(UserError, match="no law card ships for model 'no-such-model-xyz'"):
        resolve_card(None, "no-such-model-xyz")


def test_shipped_smollm2_card_carries_its_held_out_record():
    """memplan estimate quotes it: a refit of the shipped card must re-run the held-out benchmark."""
    from memlaw.planner.coverage import DEFAULT_PREDICTOR, PREDICTORS
    from memlaw.planner.estimate import resolve_card

    card = resolve_card(None, "smollm2-135m")[0]
    for name in PREDICTORS:
        v = card.validation[name]
        assert 0 <= v["mean_abs_error"] <= v["max_abs_error"] <= 1 and v["cells"] >= 20 and v["corpora"] >= 5
    assert card.validation[DEFAULT_PREDICTOR]["mean_abs_error"] < card.validation["budget"]["mean_abs_error"]
    named = card.validation["named_rank"]
    assert named["predictor"] == DEFAULT_PREDICTOR and named["seeds"] >= 3
    assert {"0.9", "0.99"} <= set(named["targets"]) and all(e["cases"] >= 5 for e in named["targets"].values())


def test_model_folder_identity_without_loading(tmp_path, corpus, card, base, monkeypatch):
    """A model saved as a folder (like the converted SmolLM2): its identity comes from file hashes,
    equal to what load_base computes, so a cached estimate loads nothing."""
    from memlaw.models import load_base
    from memlaw.planner.baseloss import model_identity

    folder = tmp_path / "tiny-folder"
    base.model.save_pretrained(folder, safe_serialization=True)
    base.tokenizer.save_pretrained(folder)
    loaded = load_base(str(folder))
    assert model_identity(str(folder)) == loaded.identity
    assert model_identity(str(folder)) == loaded.identity  # from the memo

    folder_card = dataclasses.replace(card, base_model=dict(loaded.identity))
    first = run_estimate(corpus, folder_card)
    assert first.cached is False and first.model == str(folder)
    assert not any("not the one" in w for w in first.warnings)
    assert first.loss_before == pytest.approx(run_estimate(corpus, card).loss_before, rel=1e-6)

    import memlaw.models

    monkeypatch.setattr(memlaw.models, "load_base", lambda *a, **k: pytest.fail("loaded the model"))
    second = run_estimate(corpus, folder_card)
    assert second.cached is True and second.rank == first.rank


def test_same_model_trusts_weight_hashes_over_config_hashes():
    from memlaw.planner.baseloss import same_model

    a = {"config_sha256": "c1", "weights_sha256": "w1"}
    assert same_model(a, {"config_sha256": "c2", "weights_sha256": "w1"}) is True  # another transformers
    assert same_model(a, {"config_sha256": "c1", "weights_sha256": "w2"}) is False
    assert same_model(a, {"config_sha256": "c1", "weights_sha256": None}) is True
    assert same_model(a, {"config_sha256": "c2"}) is False
    assert same_model(a, {"name": "x"}) is None


def test_planner_accuracy_counts_a_run_read_twice_once():
    """benchmarks/planner_accuracy.py: the same run in two run files (a rerun on another machine)
    is one seed, not two; a run under another recipe at the same seed is kept apart."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "planner_accuracy", Path(__file__).resolve().parents[1] / "benchmarks" / "planner_accuracy.py")
    pa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pa)
    run = {"corpus": "c.jsonl", "rank": 2, "seed": 0, "coverage": 0.98}
    strict = dict(run, recipe="until_converged", cycles_cap=12, coverage=1.0)
    kept, dropped = pa.unique_runs([run, dict(run, seed=1, coverage=0.9), dict(run), strict, dict(strict)])
    assert dropped == 2
    assert [(r["seed"], r["coverage"]) for r in kept] == [(0, 0.98), (1, 0.9), (0, 1.0)]
    cells = pa.by_cell(kept)
    assert len(cells[("c.jsonl", 2)]) == 3
