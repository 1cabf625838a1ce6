"""The coverage predictors (memlaw.planner.coverage) on synthetic per-token loss distributions, and
the structural ceiling (memlaw.corpus.coverage_ceiling) on hand-built token sequences."""

import math

import numpy as np
import pytest

from memlaw.corpus import Encoded, coverage_ceiling
from memlaw.planner.coverage import LossProfile, deficit, delta_for_coverage, predict

LN2 = math.log(2)


def test_deficit_is_the_log_odds_against_the_target():
    l = np.array([1e-6, 0.1, LN2, 1.0, 5.0, 40.0, 800.0])
    x = deficit(l)
    p = np.exp(-l[:-1])
    assert np.allclose(x[:-1], np.log((1 - p) / p), rtol=1e-6, atol=1e-9)
    assert abs(x[2]) < 1e-12  # p = 0.5 exactly at ln 2
    assert x[-1] == pytest.approx(800.0)  # huge losses: x ≈ l, no overflow


def test_boost_on_a_two_point_distribution_is_the_hand_computation():
    """Half the tokens at loss 3, half at loss 0.2: a boost m locks the hard half once m > ln(e³−1)."""
    l = np.array([3.0] * 500 + [0.2] * 500)
    prof = LossProfile.from_losses(l)
    assert prof.mean_loss(0) == pytest.approx(1.6, abs=0.01)
    assert prof.coverage(0) == 0.5
    x_hard = math.log(math.expm1(3.0))
    assert prof.coverage(x_hard - 0.05) == 0.5 and prof.coverage(x_hard + 0.05) == 1.0
    # the mean after a boost m is ½ ln(1 + e^(x_hard − m)) + ½ ln(1 + e^(x_easy − m))
    m = 2.0
    want = 0.5 * math.log1p(math.exp(x_hard - m)) + 0.5 * math.log1p(math.exp(math.log(math.expm1(0.2)) - m))
    assert prof.mean_loss(m) == pytest.approx(want, abs=0.01)
    # ΔL for full coverage: the boost just above the hard tokens' deficit
    d = delta_for_coverage(prof, 1.0, "boost")
    assert d == pytest.approx(prof.mean_loss(0) - prof.mean_loss(x_hard + 0.01), abs=0.02)
    assert predict(prof, d + 1e-6, "boost")[0] == 1.0 and predict(prof, d - 0.05, "boost")[0] == 0.5


def test_a_mean_cannot_say_coverage_but_the_distribution_can():
    """Two corpora with the same mean base loss: one uniform, one with a hard tail. The same ΔL
    locks all of the first and not the tail of the second; the old mean-loss link said the same for
    both."""
    uniform = LossProfile.from_losses(np.full(1000, 2.0))
    tail = LossProfile.from_losses(np.concatenate([np.full(900, 1.0), np.full(100, 11.0)]))
    assert uniform.mean_loss(0) == pytest.approx(tail.mean_loss(0), abs=0.02)
    cov_u, _ = predict(uniform, 1.9, "boost")
    cov_t, _ = predict(tail, 1.9, "boost")
    assert cov_u == 1.0 and 0.85 < cov_t < 0.95
    assert delta_for_coverage(tail, 1.0, "boost") > delta_for_coverage(uniform, 1.0, "boost")
    # the budget view (the default): coverage 0.9 costs the tail corpus only its 900 cheap tokens
    # (0.31 nats each: 0.28 a token on average), the uniform one 0.9 × 1.31 = 1.18 nats a token
    assert delta_for_coverage(tail, 0.9, "budget") < 0.3 < 1.1 < delta_for_coverage(uniform, 0.9, "budget")


def test_predicted_loss_is_never_negative_and_coverage_is_monotone():
    rng = np.random.default_rng(0)
    prof = LossProfile.from_losses(rng.exponential(2.5, 4000))
    covs, means = [], []
    for d in np.linspace(0, 10, 41):  # past the base loss too: ΔL can exceed it
        for pred in ("boost", "budget", "unigram", "context"):
            c, m = predict(prof, d, pred)
            assert m >= 0 and 0 <= c <= 1
        c, m = predict(prof, d)
        covs.append(c)
        means.append(m)
    assert covs == sorted(covs) and means == sorted(means, reverse=True)
    assert covs[-1] == 1.0 and means[-1] == 0.0


def test_budget_predictor_spends_cheapest_first():
    """Costs max(0, l − ln 2): 100 tokens at loss 1 (0.307 nats each), 100 at loss 4 (3.307 each)."""
    prof = LossProfile.from_losses(np.array([1.0] * 100 + [4.0] * 100))
    c1 = 1.0 - LN2
    assert prof.budget_coverage(0.0) == 0.0
    # half the budget the cheap tokens need, per token over the whole corpus: 100·c1/2 / 200
    assert prof.budget_coverage(100 * c1 / 2 / 200) == pytest.approx(0.25, abs=0.01)
    assert prof.budget_coverage(100 * c1 / 200) == pytest.approx(0.5, abs=0.01)
    assert delta_for_coverage(prof, 0.5, "budget") == pytest.approx(100 * c1 / 200, rel=0.02)
    assert delta_for_coverage(prof, 1.0, "budget") == pytest.approx(100 * (c1 + 4 - LN2) / 200, rel=0.02)


def test_unigram_code_on_a_small_vocabulary_is_the_hand_computation():
    """400 tokens drawn evenly from 4 types the base model finds hard (loss 6, cheapest occurrence 5):
    the corpus's own code names the 4 types once (4 × 5 = 20 nats), then a token costs ln 4 − ln 2."""
    ids = np.tile(np.arange(4), 100)
    losses = np.full(400, 6.0)
    losses[:4] = 5.0
    prof = LossProfile.from_losses(losses, ids)
    assert prof.unigram_overhead == pytest.approx(20.0)
    per_token = math.log(4) - LN2  # min(l, u) − ln 2 with u = ln 4 for every token
    budget = 20.0 + 200 * per_token  # the overhead, then half of the tokens
    assert prof.unigram_coverage(budget / 400) == pytest.approx(0.5, abs=0.01)
    assert prof.budget_coverage(budget / 400) == pytest.approx(budget / (6.0 - LN2) / 400, abs=0.01)
    assert delta_for_coverage(prof, 1.0, "unigram") == pytest.approx((20.0 + 400 * per_token) / 400, rel=0.02)
    # a budget below the overhead buys nothing through the second code: the first one's answer stands
    assert prof.unigram_coverage(10.0 / 400) == prof.budget_coverage(10.0 / 400)


def test_unigram_code_cannot_help_a_corpus_of_distinct_tokens():
    """Every token its own type: u = ln n > l, the overhead is the whole base cost: the plain budget."""
    rng = np.random.default_rng(3)
    losses = rng.exponential(2.0, 300)
    prof = LossProfile.from_losses(losses, np.arange(300))
    for d in (0.1, 0.5, 1.0, 3.0):
        assert prof.unigram_coverage(d) == prof.budget_coverage(d)
    assert delta_for_coverage(prof, 0.9, "unigram") == delta_for_coverage(prof, 0.9, "budget")
    # without ids the profile carries no unigram code, and the predictor falls back to the budget
    bare = LossProfile.from_losses(losses)
    assert bare.unigram_counts is None and predict(bare, 0.5, "unigram") == predict(bare, 0.5, "budget")


def test_context_price_on_a_hand_computed_corpus():
    """1,000 tokens of 100 types (10 each), base loss 8, unigram code ln 100, in context loss 1:
    name the types once (100 × 8 nats), then each token costs 1 − CONTEXT_LOCK_LEVEL."""
    from memlaw.planner.coverage import CONTEXT_LOCK_LEVEL

    ids = np.tile(np.arange(100), 10)
    prof = LossProfile.from_losses(np.full(1000, 8.0), ids, np.full(1000, 1.0))
    full = (800.0 + 1000 * (1.0 - CONTEXT_LOCK_LEVEL)) / 1000
    assert delta_for_coverage(prof, 1.0, "context") == pytest.approx(full, rel=0.02)
    assert delta_for_coverage(prof, 1.0, "unigram") == pytest.approx((800 + 1000 * (math.log(100) - LN2)) / 1000, rel=0.02)
    half = (800.0 + 500 * (1.0 - CONTEXT_LOCK_LEVEL)) / 1000
    assert prof.context_coverage(half) == pytest.approx(0.5, abs=0.01)
    assert prof.context_coverage(700.0 / 1000) == prof._budget_coverage(prof.counts, 700.0, CONTEXT_LOCK_LEVEL)
    # in-context losses above the other prices change nothing but the lock level
    same = LossProfile.from_losses(np.full(1000, 8.0), ids, np.full(1000, 20.0))
    assert np.array_equal(same.context_counts, same.unigram_counts)
    # without in-context losses the predictor is unigram's
    bare = LossProfile.from_losses(np.full(1000, 8.0), ids)
    assert bare.context_counts is None and predict(bare, 2.0, "context") == predict(bare, 2.0, "unigram")


def test_ceiling_caps_the_prediction():
    prof = LossProfile.from_losses(np.full(100, 2.0))
    assert predict(prof, 100.0, ceiling=0.93)[0] == 0.93


def test_profile_round_trips_through_json():
    import json

    rng = np.random.default_rng(1)
    prof = LossProfile.from_losses(rng.exponential(2.0, 500), rng.integers(0, 20, 500), rng.exponential(1.0, 500))
    back = LossProfile.from_dict(json.loads(json.dumps(prof.to_dict())))
    assert np.array_equal(back.context_counts, prof.context_counts) and back.context_coverage(0.7) == prof.context_coverage(0.7)
    assert np.array_equal(back.counts, prof.counts) and back.mean_loss(1.0) == prof.mean_loss(1.0)
    assert np.array_equal(back.unigram_counts, prof.unigram_counts)
    assert back.unigram_overhead == prof.unigram_overhead and back.unigram_coverage(0.7) == prof.unigram_coverage(0.7)


# ---------------------------------------------------------------------------------------------
# structural ceilings


def enc(key, target, i):
    return Encoded(key_ids=tuple(key), target_ids=tuple(target), index=i)


def test_text_records_share_their_first_token_context():
    """Ten {"text"} records start from BOS alone with 9 different first tokens (two start with 7):
    only one first token can be locked, so 8 records are capped at their first token; the two that
    share 7 then part at their second token, which caps one more — whatever the rank."""
    firsts = [7, 7, 3, 4, 5, 6, 8, 9, 10, 11]
    records = [enc([1], [f, 50 + i, 60 + i], i) for i, f in enumerate(firsts)]
    c = coverage_ceiling(records)
    assert c.blocked_tokens == 9 and c.blocked_records == 9 and c.shared_contexts == 2
    assert c.max_coverage == pytest.approx(1 - 9 / 30)


def test_conflicting_keys_cap_coverage_at_the_first_differing_token():
    records = [enc([1, 2], [5, 6, 7], 0), enc([1, 2], [5, 6, 9], 1), enc([1, 2], [5, 6, 9], 2),
               enc([1, 3], [5, 6, 7], 3)]  # another key: its own context
    c = coverage_ceiling(records)
    assert c.blocked_tokens == 1 and c.blocked_records == 1  # record 0's third token loses to 9 (2 vs 1)
    assert c.max_coverage == pytest.approx(11 / 12)


def test_distinct_keys_have_no_ceiling_and_duplicates_cost_nothing():
    records = [enc([1, i], [5, 6], i) for i in range(5)] + [enc([1, 0], [5, 6], 5)]  # an exact duplicate
    c = coverage_ceiling(records)
    assert c.blocked_tokens == 0 and c.max_coverage == 1.0


def test_nested_branches_count_once_per_context():
    # same key; targets branch at position 0 (a vs b) and, within the a-branch, at position 1
    records = [enc([1], [10, 20], 0), enc([1], [10, 20], 1), enc([1], [10, 21], 2), enc([1], [11, 22], 3)]
    c = coverage_ceiling(records)
    # position 0: 10 ×3 vs 11 ×1 → 1 blocked; position 1 within 10: 20 ×2 vs 21 ×1 → 1 blocked
    assert c.blocked_tokens == 2 and c.shared_contexts == 2
