"""Does a rank store the same nats whatever each token carries? Calibration points on random
tokens from pools of different entropy — the 10 digits (ln 10 = 2.30 nats a token), K tokens of
the vocabulary, the whole vocabulary (ln 49,135 = 10.80, the shipped card's data) — trained
with the shipped card's template and recipe, as `memplan calibrate` trains its points.

    python benchmarks/pool_entropy.py --pool digits --points 1:1024,2:1024,1:256 --out runs/pool-entropy.jsonl
    python benchmarks/pool_entropy.py --out runs/pool-entropy.jsonl --report-only

The question behind it (issue #13): the planner over-predicts coverage on digit strings at the
card's named rank. If a rank stores fewer nats of low-entropy tokens than of vocabulary tokens,
the law itself depends on per-token entropy; if it stores the same, the gap is in how the stored
nats turn into coverage. docs/results.md §1 has the numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from planner_accuracy import card_recipe, read_runs  # a sibling script: benchmarks/ is on the path when run

from memlaw.calibration.data import FRESH_SEED_OFFSET, random_records, token_pool
from memlaw.calibration.point import loss_before, run_point
from memlaw.card import load_card, point_delta
from memlaw.memft import LoraTemplate
from memlaw.planner.estimate import resolve_card

CHUNK = 64  # target tokens a record, as the card's sweep


def pool_ids(name: str, tokenizer, model) -> np.ndarray:
    vocab = token_pool(tokenizer, model)
    if name == "vocab":
        return vocab
    if name == "digits":
        return np.array([tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)], dtype=np.int64)
    k = int(name)  # K tokens of the vocabulary, drawn once with a fixed seed
    return np.sort(np.random.default_rng(k).choice(vocab, size=k, replace=False))


def parse_points(text: str) -> list[tuple[int, int]]:
    return [(int(r), int(n)) for r, n in (p.split(":") for p in text.split(","))]


def nats_stored(p: dict) -> float:
    """ℓ · (min(L_before, ln N) − L_after): the information held beyond the pool's entropy (the
    card's source ΔL)."""
    return p["length"] * point_delta({**p, "loss_source": p["ln_N"]}, "source")


def records_profile(model, records, pad_id: int):
    """The base model's loss profile of these records (the planner's view of them)."""
    from memlaw.planner.coverage import LossProfile
    from memlaw.scoring import score

    scores = score(model, records, pad_id=pad_id)
    return LossProfile.from_losses(np.concatenate([-s.logprob for s in scores]),
                                   np.concatenate([s.target_ids for s in scores]))


def planner_predictions(base, card, records, rank: int, pad_id: int) -> dict:
    """What `memplan estimate` predicts for these very records at this rank, per predictor, and ρ: the
    card's nats for the rank over the nats `unigram` needs to lock every token (ρ ≥ 1: "enough")."""
    from memlaw.planner.coverage import predict

    profile = records_profile(base.model, records, pad_id)
    delta = max(0.0, float(card.law().predict(rank, profile.n)))
    out = {name: round(float(predict(profile, delta, name)[0]), 4) for name in ("budget", "unigram")}
    out["rho"] = round(delta / profile.unigram_for_coverage(1.0), 3)
    return out


def card_and_base(law: str | None):
    """(card, its recipe, the base model it was calibrated on, pad id): what a benchmark needs to train
    points the way the card's own were trained."""
    from memlaw.models import load_base

    card = load_card(resolve_card(law, "smollm2-135m")[1])
    base = load_base(card.base_model["name"])
    tok = base.tokenizer
    return card, card_recipe(card), base, tok.pad_token_id if tok.pad_token_id is not None else 0


def report(rows: list[dict]) -> str:
    out = ["| pool | ln N | rank | ℓ | L_before | L_after at B → end | coverage | planner predicts (unigram) | ρ "
           "| steps (stop) | nats stored | of ℓ·ln N | fresh-data loss | s |", "| --- " * 14 + "|"]
    for p in sorted(rows, key=lambda p: (p["ln_N"], p["rank"], p["length"])):
        b = f"{p['loss_after_B']:.3f} → " if "loss_after_B" in p else "— → "
        out.append(f"| {p['pool']} | {p['ln_N']:.2f} | {p['rank']} | {p['length']} | {p['loss_before']:.3f} "
                   f"| {b}{p['loss_after']:.3f} | {p['coverage']:.3f} | {p.get('predicted', {}).get('unigram', float('nan')):.3f} "
                   f"| {p.get('predicted', {}).get('rho', float('nan')):.2f} "
                   f"| {p['steps']} ({p['stop_reason']}) "
                   f"| {nats_stored(p):,.0f} | {nats_stored(p) / (p['length'] * p['ln_N']):.2f} "
                   f"| {p.get('loss_fresh_after', float('nan')):.3f} | {p['seconds']:.0f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", default="digits", help="digits, vocab, or K (K tokens of the vocabulary)")
    ap.add_argument("--points", default="1:1024,2:1024,1:256", help="rank:length,… in the order to run")
    ap.add_argument("--law", default=None, help="the card whose template and recipe train (default: shipped)")
    ap.add_argument("--out", default="runs/pool-entropy.jsonl")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--card-points", action="store_true",
                    help="also the card's own points (the vocabulary pool) at the ranks and lengths run here")
    args = ap.parse_args()
    out = Path(args.out)
    rows = read_runs(out)
    if not args.report_only:
        card, recipe, base, pad_id = card_and_base(args.law)
        tok = base.tokenizer
        pool = pool_ids(args.pool, tok, base.model)
        template = LoraTemplate.from_dict(card.template)
        done = {(p["pool"], p["rank"], p["length"]) for p in rows}
        for rank, length in parse_points(args.points):
            if (args.pool, rank, length) in done:
                continue
            records = random_records(tok, pool, length, CHUNK, 0)
            fresh = random_records(tok, pool, length, CHUNK, FRESH_SEED_OFFSET)
            start = time.perf_counter()
            l_before = loss_before(base, records, pad_id)
            p = run_point(base, template, recipe, records, rank, l_before, pad_id, fresh=fresh)
            p["predicted"] = planner_predictions(base, card, records, rank, pad_id)
            p.update(pool=args.pool, pool_size=int(len(pool)), ln_N=math.log(len(pool)),
                     seconds=round(time.perf_counter() - start, 1))
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(json.dumps(p) + "\n")
            rows.append(p)
            print(report([p]).splitlines()[-1], flush=True)
        if args.card_points:  # the same records `memplan calibrate` trained them on (data seed 0, chunk 64)
            have = {(p["rank"], p["length"]) for p in rows}
            vocab = token_pool(tok, base.model)
            for c in card.points:
                if (c["rank"], c["length"]) in have and not any(p["pool"] == "vocab" and (p["rank"], p["length"]) ==
                                                                (c["rank"], c["length"]) for p in rows):
                    rows.append({**c, "pool": "vocab (card)", "pool_size": int(len(vocab)),
                                 "ln_N": math.log(len(vocab)), "predicted": planner_predictions(
                                     base, card, random_records(tok, vocab, c["length"], CHUNK, 0), c["rank"], pad_id)})
        missing = [p for p in rows if "predicted" not in p and p["pool"] == args.pool]
        for p in missing:  # points written before the column existed
            records = random_records(tok, pool, p["length"], CHUNK, 0)
            p["predicted"] = planner_predictions(base, card, records, p["rank"], pad_id)
        if missing:
            out.write_text("".join(json.dumps(p) + "\n" for p in rows if p["pool"] != "vocab (card)"))
    print(report(rows))


if __name__ == "__main__":
    main()
