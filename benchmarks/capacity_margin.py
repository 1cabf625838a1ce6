"""How much spare capacity did the held-out cells that reached their target have? For every
(corpus, rank) cell trained so far on the 12 held-out corpora (docs/results.md §2), the margin

    ρ = (nats the card's law gives the rank) / (nats `unigram` needs for the target coverage)

beside the measured coverage. The planner names the smallest power of two with ρ ≥ 1; a target
missed at ρ > 1 is a miss of the nats → coverage step, not of the law's nats. Then the issue's
accuracy measure: mean |predicted − measured| over the cells within R/4 … 2R of the rank R that
`memplan estimate` names for a target, per predictor.

    python benchmarks/heldout_corpora.py runs/heldout; … --fresh runs/fresh; --fresh2 runs/fresh2; --fresh3 runs/fresh3;
    … --fresh4 runs/fresh4; --fresh5 runs/fresh5
    python benchmarks/capacity_margin.py

The measured coverages below are the per-cell means over seeds in docs/results.md §2 (the runs
themselves were trained on a lent GPU and this CPU; their run files are not in the repository,
except those of ``runs/fresh4`` and ``runs/fresh5``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from planner_accuracy import plan, predicted_vs_measured  # a sibling script: benchmarks/ is on the path

from memlaw.card import load_card
from memlaw.memft import CorpusSpec
from memlaw.planner.estimate import estimate, resolve_card

# (corpus, rank) → mean measured coverage over its seeds, the card's recipe (docs/results.md §2)
MEASURED = {
    "runs/heldout/chat.jsonl": {1: 1.0, 2: 1.0, 4: 1.0},
    "runs/heldout/key_sentence.jsonl": {1: 0.212, 2: 0.955, 4: 1.0, 8: 1.0},
    "runs/heldout/pb_digits.jsonl": {1: 0.918, 2: 1.0, 4: 1.0},
    "runs/heldout/pb_large.jsonl": {2: 0.290, 4: 0.625, 8: 0.946, 16: 0.994, 32: 0.996},
    "runs/heldout/prose_keys.jsonl": {1: 0.962, 2: 1.0, 4: 1.0, 8: 1.0},
    "runs/fresh/animal_codes.jsonl": {1: 0.946, 2: 1.0},
    "runs/fresh/lockers.jsonl": {1: 0.991, 2: 1.0},
    "runs/fresh2/birthdays.jsonl": {1: 1.0},
    "runs/fresh2/glossary.jsonl": {1: 0.887, 2: 1.0},
    "runs/fresh2/hex_keys.jsonl": {1: 0.645, 2: 0.996},
    "runs/fresh3/flights.jsonl": {1: 0.958, 2: 0.999},
    "runs/fresh3/tracking.jsonl": {1: 0.639, 2: 0.973},
    # stop 22, this CPU: the key swap (runs/fresh4/runs.jsonl, committed)
    "runs/fresh4/pb_numkeys.jsonl": {1: 0.641},
    "runs/fresh4/tracking_names.jsonl": {1: 0.918},
    # stop 23, this CPU: the blind key-swap pair (runs/fresh5/runs.jsonl, committed)
    "runs/fresh5/pins_numkeys.jsonl": {1: 0.719},
    "runs/fresh5/pins_names.jsonl": {1: 0.964},
}


def estimate_rank(corpus: str, card, card_path, target: float, predictor: str) -> int | None:
    """The rank the printed `memft train` line trains, had the estimate used ``predictor``."""
    return estimate(CorpusSpec(corpus), card, target, card_path=str(card_path), predictor=predictor).recommended_rank


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--law", default=None, help="the card (default: shipped)")
    ap.add_argument("--coverage", type=float, nargs="+", default=[0.9, 0.99])
    args = ap.parse_args()
    card_path = resolve_card(args.law, "smollm2-135m")[1]
    card = load_card(card_path)
    law = card.law()
    plans = plan(list(MEASURED), card, card_path, args.coverage)  # the planner's own estimates and profiles
    print("| corpus | target | nats needed | rank: ρ → measured |\n| --- | --- | --- | --- |")
    for corpus, cells in MEASURED.items():
        p, n = plans[corpus], plans[corpus]["ell"]
        profile = p["profile"]
        for target in args.coverage:
            need = profile.unigram_for_coverage(min(target, p["ceiling"])) * n
            row = [f"{r}: {float(law.predict(r, n)) * n / need:.2f} → {m:.3f}{'' if m >= target else ' (short)'}"
                   for r, m in cells.items()]
            print(f"| {Path(corpus).stem} | {target} | {need:,.0f} | {' · '.join(row)} |")
    by = {(corpus, r): [{"coverage": m}] for corpus, cells in MEASURED.items() for r, m in cells.items()}
    print("\n| predictor | cells within R/4 … 2R | mean \\|predicted − measured\\| |\n| --- | --- | --- |")
    for name, rows in predicted_vs_measured(plans, by, card).items():
        if name == "boost":
            continue
        errors = {}
        for corpus in MEASURED:
            for target in args.coverage:
                named = estimate_rank(corpus, card, card_path, target, name)
                errors.update({(stem, r): abs(pred - meas) for stem, r, pred, meas in rows
                               if stem == Path(corpus).stem and named is not None and named / 4 <= r <= 2 * named})
        print(f"| {name} | {len(errors)} | {sum(errors.values()) / len(errors):.3f} |")

if __name__ == "__main__":
    main()
