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


def default_recipe():
    """The shipped calibration recipe (batch size: all records of a point, see SweepSpec): plain SFT
    with the lr decaying linearly to 0 over B = 300 steps, run twice (budget B, then 2B: the
    convergence test), no plateau stop, bf16 training forward (scoring stays float32)."""
    from memlaw.memft import Recipe

    return Recipe(method="sft", lr=2e-2, batch_size=1, max_steps=300, patience=0, seed=0, schedule="linear",
                  cycles=2, train_dtype="bfloat16")
