"""One sweep point: L_before, a fresh adapter trained to convergence, L_after and its evidence."""

from __future__ import annotations

import time



# ---------------------------------------------------------------------------------------------
# one point


def loss_before(base, records, pad_id: int) -> float:
    from memlaw.scoring import score, summarize

    return float(summarize(score(base.model, records, pad_id=pad_id))["mean_loss"])


def run_point(base, template, recipe, records, rank: int, l_before: float, pad_id: int = 0,
              cache_prefix: bool = True, fresh=None) -> dict:
    """Train a fresh rank-``rank`` adapter on ``records`` and measure it. The adapter is removed
    again afterwards (``unload``): ``base.model`` is the clean base model when this returns.

    The point records its convergence evidence: the loss and coverage after its last two cycles
    (``loss_after_B``, ``loss_after``), and whether the last cycle still lowered the loss or raised
    the coverage by more than the recipe's tolerances (then ``converged`` is false and the card fits the point only as a lower
    bound). ``fresh``: records of the same kind never trained on; their loss after training is
    the held-out test of what the adapter learnt beyond the records themselves."""
    from memlaw.memft import make_lora_model, seed_everything, train
    from memlaw.scoring import score, summarize

    start = time.perf_counter()
    seed_everything(recipe.seed)
    model = make_lora_model(base.model, template, rank, recipe.seed)
    try:
        result = train(model, records, recipe, pad_id=pad_id, progress=False, cache_prefix=cache_prefix,
                       loss_before=l_before)
        after = summarize(score(model, records, pad_id=pad_id))
        fresh_after = summarize(score(model, fresh, pad_id=pad_id))["mean_loss"] if fresh else None
    finally:
        base.model = model.unload()
        base.model.eval()
    ends = result.cycle_ends
    point = {
        "rank": int(rank),
        "length": int(sum(e.n_target for e in records)),
        "loss_before": float(l_before),
        "loss_after": float(after["mean_loss"]),
        "coverage": float(after["coverage"]),
        "exact_records": int(after["exact_records"]),
        "locked_records": int(after["locked_records"]),
        "records": int(after["records"]),
        "steps": int(result.steps),
        "seconds": round(time.perf_counter() - start, 3),
        "train_seconds": round(result.seconds, 3),
        "stop_reason": result.stop_reason,
        "converged": result.converged,
        "seed": int(recipe.seed),
    }
    if len(ends) >= 2:
        point["loss_after_B"] = float(ends[-2]["mean_loss"])
        point["coverage_B"] = float(ends[-2]["coverage"])
        point["steps_B"] = int(ends[-2]["step"])
    if fresh_after is not None:
        point["loss_fresh_after"] = float(fresh_after)
    return point
