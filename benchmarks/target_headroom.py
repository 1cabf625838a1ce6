"""The target headroom: how many times the nats a predictor prices a coverage target at must a rank
give before the card's recipe reaches that target on every seed?

    python benchmarks/target_headroom.py [--predictor context] [--coverage 0.9 0.99] [--record]

Why (issue #13, stop 25): at a 0.99 target the rank `memplan estimate` named held on every seed on
only 7 of 13 held-out corpora. The coverage predictors saturate at 1.000 as soon as the law's nats
cover the price of the target, while the recipe locks the last percent of tokens only with nats to
spare (docs/results.md §1, "Far from the edge the planner is right; at the edge it is not").

For every held-out cell (benchmarks/capacity_margin.py: each seed's coverage) whose rank gives at
least the target's price, ρ = nats the rank gives (law × key factor) / nats the predictor needs for
the target. The headroom h(t) is the midpoint between the largest ρ at which a cell missed the
target on some seed and the smallest ρ above it at which a cell reached it on every seed (1 when no
such cell missed). The planner then names the smallest power of two with ρ ≥ h(t)
(memlaw.card.LawCard.headroom). Leave-one-corpus-out re-chooses h without each corpus and names
that corpus's rank with it: the rule's record on corpora it was not chosen on. ``--record`` writes
h into the card (``target_headroom``); docs/results.md §2 "The last percent" has the numbers and
the blind test (runs/fresh6/predictions-headroom.txt).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from capacity_margin import measured  # sibling scripts: benchmarks/ is on the path when run
from planner_accuracy import plan

from memlaw.card import load_card, save_card
from memlaw.planner.coverage import delta_for_coverage
from memlaw.planner.estimate import resolve_card

RANKS = (1, 2, 4, 8, 16, 32, 64)


def cell_margins(cells: dict, plans: dict, card, predictor: str, target: float) -> dict:
    """corpus → {rank: ρ} for every power-of-two rank, with the corpus's goal (the target under its ceiling)."""
    law, out = card.law(), {}
    for corpus in cells:
        p = plans[corpus]
        goal = min(target, p["ceiling"])
        need = delta_for_coverage(p["profile"], goal, predictor)
        given = card.key_scale(p["digit_keyed"])
        out[corpus] = {"goal": goal, "rho": {r: max(0.0, float(law.predict(r, p["ell"]))) * given / max(need, 1e-12)
                                             for r in RANKS}}
    return out


def trained(cells: dict, margins: dict, corpora) -> list[dict]:
    """The trained cells of ``corpora`` whose rank gives at least the target's price (ρ ≥ 1)."""
    rows = []
    for c in corpora:
        goal = margins[c]["goal"]
        for r, seeds in cells[c].items():
            rho = margins[c]["rho"][r]
            if rho >= 1:
                rows.append({"corpus": Path(c).stem, "rank": r, "rho": rho, "seeds": seeds,
                             "reached": min(seeds) >= goal - 1e-9})
    return rows


def choose(rows: list[dict]) -> float | None:
    """The midpoint rule; None when no cell above the largest miss reached the target."""
    misses = [x["rho"] for x in rows if not x["reached"]]
    if not misses:
        return 1.0
    above = [x["rho"] for x in rows if x["reached"] and x["rho"] > max(misses)]
    return (max(misses) + min(above)) / 2 if above else None


def named(margins: dict, corpus: str, h: float) -> int | None:
    return next((r for r in RANKS if margins[corpus]["rho"][r] >= h - 1e-12), None)


def outcome(cells: dict, margins: dict, corpus: str, h: float) -> dict:
    """The rank named with headroom h; whether every seed there (3 or more) reached the goal and every seed
    at R/2 fell short."""
    R, goal = named(margins, corpus, h), margins[corpus]["goal"]
    at = cells[corpus].get(R, [])
    at = at if len(at) >= 3 else []  # as planner_accuracy.named_rank_outcomes: "every seed" needs 3
    half = cells[corpus].get(R // 2, []) if R and R > 1 else []
    return {"rank": R, "reached": (min(at) >= goal - 1e-9) if at else None,
            "half_short": (max(half) < goal) if half else None}


def tally(outs: list[dict]) -> str:
    at = [o for o in outs if o["reached"] is not None]
    half = [o for o in outs if o["half_short"] is not None]
    return (f"reached on every seed {sum(o['reached'] for o in at)} of {len(at)}"
            f" (missed: {', '.join(o['corpus'] for o in at if not o['reached']) or 'none'}); "
            f"R/2 short {sum(o['half_short'] for o in half)} of {len(half)}; R untrained {len(outs) - len(at)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--law", default=None, help="the card (default: shipped)")
    ap.add_argument("--predictor", default="context")
    ap.add_argument("--coverage", type=float, nargs="+", default=[0.9, 0.99])
    ap.add_argument("--record", action="store_true", help="write h(t) into the card as its target_headroom")
    args = ap.parse_args()
    card_path = resolve_card(args.law, "smollm2-135m")[1]
    card = load_card(card_path)
    cells = measured()
    plans = plan(list(cells), card, card_path, args.coverage)
    chosen = {}
    for target in args.coverage:
        margins = cell_margins(cells, plans, card, args.predictor, target)
        rows = sorted(trained(cells, margins, cells), key=lambda x: x["rho"])
        h = choose(rows)
        print(f"\n### target {target:g}, predictor `{args.predictor}`: cells whose rank gives ≥ the target's price\n")
        print("| corpus | rank | ρ | seeds | every seed reached |\n| --- | --- | --- | --- | --- |")
        for x in rows:
            print(f"| {x['corpus']} | {x['rank']} | {x['rho']:.2f} | {' / '.join(f'{s:.3f}' for s in x['seeds'])} | "
                  f"{'yes' if x['reached'] else '**no**'} |")
        if h is None:
            print("\nno cell above the largest miss reached the target: no headroom can be chosen")
            continue
        chosen[target] = h
        print(f"\nh({target:g}) = {h:.3f}")
        for label, hh in (("no headroom (h = 1)", 1.0), (f"h = {h:.3f}", h)):
            outs = [{"corpus": Path(c).stem} | outcome(cells, margins, c, hh) for c in cells]
            print(f"- {label}: {tally(outs)}")
        loo = []
        for c in cells:
            h_c = choose(trained(cells, margins, [x for x in cells if x != c]))
            loo.append({"corpus": Path(c).stem, "h": h_c} | outcome(cells, margins, c, h_c or h))
        print(f"- leave one corpus out (h re-chosen without it, {min(o['h'] for o in loo):.3f} … "
              f"{max(o['h'] for o in loo):.3f}): {tally(loo)}")
    if args.record and chosen:
        save_card(dataclasses.replace(card, target_headroom={
            "predictor": args.predictor, "targets": {f"{t:g}": round(float(h), 3) for t, h in chosen.items()},
            "source": "docs/results.md §2, 'The last percent'",
            "how": "benchmarks/target_headroom.py --record (midpoint rule over every held-out cell)"}), card_path)
        print(f"\nwrote target headroom {', '.join(f'h({t:g}) = {h:.3f}' for t, h in chosen.items())} into {card_path}")


if __name__ == "__main__":
    main()
