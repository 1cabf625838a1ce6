"""The calibration defaults, in one light module (no scipy, no torch): the CLI builds its options
from them at import time, and `memplan --help` or a typo'd --model must answer at once."""

from __future__ import annotations

DEFAULT_RANKS = (1, 2, 4, 8)
DEFAULT_LENGTHS = (64, 128, 256)
DEFAULT_TARGET_MODULES = ("q_proj", "v_proj")
DEFAULT_LAST_LAYERS = 2
DEFAULT_CHUNK = 64

#: what ΔL measures. ``raw``: L_before − L_after, the definition the planner applies to a user's
#: corpus (every nat of its base loss is a fact to store). ``source``: min(L_before, loss_source) −
#: L_after, counting only nats below the entropy of a random-token source (ln N).
DELTA_DEFINITIONS = ("raw", "source")
#: the ΔL a calibration fits: ``source`` — on random tokens the first ln N − … nats (learning that
#: targets are uniform over the pool) are not facts stored, and a user's corpus has no such free
#: nats; on corpus data (no ``loss_source``) it is the same as ``raw``
DEFAULT_DELTA = "source"
#: the law form a calibration fits (memlaw.law.FORMS): ``capacity`` — ΔL·ℓ = C·r^α, the nats a rank
#: stores, which the converged sweep found independent of ℓ (docs/results.md §1)
DEFAULT_LAW_FORM = "capacity"
LAW_FORMS = ("pml", "capacity")  # memlaw.law.FORMS: here too, so the CLI needs no scipy to list them


def default_recipe():
    """The shipped calibration recipe (batch size: all records of a point, see SweepSpec): plain SFT
    with the lr decaying linearly to 0 over B = 300 steps, restarted until the convergence test
    passes (the last cycle lowered the loss by ≤ max(0.05, 10 % of ΔL) and raised coverage by ≤ 0.02)
    or 6 cycles are spent — long corpora need more steps than short ones, and a fixed budget made the
    law one of the budget, not of capacity; no plateau stop, bf16 training forward (scoring float32)."""
    from memlaw.memft import Recipe

    return Recipe(method="sft", lr=2e-2, batch_size=1, max_steps=300, patience=0, seed=0, schedule="linear",
                  cycles=6, until_converged=True, train_dtype="bfloat16")
