"""Planner accuracy on corpora the law card never saw: is the predicted rank R enough, and R/2 not?

For each corpus and coverage target, `memplan estimate` (the card's law, the default coverage
predictor) names a rank R. Every rank in R/4 … 2R is then trained with the card's own template
and recipe — the exact `memft train` line the estimate prints, convergence test included — and
audited (one teacher-forced scoring pass); R gets extra seeds. Each run is one JSON line in
``--out`` (resumable: runs already there are skipped). The report compares, for every coverage
predictor and every card given (``--law`` first, ``--compare-law`` for others, e.g. a refit with
another ΔL definition), the predicted coverage at each trained rank with the measured one.

    python benchmarks/heldout_corpora.py runs/heldout
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/planner_accuracy.py runs/heldout/*.jsonl --coverage 0.9 0.99
    .venv/bin/python benchmarks/planner_accuracy.py runs/heldout/*.jsonl --report-only   # the tables again
    # every held-out run so far, and its errors written into the shipped card (quoted by memplan estimate):
    .venv/bin/python benchmarks/planner_accuracy.py CORPORA… --out RUNS --more-runs RUNS… --report-only --record-validation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from memlaw.card import VALIDATION_META, load_card, save_card
from memlaw.memft import CorpusSpec, LoraTemplate, Recipe, train_adapter
from memlaw.planner.coverage import PREDICTORS, predict
from memlaw.planner.estimate import estimate, resolve_card


def card_recipe(card) -> Recipe:
    d = dict(card.recipe)
    if d.get("batch_size") == "all":
        d["batch_size"] = 10**6  # every record in one batch, as calibrated
    return Recipe.from_dict(d)


def read_runs(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def plan(corpora, card, card_path, coverages) -> dict:
    """corpus → {coverage: estimate dict}, plus the corpus's loss profile and ceiling (cached)."""
    from memlaw.planner.baseloss import measure_or_load

    out = {}
    for corpus in corpora:
        spec = CorpusSpec(corpus)
        ests = {c: estimate(spec, card, c, card_path=str(card_path)).to_dict() for c in coverages}
        from memlaw.corpus import corpus_sha256, digits_only_keys

        bl, _, _ = measure_or_load(spec, spec.read(), card.base_model["name"], corpus_sha256(corpus), context=True)
        out[corpus] = {"estimates": ests, "profile": bl.loss_profile(), "ceiling": bl.max_coverage,
                       "digit_keyed": digits_only_keys(spec.read())[0],
                       "base_coverage": bl.base_coverage, "ell": bl.target_tokens}
    return out


def ranks_to_train(ests: dict, max_rank: int) -> list[int]:
    ranks = set()
    for e in ests.values():
        R = e["recommended_rank"]
        if R:
            ranks |= {max(1, R // 4), max(1, R // 2), R, min(max_rank, 2 * R)}
    return sorted(r for r in ranks if r <= max_rank)


def train_one(corpus: str, card_path: str, rank: int, seed: int, device: str = "cpu",
              cycles: int | None = None, all_cycles: bool = False) -> dict:
    """One adapter trained with the card's recipe and template; its coverage by one scoring pass.
    Takes the card's path, not the card, so that it can run in a worker process. ``cycles`` /
    ``all_cycles`` depart from the card's recipe (another cycle ceiling; every cycle run): for
    asking where the recipe stops, never for the card's record."""
    card = load_card(card_path)
    recipe = card_recipe(card)
    recipe.seed = seed
    if cycles:
        recipe.cycles = cycles
    if all_cycles:
        recipe.until_converged = False
    template = LoraTemplate.from_dict(card.template)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        side = train_adapter(CorpusSpec(corpus), card.base_model["name"], rank, Path(tmp) / "a", template=template,
                             recipe=recipe, progress=False, device=device)
    f, tr = side["final"], side["train"]
    return {"corpus": corpus, "rank": rank, "seed": seed, "coverage": f["coverage"], "exact": f["exact_records"],
            "records": f["records"], "loss_after": f["mean_loss"], "steps": tr["steps"],
            "stop_reason": tr["stop_reason"], "converged": tr.get("converged"),
            "seconds": round(time.perf_counter() - t, 1), "device": device,
            "recipe": "until_converged" if recipe.until_converged else "all_cycles", "cycles_cap": recipe.cycles,
            "cycle_ends": tr.get("cycle_ends")}


def card_recipe_runs(runs: list[dict], card, cycles: int | None = None, all_cycles: bool = False) -> list[dict]:
    """The runs trained with the card's own recipe — or, given ``cycles`` / ``all_cycles``, with that
    departure from it — so that one report never mixes the two (runs written before stop 18 carry
    no ``cycles_cap``: the card's recipe)."""
    cap = card.recipe.get("cycles")
    return [r for r in runs if (r.get("recipe") == "all_cycles") == all_cycles
            and r.get("cycles_cap", cap) == (cycles or cap)]


def unique_runs(runs: list[dict]) -> tuple[list[dict], int]:
    """One row per (corpus, rank, seed, recipe, cycle ceiling), the first kept, and how many were
    dropped: the same run read from two files (a rerun on another machine, a file passed twice)
    would otherwise count as one more seed."""
    seen: set = set()
    kept = []
    for r in runs:
        key = (r["corpus"], r["rank"], r["seed"], r.get("recipe"), r.get("cycles_cap"))
        if key not in seen:
            seen.add(key)
            kept.append(r)
    return kept, len(runs) - len(kept)


def by_cell(runs: list[dict]) -> dict:
    """(corpus, rank) → its runs."""
    by: dict = {}
    for r in runs:
        by.setdefault((r["corpus"], r["rank"]), []).append(r)
    return by


def predicted_vs_measured(plans: dict, by: dict, card) -> dict:
    """predictor → [(corpus stem, rank, predicted coverage, measured mean coverage)] over the cells run."""
    law, out = card.law(), {}
    for pred in PREDICTORS:
        rows = []
        for corpus, p in plans.items():
            for (c2, rank), rs in sorted(by.items()):
                if c2 != corpus:
                    continue
                meas = float(np.mean([x["coverage"] for x in rs]))
                nats = card.key_scale(p["digit_keyed"]) * max(0.0, law.predict(rank, p["ell"]))
                cov, _ = predict(p["profile"], nats, pred, p["ceiling"])
                rows.append((Path(corpus).stem, rank, max(cov, p["base_coverage"]), meas))
        if rows:
            out[pred] = rows
    return out


def record_validation(card_path: Path, card, plans: dict, by: dict, how: str, coverages) -> None:
    """Write each predictor's held-out error, and how often the named rank reached its target on
    every seed, into the card (``LawCard.validation``)."""
    validation = {"source": "docs/results.md §2", "how": how}
    for pred, rows in predicted_vs_measured(plans, by, card).items():
        errs = [abs(cov - meas) for _, _, cov, meas in rows]
        validation[pred] = {"mean_abs_error": round(float(np.mean(errs)), 4), "max_abs_error": round(max(errs), 4),
                            "cells": len(errs), "corpora": len({stem for stem, *_ in rows})}
    outcomes = [o for o in named_rank_outcomes(plans, by, coverages) if o["at"]]
    if outcomes:
        targets = {}
        for c in coverages:
            mine = [o for o in outcomes if o["target"] == c]
            if mine:
                targets[f"{c:g}"] = {"reached": sum(o["reached"] for o in mine), "cases": len(mine),
                                     "missed": sorted(o["corpus"] for o in mine if not o["reached"])}
        predictor = next(iter(next(iter(plans.values()))["estimates"].values()))["predictor"]
        validation["named_rank"] = {"predictor": predictor, "seeds": min(len(o["at"]) for o in outcomes),
                                    "targets": targets}
        if card.target_headroom.get("predictor") == predictor:  # then these ranks are not a test of it
            validation["named_rank"]["headroom_chosen_here"] = True
    save_card(dataclasses.replace(card, validation=validation), card_path)
    print(f"wrote the held-out record of {len(set(validation) - set(VALIDATION_META))} predictors into {card_path}")


def report(plans: dict, runs: list[dict], cards: dict, coverages, recipe: str = "card recipe") -> None:
    """Predicted vs measured, per card × predictor."""
    print(f"\n### Runs ({recipe}; coverage measured by one scoring pass)\n")
    print("| corpus | ℓ | ceiling | rank | seeds | coverage (mean ± sd) | exact | converged |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    by = by_cell(runs)
    for (corpus, rank), rs in sorted(by.items()):
        c = np.array([x["coverage"] for x in rs])
        p = plans.get(corpus)
        if p is None:  # a run file shared with corpora not asked about now
            continue
        print(f"| {Path(corpus).stem} | {p['ell']} | {p['ceiling']:.3f} | {rank} | {len(rs)} | "
              f"{c.mean():.3f} ± {c.std(ddof=1) if len(c) > 1 else 0:.3f} | "
              f"{np.mean([x['exact'] for x in rs]):.1f}/{rs[0]['records']} | "
              f"{sum(bool(x['converged']) for x in rs)}/{len(rs)} |")

    for name, card in cards.items():
        for pred, rows in predicted_vs_measured(plans, by, card).items():
            errs = [abs(cov - meas) for _, _, cov, meas in rows]
            print(f"\n### card {name}, predictor `{pred}`: mean |predicted − measured| = {np.mean(errs):.3f} "
                  f"(at most {max(errs):.3f}) over {len(errs)} (corpus, rank) cells\n")
            print("| corpus | rank | predicted | measured |")
            print("| --- | --- | --- | --- |")
            for stem, rank, cov, meas in rows:
                print(f"| {stem} | {rank} | {cov:.3f} | {meas:.3f} |")

    print("\n### Is the planner tight? (card given by --law, default predictor)\n")
    print("| corpus | target | R [interval] | coverage at R (seeds) | reached | R/2 | coverage at R/2 | R/2 short |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for o in named_rank_outcomes(plans, by, coverages, min_seeds=1):
        R = o["rank"]
        print(f"| {o['corpus']} | {o['target']} | {R} {o['interval']} | "
              f"{', '.join(f'{v:.3f}' for v in o['at']) or '—'} | {'yes' if o['reached'] else 'no'} | "
              f"{max(1, R // 2) if R else '—'} | {', '.join(f'{v:.3f}' for v in o['half']) or '—'} | "
              f"{('yes' if o['half_short'] else 'no') if o['half'] else '—'} |")


def named_rank_outcomes(plans: dict, by: dict, coverages, min_seeds: int = 3) -> list[dict]:
    """Per (corpus, target): the rank R the planner named, the measured coverage of each seed at R and
    at R/2, whether every seed at R reached the target and whether every seed at R/2 fell short. R
    counts as untrained with fewer than ``min_seeds`` seeds: one seed, or a printed mean, cannot say
    that every seed reached the target. ``half_enough``: every seed at R/2 (``min_seeds`` or more)
    reached it too — a rank too many. Where R/2 is neither short nor enough on every seed, no
    planner that must reach the target on every seed could have named R/2."""
    out = []
    for corpus, p in plans.items():
        for c in coverages:
            e = p["estimates"][c]
            R = e["recommended_rank"]
            at = [x["coverage"] for x in by.get((corpus, R), [])]
            at = at if len(at) >= min_seeds else []
            half = [x["coverage"] for x in by.get((corpus, max(1, R // 2)), [])] if R and R > 1 else []
            goal = e["coverage_planned"]
            out.append({"corpus": Path(corpus).stem, "target": c, "rank": R, "interval": e["rank_interval"],
                        "at": at, "half": half, "reached": bool(at) and min(at) >= goal,
                        "half_short": bool(half) and max(half) < goal,
                        "half_enough": len(half) >= min_seeds and min(half) >= goal})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpora", nargs="+")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--law", default=None)
    ap.add_argument("--compare-law", action="append", default=[], help="more cards for the prediction report")
    ap.add_argument("--coverage", type=float, nargs="+", default=[0.9, 0.99])
    ap.add_argument("--seeds", type=int, default=3, help="seeds at the predicted rank R")
    ap.add_argument("--max-rank", type=int, default=64)
    ap.add_argument("--ranks", default=None,
                    help="train exactly these ranks (e.g. 1,2,4,8) at seed 0 (see --rank-seeds) instead of R/4 … 2R: the measured "
                         "coverage curve does not depend on the card, so it can be measured before the card is final")
    ap.add_argument("--rank-seeds", type=int, default=1, help="with --ranks: seeds 0 … N−1 at each of them")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop starting new runs after this long")
    ap.add_argument("--out", default="runs/planner-accuracy.jsonl")
    ap.add_argument("--more-runs", nargs="*", default=[], help="more run files for the report (read, never written)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--record-validation", action="store_true",
                    help="write each predictor's mean and largest |predicted − measured| over these runs into the "
                         "--law card (the shipped card without --law): the record `memplan estimate` quotes")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (training and scoring)")
    ap.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process")
    ap.add_argument("--cycles", type=int, default=None,
                    help="another cycle ceiling than the card's (where does the recipe stop?); not for the record")
    ap.add_argument("--all-cycles", action="store_true", help="run every cycle (no convergence stop); not for the record")
    args = ap.parse_args()
    if (args.cycles or args.all_cycles) and args.record_validation:
        ap.error("--cycles / --all-cycles depart from the card's recipe: their runs cannot go into the card's record")
    card, card_path, _ = resolve_card(args.law, args.model)
    cards = {str(card_path): card, **{p: load_card(p) for p in args.compare_law}}
    plans = plan(args.corpora, card, card_path, args.coverage)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = read_runs(out)
    start = time.perf_counter()
    if not args.report_only:
        todo = []
        for corpus, p in plans.items():
            ests = p["estimates"]
            if args.ranks:
                todo += [(corpus, int(r), s) for r in args.ranks.split(",") for s in range(args.rank_seeds)]
                continue
            for r in ranks_to_train(ests, args.max_rank):
                todo.append((corpus, r, 0))
            for e in ests.values():
                if e["recommended_rank"] and e["recommended_rank"] <= args.max_rank:
                    todo += [(corpus, e["recommended_rank"], s) for s in range(1, args.seeds)]
        done = {(r["corpus"], r["rank"], r["seed"]) for r in runs}
        todo = [t for i, t in enumerate(todo) if t not in done and t not in todo[:i]]
        # cheap first: every corpus's predicted ranks at seed 0, then the rest
        todo.sort(key=lambda t: (t[2], plans[t[0]]["ell"] * t[1]))
        print(f"{len(todo)} runs to do", flush=True)

        def record(row: dict) -> None:
            runs.append(row)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)

        if args.workers <= 1:
            for corpus, rank, seed in todo:
                if args.max_seconds and time.perf_counter() - start > args.max_seconds:
                    print("time budget spent: stopping", flush=True)
                    break
                record(train_one(corpus, str(card_path), rank, seed, args.device, args.cycles, args.all_cycles))
        else:
            # Several runs at once: on a GPU one small LoRA run leaves the device mostly idle.
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
                futs = [pool.submit(train_one, c, str(card_path), r, s, args.device, args.cycles, args.all_cycles) for c, r, s in todo]
                for fut in as_completed(futs):
                    record(fut.result())
    runs_all, n_twice = unique_runs(runs + [r for f in args.more_runs for r in read_runs(Path(f))])
    if n_twice:
        print(f"{n_twice} runs read twice (same corpus, rank, seed and recipe): each counted once", flush=True)
    runs_all = card_recipe_runs(runs_all, card, args.cycles, args.all_cycles)
    departure = ", ".join(x for x in (f"cycle ceiling {args.cycles}" if args.cycles else "",
                                      "every cycle" if args.all_cycles else "") if x)
    report(plans, runs_all, cards, args.coverage, f"card recipe with {departure}" if departure else "card recipe")
    if args.record_validation:
        names = ", ".join(sorted(Path(c).stem for c in plans))
        record_validation(Path(card_path), card, plans, by_cell(runs_all), coverages=args.coverage, how=
                          f"benchmarks/planner_accuracy.py --record-validation on held-out corpora ({names}), "
                          "each (corpus, rank) cell the mean of its seeds")


if __name__ == "__main__":
    main()
