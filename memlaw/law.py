"""The Parametric Memory Law: fit, predict, invert, bootstrap.

    ΔL = C · r^α · ℓ^(−β) + b

r is the LoRA rank, ℓ the number of target tokens the adapter must hold, and ΔL = L_before − L_after
the mean per-token loss reduction (nats, target tokens only) after training to convergence.

Two forms (``FORMS``):

* ``pml`` — the paper's four free coefficients;
* ``capacity`` — β = 1, b = 0: ΔL·ℓ = C·r^α, i.e. an adapter of rank r stores a fixed number of
  nats however many tokens they are spread over. Fitted in logs (relative errors), it is what the
  converged sweep measures (docs/results.md §1: the nats stored at ranks 1, 2, 4 are the same
  within 10–30 % from ℓ = 64 to 4,096), and it extrapolates in ℓ by construction instead of by
  a fitted β.

Pure numpy/scipy (no torch), so the planner can use a law card without a deep-learning stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from memlaw.calibration.defaults import LAW_FORMS

NAMES = ("C", "alpha", "beta", "b")
FORMS = LAW_FORMS  # ("pml", "capacity"), defined with the calibration defaults (light to import)

# Bounds on the exponents. They are loose (the paper reports α, β well inside (0, 1)); they only
# stop a degenerate data set from sending the optimiser to absurd powers.
_ALPHA_BOUNDS = (-1.0, 4.0)
_BETA_BOUNDS = (-2.0, 4.0)


class FitError(ValueError):
    """The points cannot determine the law (too few, degenerate, or the optimiser failed)."""


@dataclass(frozen=True)
class Law:
    C: float
    alpha: float
    beta: float
    b: float

    def predict(self, rank, length):
        """ΔL predicted for rank(s) and length(s); numpy broadcasting, returns a float for scalars."""
        r = np.asarray(rank, dtype=float)
        l = np.asarray(length, dtype=float)
        out = self.C * np.power(r, self.alpha) * np.power(l, -self.beta) + self.b
        return float(out) if out.ndim == 0 else out

    def to_dict(self) -> dict:
        return {"C": float(self.C), "alpha": float(self.alpha), "beta": float(self.beta), "b": float(self.b)}

    @classmethod
    def from_dict(cls, d: dict) -> "Law":
        return cls(**{k: float(d[k]) for k in NAMES})

    def as_array(self) -> np.ndarray:
        return np.array([self.C, self.alpha, self.beta, self.b], dtype=float)


@dataclass
class FitResult:
    law: Law
    r2: float  # over the non-saturated points only; nan when it is undefined
    n_points: int  # all points used, saturated included
    n_saturated: int
    residuals: np.ndarray  # observed − predicted, every point (for saturated ones: a lower bound)


# ---------------------------------------------------------------------------------------------
# fitting


def _prepare(ranks, lengths, delta_losses, saturated):
    r = np.asarray(ranks, dtype=float).ravel()
    l = np.asarray(lengths, dtype=float).ravel()
    y = np.asarray(delta_losses, dtype=float).ravel()
    sat = np.zeros(len(y), bool) if saturated is None else np.asarray(saturated, dtype=bool).ravel()
    if not (len(r) == len(l) == len(y) == len(sat)):
        raise FitError(f"ranks, lengths, delta_losses, saturated differ in size: "
                       f"{len(r)}, {len(l)}, {len(y)}, {len(sat)}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(l)) and np.all(np.isfinite(y))):
        raise FitError("ranks, lengths and delta losses must all be finite numbers")
    if np.any(r <= 0) or np.any(l <= 0):
        raise FitError("ranks and lengths must be positive")
    return r, l, y, sat


def _check_identifiable(r, l, sat):
    """Raise FitError unless four parameters can be told apart from these points."""
    if len(r) < 4:
        raise FitError(f"{len(r)} points cannot determine 4 coefficients; need at least 4")
    if len(np.unique(r)) < 2:
        raise FitError("all points share one rank, so α is undetermined; sweep at least 2 ranks")
    if len(np.unique(l)) < 2:
        raise FitError("all points share one length, so β is undetermined; sweep at least 2 lengths")
    if np.count_nonzero(~sat) < 2:
        raise FitError("fewer than 2 uncensored points (converged and not saturated): the others are only "
                       "lower bounds, so the law is undetermined")


class _Problem:
    """Residuals and Jacobian in a centred log parametrisation θ = (k, α, β, b):

        pred = exp(k + α·(log r − m_r) − β·(log ℓ − m_ℓ)) + b,   C = exp(k − α·m_r + β·m_ℓ)

    Fitting k = log of C at the centre of the data keeps C > 0 for free and decouples it from
    α and β (much better conditioned than fitting C itself).
    """

    def __init__(self, r, l, y, sat):
        self.lr, self.ll = np.log(r), np.log(l)
        self.mr, self.ml = float(self.lr.mean()), float(self.ll.mean())
        self.xr, self.xl = self.lr - self.mr, self.ll - self.ml
        self.y, self.sat = y, sat
        scale = float(np.max(np.abs(y))) + 1e-3
        lo = [-np.inf, _ALPHA_BOUNDS[0], _BETA_BOUNDS[0], -10 * scale]
        hi = [np.inf, _ALPHA_BOUNDS[1], _BETA_BOUNDS[1], 10 * scale]
        self.bounds = (np.array(lo), np.array(hi))

    def _power(self, th):
        return np.exp(np.clip(th[0] + th[1] * self.xr - th[2] * self.xl, -700, 700))

    def residuals(self, th):
        res = self._power(th) + th[3] - self.y
        # Censored points: the observation is a lower bound, so only a prediction *below* it is
        # wrong. min(res, 0) is continuous with a continuous square, which least squares handles.
        return np.where(self.sat, np.minimum(res, 0.0), res)

    def jac(self, th):
        t = self._power(th)
        J = np.column_stack([t, t * self.xr, -t * self.xl, np.ones_like(t)])
        if self.sat.any():
            inactive = self.sat & (t + th[3] - self.y > 0)
            J[inactive] = 0.0
        return J

    def to_law(self, th) -> Law:
        return Law(C=float(math.exp(th[0] - th[1] * self.mr + th[2] * self.ml)),
                   alpha=float(th[1]), beta=float(th[2]), b=float(th[3]))

    def from_law(self, law: Law) -> np.ndarray:
        k = math.log(law.C) + law.alpha * self.mr - law.beta * self.ml
        return np.array([k, law.alpha, law.beta, law.b])

    def starts(self):
        """Starting points from a linear regression of log(ΔL − b0) on log r, log ℓ, for a few b0."""
        y = self.y
        free = y[~self.sat]
        ymin, span = float(free.min()), float(y.max() - free.min())
        cands = [0.0, 0.5 * ymin, ymin - 0.1 * span - 1e-3] if ymin > 0 else [ymin - 0.1 * span - 1e-3]
        lo, hi = self.bounds
        for b0 in cands:
            m = y - b0 > 0
            if m.sum() < 3:
                continue
            X = np.column_stack([np.ones(m.sum()), self.xr[m], -self.xl[m]])
            coef, *_ = np.linalg.lstsq(X, np.log(y[m] - b0), rcond=None)
            th = np.array([coef[0], coef[1], coef[2], b0])
            yield np.clip(th, lo + 1e-9, hi - 1e-9)

    def solve(self, x0):
        sol = least_squares(self.residuals, x0, jac=self.jac, bounds=self.bounds, method="trf",
                            x_scale="jac", max_nfev=400)
        if not np.all(np.isfinite(sol.x)) or not np.isfinite(sol.cost):
            raise FitError("the optimiser did not converge")
        return sol


class _CapacityProblem:
    """log(ΔL·ℓ) = k + α·(log r − m_r): the capacity form (β = 1, b = 0) fitted in logs, so every
    point weighs by its relative error (the nats a rank stores span orders of magnitude). Points
    with ΔL ≤ 0 stored nothing measurable and carry no log; callers leave them out. Censored
    points count only when the prediction falls below them, as in :class:`_Problem`."""

    def __init__(self, r, l, y, sat):
        self.lr = np.log(r)
        self.mr = float(self.lr.mean())
        self.xr = self.lr - self.mr
        self.z = np.log(y * l)
        self.sat = sat
        self.bounds = (np.array([-np.inf, _ALPHA_BOUNDS[0]]), np.array([np.inf, _ALPHA_BOUNDS[1]]))

    def residuals(self, th):
        res = th[0] + th[1] * self.xr - self.z
        return np.where(self.sat, np.minimum(res, 0.0), res)

    def jac(self, th):
        J = np.column_stack([np.ones_like(self.xr), self.xr])
        if self.sat.any():
            J[self.sat & (th[0] + th[1] * self.xr - self.z > 0)] = 0.0
        return J

    def to_law(self, th) -> Law:
        return Law(C=float(math.exp(th[0] - th[1] * self.mr)), alpha=float(th[1]), beta=1.0, b=0.0)

    def from_law(self, law: Law) -> np.ndarray:
        return np.array([math.log(law.C) + law.alpha * self.mr, law.alpha])

    def starts(self):
        free = ~self.sat
        X = np.column_stack([np.ones(free.sum()), self.xr[free]])
        coef, *_ = np.linalg.lstsq(X, self.z[free], rcond=None)
        lo, hi = self.bounds
        yield np.clip(coef, lo + 1e-9, hi - 1e-9)

    solve = _Problem.solve


def _problem(form: str, r, l, y, sat):
    if form == "capacity":
        return _CapacityProblem(r, l, y, sat)
    if form == "pml":
        return _Problem(r, l, y, sat)
    raise FitError(f"unknown law form {form!r}; use one of {', '.join(FORMS)}")


def _r2(y, pred, sat) -> float:
    free = ~sat
    if free.sum() < 2:
        return float("nan")
    ss_tot = float(np.sum((y[free] - y[free].mean()) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y[free] - pred[free]) ** 2)) / ss_tot


def _fit_problem(p: _Problem, x0=None) -> np.ndarray:
    """Best θ over the regression starts (or from x0 alone when given)."""
    best = None
    for start in ([x0] if x0 is not None else p.starts()):
        try:
            sol = p.solve(start)
        except (FitError, ValueError, FloatingPointError):
            continue
        if best is None or sol.cost < best.cost:
            best = sol
    if best is None:
        raise FitError("the least-squares fit failed from every starting point")
    return best.x


def fit(ranks, lengths, delta_losses, saturated=None, form: str = "pml") -> FitResult:
    """Fit ΔL = C·r^α·ℓ^(−β) + b by nonlinear least squares (``form="capacity"``: β = 1 and b = 0,
    fitted in logs of ΔL·ℓ over the points with ΔL > 0 — see :class:`_CapacityProblem`).

    Starts from a log-space linear regression (log(ΔL − b0) on log r and log ℓ, for a few offsets
    b0), refines each start with ``scipy.optimize.least_squares`` (C > 0 by construction, loose
    bounds on α, β and b), and keeps the best.

    Saturated points are *censored* observations. An adapter that memorised everything has its
    loss pinned near zero, so its ΔL is pinned at L_before: the capacity-limited ΔL the law
    describes could be larger, and the observed value is only a lower bound. Their residual is
    therefore one-sided — penalised only when the prediction falls *below* the observed value —
    and they are left out of R² (a lower bound has no "error" to explain).

    R² = 1 − SS_res / SS_tot over the non-saturated points. Residuals are observed − predicted.
    Raises FitError when the points cannot determine the four coefficients.
    """
    r, l, y, sat = _prepare(ranks, lengths, delta_losses, saturated)
    if form == "capacity":
        law = _fit_capacity(r, l, y, sat)
    else:
        _check_identifiable(r, l, sat)
        p = _problem(form, r, l, y, sat)
        law = p.to_law(_fit_problem(p))
    pred = law.predict(r, l)
    if not (np.all(np.isfinite(pred)) and all(math.isfinite(v) for v in law.as_array())):
        raise FitError("the fitted law is not finite")
    return FitResult(law=law, r2=_r2(y, pred, sat), n_points=int(len(y)),
                     n_saturated=int(sat.sum()), residuals=y - pred)


def _fit_capacity(r, l, y, sat, x0: Law | None = None) -> Law:
    keep = y > 0  # ΔL ≤ 0: nothing measurable was stored; no log
    r, l, y, sat = r[keep], l[keep], y[keep], sat[keep]
    if len(np.unique(r)) < 2:
        raise FitError("the capacity form needs points at 2 or more ranks with ΔL > 0")
    if np.count_nonzero(~sat) < 2:
        raise FitError("fewer than 2 uncensored points (converged and not saturated) with ΔL > 0: the others "
                       "are only lower bounds, so the law is undetermined")
    p = _CapacityProblem(r, l, y, sat)
    start = None if x0 is None else np.clip(p.from_law(x0), p.bounds[0] + 1e-9, p.bounds[1] - 1e-9)
    return p.to_law(_fit_problem(p, x0=start))


# ---------------------------------------------------------------------------------------------
# bootstrap


@dataclass
class Bootstrap:
    samples: np.ndarray  # (k, 4): C, alpha, beta, b, one row per resample whose fit succeeded
    n_requested: int = 0
    names: tuple = field(default=NAMES)

    def intervals(self, level: float = 0.9) -> dict[str, list[float]]:
        """Percentile intervals: name -> [lo, hi] covering ``level`` of the resampled fits."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if len(self.samples) == 0:
            return {}
        q = np.quantile(self.samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return {name: [float(q[0, j]), float(q[1, j])] for j, name in enumerate(self.names)}


def bootstrap(ranks, lengths, delta_losses, saturated=None, n: int = 200, seed: int = 0,
              form: str = "pml") -> Bootstrap:
    """Case-resampling bootstrap of ``fit``: draw the points with replacement ``n`` times and refit.

    Each refit starts from the full-data fit (one local solve, so 200 resamples of a dozen points
    take well under a second), falling back to the full multi-start fit if that fails. Resamples
    that cannot determine the law (one rank, one length, …) or whose fit fails are skipped, so
    ``len(samples) <= n``. Deterministic for a given seed. Raises FitError if the full data
    cannot be fitted.
    """
    r, l, y, sat = _prepare(ranks, lengths, delta_losses, saturated)
    full = fit(r, l, y, sat, form=form).law
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        rr, ll, yy, ss = r[idx], l[idx], y[idx], sat[idx]
        if form == "capacity":
            try:
                rows.append(_fit_capacity(rr, ll, yy, ss, x0=full).as_array())
            except (FitError, OverflowError, ValueError):
                pass
            continue
        try:
            _check_identifiable(rr, ll, ss)
            p = _Problem(rr, ll, yy, ss)
            try:
                th = _fit_problem(p, x0=np.clip(p.from_law(full), p.bounds[0] + 1e-9, p.bounds[1] - 1e-9))
            except FitError:
                th = _fit_problem(p)
            law = p.to_law(th)
        except (FitError, OverflowError):
            continue
        v = law.as_array()
        if np.all(np.isfinite(v)):
            rows.append(v)
    samples = np.array(rows, dtype=float).reshape(-1, 4)
    return Bootstrap(samples=samples, n_requested=n)


# ---------------------------------------------------------------------------------------------
# using a law


def rank_for_delta(law: Law, length: float, delta_needed: float) -> float:
    """Smallest (continuous) rank r with ``law.predict(r, length) >= delta_needed``.

    * ``0.0`` means "any rank": the need is met without any rank-dependent capacity
      (``delta_needed - b <= 0``, or α = 0 and the constant prediction already meets it).
    * ``math.inf`` means unreachable: with α <= 0 the prediction does not grow with rank, so when
      its r → ∞ limit (b for α < 0, C·ℓ^(−β) + b for α = 0) falls short no rank will do.
    * otherwise ``r = ((delta_needed − b) · ℓ^β / C)^(1/α)``, the exact inverse of ``predict``.
    Callers round up to an integer rank themselves.
    """
    need = float(delta_needed) - law.b
    if need <= 0:
        return 0.0
    if law.alpha <= 0:
        limit = law.C * float(length) ** (-law.beta) if law.alpha == 0 else 0.0
        return 0.0 if limit >= need else math.inf
    try:
        # in logs: avoids overflow for tiny α
        log_r = (math.log(need) + law.beta * math.log(float(length)) - math.log(law.C)) / law.alpha
        return math.exp(log_r)
    except OverflowError:
        return math.inf


def coverage_loss_thresholds(loss_after, coverage, targets=(0.9, 0.99, 1.0)) -> dict[str, float | None]:
    """Mean per-token loss at or below which the sweep reached each coverage target.

    Conservative: t_c is the largest loss L such that *every* observed point with loss_after <= L
    has coverage >= c. So
      * some point missed c  -> just below the smallest loss_after among the points that missed
        (``nextafter(min_missed, -inf)``: a point at exactly that loss did miss);
      * no point missed c    -> the largest loss_after among the points (all reached it; larger
        losses were not observed, so they are not vouched for);
      * no point reached c   -> None.
    Keys are the targets as strings ("0.9", "0.99", "1.0"). Non-finite points are ignored.
    """
    L = np.asarray(loss_after, dtype=float).ravel()
    cov = np.asarray(coverage, dtype=float).ravel()
    if len(L) != len(cov):
        raise ValueError(f"loss_after and coverage differ in size: {len(L)} vs {len(cov)}")
    ok = np.isfinite(L) & np.isfinite(cov)
    L, cov = L[ok], cov[ok]
    out: dict[str, float | None] = {}
    for c in targets:
        reached = cov >= c
        if not reached.any():
            out[str(float(c))] = None
        elif reached.all():
            out[str(float(c))] = float(L.max())
        else:
            out[str(float(c))] = float(np.nextafter(L[~reached].min(), -np.inf))
    return out
