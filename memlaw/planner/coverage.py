"""From a loss reduction ΔL to coverage: what share of a corpus's target tokens end up locked.

A mean loss cannot say how many tokens cross ln 2: a corpus of digits, first tokens and rare words
has a long tail of hard tokens that stay unlocked while the mean looks fine. The base-model pass
already measures every target token's loss ``l``; this module keeps their distribution as a
histogram of the *log-odds deficit*

    x = ln(e^l − 1)      (x < 0 ⇔ p > 0.5 ⇔ locked; x ≈ l for hard tokens)

and turns a predicted ΔL (the law's mean loss reduction, nats/token) into a predicted coverage.
Four predictors, compared on held-out corpora in docs/results.md §2 (``DEFAULT_PREDICTOR`` names
the one that was closest there, and won a test whose rule was recorded before its runs):

* ``boost`` — training adds one common log-odds boost ``m`` to every token (a token's log-odds
  of its target rises by m): its loss becomes ln(1 + e^(x − m)), which is never negative; m is
  chosen so the mean falls by ΔL; coverage = share of tokens with x < m.
* ``budget`` — the adapter spends ℓ·ΔL nats, cheapest tokens first: a token costs
  max(0, l − ln 2) nats to lock; coverage = share of tokens locked before the budget runs out.
* ``unigram`` — the budget view with a second way to spend it (a two-part code, as in minimum
  description length): the adapter may first learn the corpus's own token frequencies, paying
  once for naming each distinct target token (its cheapest base loss in the corpus), after which
  a token costs max(0, min(l, u) − ln 2) with u = −ln(its share of the target tokens). Coverage is
  the better of the two ways. On a corpus drawn from a small vocabulary (random words, codes, a
  repeated template) the base model's losses overstate what storing it costs; the calibration's
  ΔL already counts a random-token pool's entropy, not the base loss, as the cost of its tokens.
* ``context`` — ``unigram`` with a third price per token: the base model's loss on it with other
  records of the corpus in its context (:func:`memlaw.planner.context.context_windows`) — what a
  learner of the corpus's *kind* (its format, its word list, the second half of " st|oat")
  predicts without the record's own fact. Prices run down to ``CONTEXT_LOCK_LEVEL`` rather than
  ln 2: training drives a token it locks far below ln 2. The level is the closest of four tried on
  the held-out runs it was chosen on; its predictions for three later corpora were recorded before
  those were trained (docs/results.md §2).

Pure numpy: the planner uses it without a deep-learning stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)
X_LO, X_HI, X_WIDTH = -30.0, 50.0, 0.02  # histogram range and bin width of x (nats of log-odds)
PREDICTORS = ("boost", "budget", "unigram", "context")
DEFAULT_PREDICTOR = "context"  # closer than unigram in a test fixed before its runs (docs/results.md §2)
CONTEXT_LOCK_LEVEL = 0.45  # nats: the ``context`` predictor prices a token down to this loss (see above)


def deficit(losses) -> np.ndarray:
    """x = ln(e^l − 1), computed stably (l → 0: ln l; l large: l + ln(1 − e^−l))."""
    l = np.maximum(np.asarray(losses, dtype=float), 1e-12)
    return np.where(l > 30, l + np.log1p(-np.exp(-np.minimum(l, 700))), np.log(np.expm1(np.minimum(l, 30))))


@dataclass
class LossProfile:
    """Histogram of the base model's per-token log-odds deficits over a corpus's target tokens."""

    counts: np.ndarray  # (n_bins,) tokens per bin of x
    lo: float = X_LO
    width: float = X_WIDTH
    # the corpus's own unigram code (``unigram`` predictor); None where the token ids were not given
    unigram_counts: np.ndarray | None = None  # (n_bins,) tokens per bin of x for min(l, u)
    unigram_overhead: float | None = None  # nats to name each distinct target token once
    # the ``context`` predictor: tokens per bin of x for min(l, u, in-context loss); None without it
    context_counts: np.ndarray | None = None

    # ---- building and storing

    @staticmethod
    def _histogram(losses) -> np.ndarray:
        x = deficit(losses)
        n_bins = int(round((X_HI - X_LO) / X_WIDTH))
        idx = np.clip(np.floor((x - X_LO) / X_WIDTH).astype(np.int64), 0, n_bins - 1)
        return np.bincount(idx, minlength=n_bins).astype(np.int64)

    @classmethod
    def from_losses(cls, losses, ids=None, context_losses=None) -> "LossProfile":
        """From per-token base losses; with the tokens' ids also the corpus's unigram code, and with
        their in-context losses (same order) the ``context`` prices."""
        losses = np.asarray(losses, dtype=float)
        if ids is None or len(losses) == 0:
            return cls(cls._histogram(losses))
        ids = np.asarray(ids)
        types, inverse, freq = np.unique(ids, return_inverse=True, return_counts=True)
        coded = np.minimum(losses, -np.log(freq[inverse] / len(ids)))
        cheapest = np.full(len(types), np.inf)
        np.minimum.at(cheapest, inverse, losses)
        context = None
        if context_losses is not None:
            context = cls._histogram(np.minimum(coded, np.asarray(context_losses, dtype=float)))
        return cls(cls._histogram(losses), unigram_counts=cls._histogram(coded),
                   unigram_overhead=float(cheapest.sum()), context_counts=context)

    def to_dict(self) -> dict:
        def bins(counts):
            return [[int(i), int(counts[i])] for i in np.nonzero(counts)[0]]

        d = {"lo": self.lo, "width": self.width, "n_bins": int(len(self.counts)), "bins": bins(self.counts)}
        if self.unigram_counts is not None:
            d["unigram_bins"], d["unigram_overhead"] = bins(self.unigram_counts), self.unigram_overhead
        if self.context_counts is not None:
            d["context_bins"] = bins(self.context_counts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LossProfile":
        def counts(pairs):
            c = np.zeros(int(d["n_bins"]), dtype=np.int64)
            for i, k in pairs:
                c[int(i)] = int(k)
            return c

        uni = counts(d["unigram_bins"]) if "unigram_bins" in d else None
        return cls(counts(d["bins"]), float(d["lo"]), float(d["width"]), uni,
                   float(d["unigram_overhead"]) if uni is not None else None,
                   counts(d["context_bins"]) if "context_bins" in d and uni is not None else None)

    # ---- what it says

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def centres(self) -> np.ndarray:
        return self.lo + self.width * (np.arange(len(self.counts)) + 0.5)

    def losses(self) -> np.ndarray:
        """Per-bin loss ln(1 + e^x) at the bin centres."""
        return np.logaddexp(0.0, self.centres)

    def mean_loss(self, boost: float = 0.0) -> float:
        """Mean loss after a common log-odds boost m: ln(1 + e^(x − m)) ≥ 0."""
        if math.isinf(boost):
            return 0.0
        return float(np.dot(self.counts, np.logaddexp(0.0, self.centres - boost)) / max(1, self.n))

    def coverage(self, boost: float = 0.0) -> float:
        """Share of tokens locked after a common boost m (x < m; a bin counts once its centre is)."""
        if math.isinf(boost):
            return 1.0
        return float(self.counts[self.centres < boost].sum() / max(1, self.n))

    def boost_for_mean(self, mean: float) -> float:
        """The boost m ≥ 0 at which the mean loss falls to ``mean`` (inf when mean ≤ 0)."""
        if mean <= 1e-9:
            return math.inf
        if mean >= self.mean_loss(0.0):
            return 0.0
        lo, hi = 0.0, X_HI - X_LO + 60.0
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            if self.mean_loss(mid) > mean:
                lo = mid
            else:
                hi = mid
        return hi

    def boost_for_coverage(self, coverage: float) -> float:
        """Smallest boost whose coverage reaches ``coverage`` (just above the needed bin centre)."""
        order = np.cumsum(self.counts) / max(1, self.n)
        i = int(np.searchsorted(order, coverage - 1e-12))
        i = min(i, len(self.counts) - 1)
        return max(0.0, float(self.centres[i]) + 1e-9)

    # ---- the budget view

    def lock_costs(self, level: float = LN2) -> np.ndarray:
        """Per-bin nats needed to bring a token's loss down to ``level``: max(0, l − level)."""
        return np.maximum(0.0, self.losses() - level)

    def budget_coverage(self, nats_per_token: float) -> float:
        """Coverage when ℓ·ΔL nats are spent on the cheapest tokens first."""
        return self._budget_coverage(self.counts, max(0.0, nats_per_token) * self.n)

    def budget_for_coverage(self, coverage: float) -> float:
        """ΔL (nats/token over the corpus) the budget view needs for ``coverage``."""
        return self._budget_needed(self.counts, coverage) / max(1, self.n)

    def unigram_coverage(self, nats_per_token: float) -> float:
        """The better of the budget view and the corpus's unigram code (its overhead paid first)."""
        plain = self.budget_coverage(nats_per_token)
        if self.unigram_counts is None:
            return plain
        left = max(0.0, nats_per_token) * self.n - self.unigram_overhead
        return max(plain, self._budget_coverage(self.unigram_counts, left)) if left > 0 else plain

    def unigram_for_coverage(self, coverage: float) -> float:
        """ΔL (nats/token) the cheaper of the two codes needs for ``coverage``."""
        plain = self.budget_for_coverage(coverage)
        if self.unigram_counts is None:
            return plain
        coded = (self.unigram_overhead + self._budget_needed(self.unigram_counts, coverage)) / max(1, self.n)
        return min(plain, coded)

    def context_coverage(self, nats_per_token: float) -> float:
        """``unigram`` with the in-context price, every price down to ``CONTEXT_LOCK_LEVEL``."""
        if self.context_counts is None:
            return self.unigram_coverage(nats_per_token)
        budget, level = max(0.0, nats_per_token) * self.n, CONTEXT_LOCK_LEVEL
        plain = self._budget_coverage(self.counts, budget, level)
        left = budget - self.unigram_overhead
        return max(plain, self._budget_coverage(self.context_counts, left, level)) if left > 0 else plain

    def context_for_coverage(self, coverage: float) -> float:
        """ΔL (nats/token) the ``context`` predictor needs for ``coverage``."""
        if self.context_counts is None:
            return self.unigram_for_coverage(coverage)
        level = CONTEXT_LOCK_LEVEL
        plain = self._budget_needed(self.counts, coverage, level)
        coded = self.unigram_overhead + self._budget_needed(self.context_counts, coverage, level)
        return min(plain, coded) / max(1, self.n)

    def _budget_coverage(self, counts: np.ndarray, budget: float, level: float = LN2) -> float:
        cost = self.lock_costs(level)
        spent = np.cumsum(counts * cost)
        # whole bins that fit, then a share of the next bin
        k = int(np.searchsorted(spent, budget, side="right"))
        locked = float(counts[:k].sum())
        if k < len(counts) and cost[k] > 0:
            left = budget - (spent[k - 1] if k else 0.0)
            locked += min(float(counts[k]), left / cost[k])
        return min(1.0, locked / max(1, self.n))

    def _budget_needed(self, counts: np.ndarray, coverage: float, level: float = LN2) -> float:
        """Nats that lock a share ``coverage`` of the tokens, cheapest first."""
        need = coverage * self.n
        cum = np.cumsum(counts)
        k = int(np.searchsorted(cum, need - 1e-9))
        k = min(k, len(counts) - 1)
        cost = self.lock_costs(level)
        before = float(np.dot(counts[:k], cost[:k]))
        have = float(cum[k - 1]) if k else 0.0
        return before + max(0.0, need - have) * cost[k]


# ---------------------------------------------------------------------------------------------
# the predictors: ΔL ↔ (coverage, mean loss after)


def predict(profile: LossProfile, delta: float, predictor: str = DEFAULT_PREDICTOR,
            ceiling: float = 1.0) -> tuple[float, float]:
    """(coverage, mean loss after) predicted for a mean loss reduction ``delta`` (nats/token),
    measured from the profile's own mean; coverage never above the structural ``ceiling``."""
    base = profile.mean_loss(0.0)
    delta = max(0.0, float(delta))
    if predictor == "boost":
        m = profile.boost_for_mean(base - delta)
        return min(ceiling, profile.coverage(m)), profile.mean_loss(m)
    if predictor == "budget":
        return min(ceiling, profile.budget_coverage(delta)), max(0.0, base - delta)
    if predictor == "unigram":
        return min(ceiling, profile.unigram_coverage(delta)), max(0.0, base - delta)
    if predictor == "context":
        return min(ceiling, profile.context_coverage(delta)), max(0.0, base - delta)
    raise ValueError(f"unknown coverage predictor {predictor!r}")


def delta_for_coverage(profile: LossProfile, coverage: float, predictor: str = DEFAULT_PREDICTOR) -> float:
    """The smallest ΔL (nats/token) the predictor says reaches ``coverage``."""
    if predictor == "boost":
        m = profile.boost_for_coverage(coverage)
        return profile.mean_loss(0.0) - profile.mean_loss(m)
    if predictor == "budget":
        return profile.budget_for_coverage(coverage)
    if predictor == "unigram":
        return profile.unigram_for_coverage(coverage)
    if predictor == "context":
        return profile.context_for_coverage(coverage)
    raise ValueError(f"unknown coverage predictor {predictor!r}")
