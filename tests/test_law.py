"""The Parametric Memory Law math: fit, censoring, bootstrap, inversion, coverage thresholds."""

import math

import numpy as np
import pytest

from memlaw.law import Law, FitError, bootstrap, coverage_loss_thresholds, fit, rank_for_delta

TRUE = Law(C=2.0, alpha=0.4, beta=0.3, b=0.05)


def grid(ranks, lengths):
    R, L = np.meshgrid(ranks, lengths, indexing="ij")
    return R.ravel().astype(float), L.ravel().astype(float)


def noisy(law, r, l, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    return law.predict(r, l) * (1 + noise * rng.standard_normal(r.size))


def test_law_and_card_are_torch_free():
    import memlaw.card
    import memlaw.law

    for mod in (memlaw.law, memlaw.card):
        src = open(mod.__file__).read()
        assert "import torch" not in src and "from torch" not in src, mod.__name__


def test_predict_vectorised_and_dict_roundtrip():
    assert TRUE.predict(1, 1) == pytest.approx(2.05)
    out = TRUE.predict([1, 16], [1, 1])
    assert out.shape == (2,) and out[1] == pytest.approx(2.0 * 16**0.4 + 0.05)
    assert Law.from_dict(TRUE.to_dict()) == TRUE
    assert set(TRUE.to_dict()) == {"C", "alpha", "beta", "b"}


def test_fit_recovers_known_coefficients():
    r, l = grid([4, 16, 64, 256], [256, 1024, 4096])  # 4 ranks × 3 lengths
    y = noisy(TRUE, r, l)
    res = fit(r, l, y)
    law = res.law
    assert law.C == pytest.approx(2.0, rel=0.15)
    assert law.alpha == pytest.approx(0.4, abs=0.05)
    assert law.beta == pytest.approx(0.3, abs=0.04)
    assert law.b == pytest.approx(0.05, abs=0.1)
    assert res.r2 > 0.98
    assert res.n_points == 12 and res.n_saturated == 0
    np.testing.assert_allclose(res.residuals, y - law.predict(r, l))


def test_fit_exact_data_is_exact():
    r, l = grid([4, 16, 64, 256], [256, 1024, 4096])
    res = fit(r, l, TRUE.predict(r, l))
    np.testing.assert_allclose(res.law.as_array(), TRUE.as_array(), rtol=1e-4, atol=1e-5)
    assert res.r2 == pytest.approx(1.0, abs=1e-9)


def test_bootstrap_intervals_contain_truth_and_are_deterministic():
    r, l = grid([4, 16, 64, 256], [256, 1024, 4096])
    y = noisy(TRUE, r, l)
    bs = bootstrap(r, l, y, n=200, seed=0)
    assert bs.samples.shape[1] == 4 and 150 <= len(bs.samples) <= 200
    iv = bs.intervals(0.9)
    for name, true in TRUE.to_dict().items():
        lo, hi = iv[name]
        assert lo <= true <= hi, (name, lo, hi)
        assert hi - lo < {"C": 2.0, "alpha": 0.3, "beta": 0.2, "b": 0.5}[name]  # informative, not vacuous
    again = bootstrap(r, l, y, n=200, seed=0)
    np.testing.assert_array_equal(bs.samples, again.samples)
    assert not np.array_equal(bootstrap(r, l, y, n=50, seed=1).samples, bs.samples[:50])


def test_saturated_points_are_censored():
    # True ΔL exceeds L_before at the big ranks: those adapters memorise everything and their
    # observed ΔL is clamped at L_before.
    r, l = grid([2, 8, 32, 128, 512], [256, 1024, 4096])
    L_before = 2.0
    y = noisy(TRUE, r, l, seed=1)
    sat = y >= L_before
    y = np.minimum(y, L_before)
    assert 2 <= sat.sum() <= 6

    censored = fit(r, l, y, saturated=sat)
    naive = fit(r, l, y)
    assert censored.law.alpha == pytest.approx(0.4, abs=0.05)
    assert abs(censored.law.alpha - 0.4) < abs(naive.law.alpha - 0.4)
    assert censored.n_saturated == sat.sum()
    # R² only over the unsaturated points, which the censored fit explains well
    assert censored.r2 > 0.98
    # a censored point is not violated: the law predicts at least the lower bound (up to noise)
    assert np.all(censored.law.predict(r[sat], l[sat]) >= y[sat] - 0.05)


def test_fit_rejects_undeterminable_points():
    with pytest.raises(FitError, match="rank"):
        fit([8, 8, 8, 8], [100, 200, 400, 800], [1, 0.8, 0.6, 0.5])
    with pytest.raises(FitError, match="at least 4"):
        fit([1, 2, 4], [100, 200, 400], [0.1, 0.2, 0.3])
    with pytest.raises(FitError, match="uncensored"):
        fit([1, 2, 4, 8], [100, 200, 100, 200], [1, 1, 1, 1], saturated=[True, True, True, False])
    with pytest.raises(FitError, match="finite"):
        fit([1, 2, 4, 8], [100, 200, 100, 200], [1, float("nan"), 1, 1])


def test_bootstrap_is_fast():
    import time

    r, l = grid([4, 16, 64, 256], [256, 1024, 4096])
    y = noisy(TRUE, r, l)
    t = time.perf_counter()
    bootstrap(r, l, y, n=200, seed=0)
    assert time.perf_counter() - t < 3.0


def test_rank_for_delta_inverts_predict():
    for length in (100, 1000, 50_000):
        for rank in (1, 7.5, 64, 512):
            need = TRUE.predict(rank, length)
            assert rank_for_delta(TRUE, length, need) == pytest.approx(rank, rel=1e-9)


def test_rank_for_delta_edges():
    # the offset b alone meets the need: any rank
    assert rank_for_delta(TRUE, 1000, 0.05) == 0.0
    assert rank_for_delta(TRUE, 1000, -1.0) == 0.0
    # α <= 0: rank does not help, so a need above the r → ∞ limit is unreachable
    flat = Law(C=1.0, alpha=0.0, beta=0.5, b=0.1)  # constant 1/sqrt(ℓ) + 0.1
    assert rank_for_delta(flat, 100, 0.15) == 0.0
    assert rank_for_delta(flat, 100, 0.25) == math.inf
    shrinking = Law(C=1.0, alpha=-0.2, beta=0.0, b=0.1)
    assert rank_for_delta(shrinking, 100, 0.5) == math.inf
    # astronomically large answers do not overflow into an exception
    tiny_alpha = Law(C=1e-3, alpha=1e-6, beta=0.0, b=0.0)
    assert rank_for_delta(tiny_alpha, 10, 1.0) == math.inf


def test_coverage_loss_thresholds_conservative():
    loss = [0.05, 0.2, 0.3, 0.5, 0.9, 1.4]
    cov = [1.0, 0.995, 0.97, 0.95, 0.85, 0.99]  # last point: high coverage at high loss (an outlier)
    t = coverage_loss_thresholds(loss, cov)
    assert set(t) == {"0.9", "0.99", "1.0"}
    # 0.9: the first miss is at 0.9 → just below 0.9, ignoring the lucky point at 1.4
    assert t["0.9"] < 0.9 and t["0.9"] == pytest.approx(0.9)
    # 0.99: first miss at 0.3
    assert t["0.99"] < 0.3 and t["0.99"] == pytest.approx(0.3)
    # 1.0: first miss at 0.2
    assert t["1.0"] < 0.2 and t["1.0"] == pytest.approx(0.2)

    # nobody missed: the largest observed loss; nobody reached: None
    t = coverage_loss_thresholds([0.1, 0.4, 0.2], [0.95, 0.92, 0.999], targets=(0.9, 1.0))
    assert t == {"0.9": 0.4, "1.0": None}
    # non-finite points are ignored
    t = coverage_loss_thresholds([0.1, float("nan")], [1.0, 0.0], targets=(1.0,))
    assert t == {"1.0": 0.1}


# ---------------------------------------------------------------------------------------------
# the capacity form: ΔL·ℓ = C·r^α


CAPACITY = Law(C=650.0, alpha=1.37, beta=1.0, b=0.0)


def test_capacity_fit_recovers_the_nats_per_rank():
    r, l = grid([1, 2, 4, 8, 16], [64, 256, 1024, 4096])
    y = noisy(CAPACITY, r, l, noise=0.05, seed=3)
    res = fit(r, l, y, form="capacity")
    assert res.law.beta == 1.0 and res.law.b == 0.0
    assert res.law.alpha == pytest.approx(1.37, abs=0.05)
    assert res.law.C == pytest.approx(650.0, rel=0.1)
    # ΔL·ℓ does not depend on ℓ: the prediction at a length never swept scales as 1/ℓ
    assert res.law.predict(4, 10_000) * 10_000 == pytest.approx(res.law.predict(4, 100) * 100)


def test_capacity_fit_takes_censored_points_as_lower_bounds_and_skips_nothing_stored():
    r, l = grid([1, 2, 4, 8], [256, 1024, 4096])
    y = CAPACITY.predict(r, l)
    cens = np.zeros(r.size, bool)
    # a censored point far *below* the law (a run the data stopped, e.g. every token locked) pulls nothing down
    y_low = y.copy()
    y_low[0] *= 0.2
    cens[0] = True
    assert fit(r, l, y_low, cens, form="capacity").law.C == pytest.approx(650.0, rel=1e-6)
    # as an observation it would
    assert fit(r, l, y_low, form="capacity").law.C < 600.0
    # ΔL ≤ 0 (nothing stored beyond the source's entropy) has no logarithm: left out, not an error
    y_zero = y.copy()
    y_zero[1] = -0.2
    assert fit(r, l, y_zero, form="capacity").law.alpha == pytest.approx(1.37, abs=1e-6)
    with pytest.raises(FitError, match="2 or more ranks"):
        fit([1, 1, 1], [64, 256, 1024], [1.0, 0.5, 0.2], form="capacity")
    with pytest.raises(FitError, match="form"):
        fit(r, l, y, form="cubic")


def test_capacity_bootstrap_brackets_the_truth():
    r, l = grid([1, 2, 4, 8, 16], [64, 256, 1024, 4096])
    y = noisy(CAPACITY, r, l, noise=0.1, seed=5)
    boot = bootstrap(r, l, y, n=100, seed=0, form="capacity")
    iv = boot.intervals(0.9)
    assert iv["alpha"][0] < 1.37 < iv["alpha"][1] and iv["C"][0] < 650.0 < iv["C"][1]
    assert iv["beta"] == [1.0, 1.0] and iv["b"] == [0.0, 0.0]
    # the inversion is exact: the rank whose C·r^α nats cover ℓ·ΔL
    assert rank_for_delta(CAPACITY, 1000, CAPACITY.predict(8, 1000)) == pytest.approx(8.0)
