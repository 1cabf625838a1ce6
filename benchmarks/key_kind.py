"""Does the kind of *key* change how many nats a rank stores? Content-free calibration points with
the same random digit targets under keys of 4 random digits or of 4 random vocabulary tokens.

    python benchmarks/key_kind.py --keys digits --out runs/key-kind.jsonl
    python benchmarks/key_kind.py --keys vocab --out runs/key-kind.jsonl
    python benchmarks/key_kind.py --out runs/key-kind.jsonl --report-only

Why (issue #13, stop 22): the same 40 phone numbers reached 0.64 at rank 1 under 4-digit keys and
0.92 under names; the same 40 parcel numbers 0.64 under 4-digit keys and 0.92 under names; the
planner, which prices targets only, predicts the same for each pair. Those two pairs show the
direction; they cannot calibrate a correction without being used as its test. These points can:
short records (10 digits each, as a phone book) with no template at all, trained with the shipped
card's template and recipe (the printed `memft train` line), whose only difference is the key.

Each point's κ is the multiplier of the card's nats for the rank at which the planner's `unigram`
predictor gives the measured coverage (κ < 1: the rank stored less than the card says). The key
factor is κ(digit keys) / κ(vocabulary keys): what the card's nats are worth when records are told
apart only by digits, relative to keys like the card's own (random vocabulary tags).
docs/results.md §2 "The key factor" has the numbers and its blind test.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from planner_accuracy import read_runs  # sibling scripts: benchmarks/ is on the path when run
from pool_entropy import card_and_base, pool_ids, records_profile

from memlaw.calibration.data import token_pool
from memlaw.calibration.point import loss_before, run_point
from memlaw.card import load_card
from memlaw.memft import LoraTemplate
from memlaw.planner.estimate import resolve_card

DATA_SEED = 2323  # the default draw of targets, shared by both kinds of key


def key_kind_records(tokenizer, model, keys: str, n_records: int, chunk: int, key_tokens: int,
                     data_seed: int = DATA_SEED) -> list:
    """``n_records`` records of ``chunk`` random digit tokens each; key = BOS + ``key_tokens`` tokens,
    distinct per record, drawn from the 10 digits (``keys="digits"``) or from the vocabulary pool
    the card's own points draw from (``keys="vocab"``). The targets do not depend on ``keys``."""
    from memlaw.corpus import Encoded

    digits = pool_ids("digits", tokenizer, model)
    rng = np.random.default_rng(data_seed)
    targets = digits[rng.integers(0, 10, size=(n_records, chunk))]
    key_pool = digits if keys == "digits" else token_pool(tokenizer, model)
    key_rng = np.random.default_rng([data_seed, 0 if keys == "digits" else 1])
    seen: set = set()
    while len(seen) < n_records:
        seen.add(tuple(int(t) for t in key_pool[key_rng.integers(0, len(key_pool), size=key_tokens)]))
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [Encoded(key_ids=(int(start), *k), target_ids=tuple(int(t) for t in row), index=j)
            for j, (k, row) in enumerate(zip(sorted(seen, key=lambda k: key_rng.random()), targets))]


def kappa(profile, delta: float, measured: float, ceiling: float = 1.0) -> float | None:
    """The multiplier of ``delta`` (nats/token) at which `unigram` predicts ``measured``; None where
    no multiplier in [0.01, 20] reaches it (e.g. a cell measured at the ceiling)."""
    from memlaw.planner.coverage import predict

    def cov(k: float) -> float:
        return predict(profile, k * delta, "unigram", ceiling=ceiling)[0]

    lo, hi = 0.01, 20.0
    if cov(hi) < measured - 1e-3 or cov(lo) > measured or measured >= ceiling - 1e-3:
        return None
    for _ in range(50):  # bisection in log space: coverage is non-decreasing in delta
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if cov(mid) < measured else (lo, mid)
    return hi


def key_factor(rows: list[dict]) -> float | None:
    """κ(digit keys) / κ(vocabulary keys), each kind's κ the mean over its converged points (seeds
    and draws). A point that failed the card's convergence test is left out: its κ is only a bound."""
    by = {}
    for p in rows:
        if p.get("kappa") is not None and p.get("converged", True):
            by.setdefault(p["keys"], []).append(p["kappa"])
    if "digits" not in by or "vocab" not in by:
        return None
    return float(np.mean(by["digits"]) / np.mean(by["vocab"]))


def draw(point: dict) -> int:
    """The point's draw of targets and keys (points run before --data-seed existed: the default)."""
    return point.get("data_seed", DATA_SEED)


def report(rows: list[dict]) -> str:
    out = ["| keys | draw | seed | rank | records × digits | L_before | L_after | coverage | exact | `unigram` predicts "
           "| κ | steps (stop) | s |", "| --- " * 13 + "|"]
    for p in sorted(rows, key=lambda p: (p["rank"], p["keys"], draw(p), p["seed"])):
        k = f"{p['kappa']:.2f}" if p.get("kappa") is not None else "—"
        if not p.get("converged", True):
            k += " (not converged: left out)"
        out.append(f"| {p['keys']} | {draw(p)} | {p['seed']} | {p['rank']} | {p['records']} × {p['chunk']} "
                   f"| {p['loss_before']:.3f} | {p['loss_after']:.3f} | {p['coverage']:.3f} "
                   f"| {p['exact_records']}/{p['records']} | {p['predicted_unigram']:.3f} | {k} "
                   f"| {p['steps']} ({p['stop_reason']}) | {p['seconds']:.0f} |")
    out.append("")
    per_draw = {d: key_factor([p for p in rows if draw(p) == d]) for d in sorted({draw(p) for p in rows})}
    if len(per_draw) > 1:
        out.append("per draw: " + ", ".join(f"{d}: {f:.3f}" if f is not None else f"{d}: —"
                                            for d, f in per_draw.items()))
    f = key_factor(rows)
    out.append(f"key factor κ(digits) / κ(vocab): {f:.3f}" if f is not None else "key factor: needs both kinds")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", choices=("digits", "vocab"), default="digits")
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--records", type=int, default=48)
    ap.add_argument("--chunk", type=int, default=10, help="digit tokens a record")
    ap.add_argument("--key-tokens", type=int, default=4)
    ap.add_argument("--seed", type=int, default=None, help="training seed (default: the card's recipe's)")
    ap.add_argument("--data-seed", type=int, default=DATA_SEED,
                    help="draw of targets and keys (the same draw under both kinds of key pairs them)")
    ap.add_argument("--law", default=None, help="the card whose template and recipe train (default: shipped)")
    ap.add_argument("--out", default="runs/key-kind.jsonl")
    ap.add_argument("--report-only", action="store_true", help="train nothing: the table and the factor of --out")
    ap.add_argument("--record", action="store_true",
                    help="train nothing; write the factor of --out's points into the card (--law, default the "
                         "shipped one) as its key_factor")
    args = ap.parse_args()
    out = Path(args.out)
    rows = read_runs(out)
    if not (args.report_only or args.record):
        from memlaw.planner.coverage import predict

        card, recipe, base, pad_id = card_and_base(args.law)
        if args.seed is not None:
            recipe = dataclasses.replace(recipe, seed=args.seed)
        tok = base.tokenizer
        records = key_kind_records(tok, base.model, args.keys, args.records, args.chunk, args.key_tokens,
                                   args.data_seed)
        profile = records_profile(base.model, records, pad_id)
        delta = max(0.0, float(card.law().predict(args.rank, profile.n)))
        start = time.perf_counter()
        p = run_point(base, LoraTemplate.from_dict(card.template), recipe, records, args.rank,
                      loss_before(base, records, pad_id), pad_id)
        p.update(keys=args.keys, chunk=args.chunk, key_tokens=args.key_tokens, seed=recipe.seed,
                 data_seed=args.data_seed,
                 predicted_unigram=round(float(predict(profile, delta, "unigram")[0]), 4),
                 kappa=kappa(profile, delta, p["coverage"]), seconds=round(time.perf_counter() - start, 1))
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps(p) + "\n")
        rows.append(p)
    print(report(rows))
    if args.record:
        record_key_factor(Path(resolve_card(args.law, "smollm2-135m")[1]), rows, args.out)


def record_key_factor(card_path: Path, rows: list[dict], runs_path: str) -> None:
    """Write κ(digits)/κ(vocab) into the card, with the points it came from (the planner applies it
    to records told apart only by their key's digits: memlaw.card.LawCard.key_scale)."""
    from memlaw.card import save_card

    f = key_factor(rows)
    if f is None:
        raise SystemExit("no key factor: the runs file needs points under both kinds of key")
    card = load_card(card_path)
    points = [{k: p[k] for k in ("keys", "rank", "records", "chunk", "key_tokens", "seed", "coverage",
                                 "predicted_unigram", "kappa", "steps", "stop_reason", "converged")}
              | {"data_seed": draw(p)} for p in rows]
    save_card(dataclasses.replace(card, key_factor={
        "digits_only_keys": round(f, 4), "source": "docs/results.md §2, 'The key factor'",
        "how": f"benchmarks/key_kind.py --out {runs_path} --record (content-free points, the card's recipe)",
        "points": points}), card_path)
    print(f"wrote key factor {f:.3f} into {card_path}")


if __name__ == "__main__":
    main()
