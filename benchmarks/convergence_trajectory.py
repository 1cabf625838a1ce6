"""One calibration point trained for many cycles, its loss scored at every cycle end: does the
information a rank stores level off, and where does the card's convergence test stop it?

    python benchmarks/convergence_trajectory.py --rank 1 --length 256 --cycles 24

The shipped card's template, recipe (every cycle run) and random-token data, as `memplan
calibrate` builds them. docs/results.md §1 has the numbers.
"""
from __future__ import annotations

import argparse
import json

from planner_accuracy import card_recipe  # a sibling script: benchmarks/ is on the path when run

from memlaw.calibration.data import SweepData
from memlaw.calibration.spec import SweepSpec
from memlaw.card import load_card
from memlaw.memft import LoraTemplate, make_lora_model, seed_everything, train
from memlaw.models import load_base
from memlaw.planner.estimate import resolve_card


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--cycles", type=int, default=24)
    ap.add_argument("--law", default=None, help="the card whose template and recipe train (default: shipped)")
    args = ap.parse_args()
    if args.cycles < 2:
        ap.error("--cycles must be ≥ 2: a cycle end is scored only when the schedule restarts")
    card = load_card(resolve_card(args.law, "smollm2-135m")[1])
    recipe = card_recipe(card)
    recipe.cycles, recipe.until_converged = args.cycles, False
    base = load_base(card.base_model["name"])
    data = SweepData(SweepSpec(model=card.base_model["name"]), base)
    records = data.records(args.length)
    seed_everything(recipe.seed)
    model = make_lora_model(base.model, LoraTemplate.from_dict(card.template), args.rank, recipe.seed)
    res = train(model, records, recipe, pad_id=base.tokenizer.pad_token_id or 0, progress=False)
    ln_n = data.loss_source()
    print("| cycle | L_after | nats stored |\n| --- | --- | --- |")
    for i, c in enumerate(res.cycle_ends, 1):
        print(f"| {i} | {c['mean_loss']:.3f} | {args.length * (ln_n - c['mean_loss']):,.0f} |")
    print(json.dumps({"rank": args.rank, "length": args.length, "ln_N": ln_n, "cycle_ends": res.cycle_ends}))


if __name__ == "__main__":
    main()
