"""A candidate for the nats → coverage step at the capacity edge, fitted on content-free digits only
and tested on the held-out corpora (issue #13; docs/results.md §1 "The edge on digits" and §2 "The edge curve on the held-out corpora").

The budget view (`budget`, `unigram`, `context`) says: once a rank's nats pay every token's lock
price, every token is locked. On random digits the card's recipe gets there only with spare
capacity (docs/results.md §1). The candidate keeps the planner's prices and smooths the step: the
nats that end up locking tokens are the law's nats times a factor s drawn from a log-normal,

    coverage = E_s[ sharp(s · ΔL) ],   ln s ~ N(μ, σ)

where sharp(·) is the budget view's own coverage (`unigram` or `context`). (μ, σ) are fitted on
the content-free digit points of `benchmarks/pool_entropy.py` — records the card's own calibration
could have held, no held-out corpus — then the held-out cells are predicted with them.

    python benchmarks/pool_entropy.py --pool digits --points 1:1024,2:1024,1:256,4:1024 --out runs/pool-entropy.jsonl
    python benchmarks/edge_curve.py [--fit-points 1:1024,2:1024,1:256,4:1024]

``--fit-points`` fits on those points only and reports the others as a test of the curve on digits.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from capacity_margin import MEASURED  # sibling scripts: benchmarks/ is on the path when run
from planner_accuracy import plan
from pool_entropy import CHUNK, parse_points, pool_ids, records_profile

from memlaw.card import load_card
from memlaw.planner.coverage import LossProfile
from memlaw.planner.estimate import resolve_card

# Gauss–Hermite nodes for E over a standard normal (probabilists' form), weights summing to 1
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(24)
WEIGHTS = WEIGHTS / WEIGHTS.sum()
# the held-out corpora whose targets are random digit or hex strings; the others are words, templates, prose
RANDOM_STRINGS = {"pb_digits", "pb_large", "hex_keys", "tracking", "pb_numkeys", "tracking_names"}
MU_GRID = np.arange(-0.8, 0.4001, 0.05)
SIGMA_GRID = np.arange(0.0, 1.2001, 0.05)


def edge_coverage(sharp, delta: float, mu: float, sigma: float) -> float:
    """E_s[sharp(s · delta)] with ln s ~ N(mu, sigma); ``sharp`` maps ΔL (nats/token) to coverage."""
    return float(sum(w * sharp(delta * math.exp(mu + sigma * z)) for z, w in zip(NODES, WEIGHTS)))


def digit_profiles(model_name: str, lengths) -> dict[int, LossProfile]:
    """The base model's loss profile of the content-free digit records at each length (data seed 0,
    chunk 64, as `pool_entropy.py` trained them)."""
    from memlaw.calibration.data import random_records
    from memlaw.models import load_base

    base = load_base(model_name)
    tok = base.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    pool = pool_ids("digits", tok, base.model)
    return {length: records_profile(base.model, random_records(tok, pool, length, CHUNK, 0), pad_id)
            for length in sorted(set(lengths))}


def fit(points, law) -> tuple[float, float, float]:
    """(mu, sigma, rms error) on a grid: the smoothing that best matches the points' coverage."""
    best = None
    for mu in MU_GRID:
        for sigma in SIGMA_GRID:
            err = [edge_coverage(p["profile"].unigram_coverage, max(0.0, float(law.predict(p["rank"], p["length"]))),
                                 mu, sigma) - p["coverage"] for p in points]
            rms = math.sqrt(float(np.mean(np.square(err))))
            if best is None or rms < best[2]:
                best = (float(mu), float(sigma), rms)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points-file", default="runs/pool-entropy.jsonl")
    ap.add_argument("--fit-points", default=None, help="rank:length,… to fit on (default: every digit point)")
    ap.add_argument("--law", default=None, help="the card (default: shipped)")
    args = ap.parse_args()
    card_path = resolve_card(args.law, "smollm2-135m")[1]
    card = load_card(card_path)
    law = card.law()

    points = [p for p in map(json.loads, Path(args.points_file).read_text().splitlines()) if p["pool"] == "digits"]
    profiles = digit_profiles(card.base_model["name"], (p["length"] for p in points))
    for p in points:
        p["profile"] = profiles[p["length"]]
    chosen = set(parse_points(args.fit_points)) if args.fit_points else {(p["rank"], p["length"]) for p in points}
    mu, sigma, rms = fit([p for p in points if (p["rank"], p["length"]) in chosen], law)
    print(f"fitted on {len(chosen)} digit points: mu {mu:.2f} (median s = {math.exp(mu):.2f}), sigma {sigma:.2f}, "
          f"rms {rms:.3f}\n")
    print("| rank | ℓ | ρ | measured | unigram | edge | fitted on |\n| --- | --- | --- | --- | --- | --- | --- |")
    for p in sorted(points, key=lambda p: (p["length"], p["rank"])):
        prof, delta = p["profile"], max(0.0, float(law.predict(p["rank"], p["length"])))
        print(f"| {p['rank']} | {p['length']} | {delta / prof.unigram_for_coverage(1.0):.2f} | {p['coverage']:.3f} "
              f"| {prof.unigram_coverage(delta):.3f} | {edge_coverage(prof.unigram_coverage, delta, mu, sigma):.3f} "
              f"| {'yes' if (p['rank'], p['length']) in chosen else 'no (a test)'} |")

    # the held-out cells, through the planner's own profiles of each corpus
    plans = plan(list(MEASURED), card, card_path, [0.99])
    errors: dict[str, list[float]] = {}
    rows = []
    for corpus, cells in MEASURED.items():
        p = plans[corpus]
        prof = p["profile"]
        for rank, measured in cells.items():
            delta = max(0.0, float(law.predict(rank, p["ell"])))
            pred = {"budget": max(min(p["ceiling"], prof.budget_coverage(delta)), p["base_coverage"])}
            for name, sharp in (("unigram", prof.unigram_coverage), ("context", prof.context_coverage)):
                pred[name] = max(min(p["ceiling"], sharp(delta)), p["base_coverage"])
                pred["edge " + name] = max(min(p["ceiling"], edge_coverage(sharp, delta, mu, sigma)), p["base_coverage"])
            for name, v in pred.items():
                errors.setdefault(name, []).append(abs(v - measured))
            rows.append((Path(corpus).stem, rank, measured, pred))
    names = list(errors)
    print(f"\n| corpus | rank | measured | {' | '.join(names)} |\n| --- | --- | --- |{' --- |' * len(names)}")
    for stem, rank, measured, pred in rows:
        print(f"| {stem} | {rank} | {measured:.3f} | {' | '.join(f'{pred[n]:.3f}' for n in names)} |")
    strings = [i for i, row in enumerate(rows) if row[0] in RANDOM_STRINGS]
    others = [i for i in range(len(rows)) if i not in strings]
    print(f"\n| predictor | mean \\|predicted − measured\\| ({len(rows)} cells) | random digit/hex strings "
          f"({len(strings)}) | words, templates, prose ({len(others)}) |\n| --- | --- | --- | --- |")
    for n in names:
        e = np.asarray(errors[n])
        print(f"| {n} | {e.mean():.3f} | {e[strings].mean():.3f} | {e[others].mean():.3f} |")


if __name__ == "__main__":
    main()
