"""Calibration speed: memlaw's sweep against the naive way, same points, one process.

Naive (what the paper's scripts do): every (rank, length) point is a separate run of the full
model for a fixed number of steps. memlaw: the frozen layers below the LoRA template run once per
record (FrozenPrefix), and a point stops at convergence (all tokens locked, or a plateau).
Prints both wall times, the ratio and the largest relative ΔL difference per point.

    .venv/bin/python benchmarks/calibration_speed.py --ranks 1,2,4,8 --lengths 64,128,256
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from memlaw.calibration.data import random_records, token_pool
from memlaw.calibration.defaults import default_recipe
from memlaw.calibration.point import run_point
from memlaw.memft import LoraTemplate
from memlaw.models import load_base
from memlaw.scoring import score, summarize


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ranks", default="1,2,4,8")
    ap.add_argument("--lengths", default="64,128,256")
    args = ap.parse_args()
    ranks = [int(x) for x in args.ranks.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    base = load_base(args.model)
    n_layers = base.model.config.num_hidden_layers
    template = LoraTemplate(target_modules=("q_proj", "v_proj"), layers=(n_layers - 2, n_layers - 1))
    ours_recipe = default_recipe()
    # the naive recipe: the same steps budget, run to the end (no plateau stop), full forward passes
    naive_recipe = dataclasses.replace(ours_recipe, patience=10**9)
    pad = base.tokenizer.pad_token_id or 0
    pool = token_pool(base.tokenizer, base.model)
    times = {"naive": 0.0, "memlaw": 0.0}
    worst = 0.0
    print(f"{'r':>3} {'ℓ':>4} | {'naive ΔL':>9} {'s':>6} | {'memlaw ΔL':>9} {'s':>6} | rel. diff")
    for length in lengths:
        recs = random_records(base.tokenizer, pool, length, 64, 0)
        l_before = summarize(score(base.model, recs, pad_id=pad))["mean_loss"]
        for r in ranks:
            res = {}
            for name, recipe, cache in (("naive", dataclasses.replace(naive_recipe, batch_size=len(recs)), False),
                                        ("memlaw", dataclasses.replace(ours_recipe, batch_size=len(recs)), True)):
                t = time.perf_counter()
                res[name] = run_point(base, template, recipe, recs, r, l_before, pad_id=pad, cache_prefix=cache)
                times[name] += time.perf_counter() - t
            dl = {k: v["loss_before"] - v["loss_after"] for k, v in res.items()}
            rel = abs(dl["memlaw"] - dl["naive"]) / abs(dl["naive"])
            worst = max(worst, rel)
            print(f"{r:>3} {length:>4} | {dl['naive']:9.3f} {res['naive']['seconds']:6.1f} | "
                  f"{dl['memlaw']:9.3f} {res['memlaw']['seconds']:6.1f} | {rel:.2%}", flush=True)
    print(f"naive  : {times['naive']:.1f} s")
    print(f"memlaw : {times['memlaw']:.1f} s")
    print(f"speed-up {times['naive'] / times['memlaw']:.1f}x, largest ΔL difference {worst:.2%}")


if __name__ == "__main__":
    main()
