"""Planner accuracy: does the predicted rank reach the coverage target, and a quarter of it not?

For each corpus: `memplan estimate` (the shipped card of the model) gives a rank R; train an
adapter with the card's own template and recipe at R and at max(1, R/4) with memft, then audit
it (one teacher-forced scoring pass). Prints predicted vs measured coverage.

    .venv/bin/python benchmarks/planner_accuracy.py examples/phonebook_small.jsonl examples/errors.jsonl ...
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from memlaw.memft import CorpusSpec, LoraTemplate, Recipe, train_adapter
from memlaw.planner.estimate import estimate, resolve_card


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpora", nargs="+")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--law", default=None)
    ap.add_argument("--coverage", type=float, default=1.0)
    ap.add_argument("--out", default="runs/planner-accuracy.jsonl")
    args = ap.parse_args()
    card, card_path, _ = resolve_card(args.law, args.model)
    template = LoraTemplate.from_dict(card.template)
    rows = []
    for corpus in args.corpora:
        spec = CorpusSpec(corpus)
        est = estimate(spec, card, args.coverage, card_path=str(card_path)).to_dict()
        rank = est["recommended_rank"]
        for r in sorted({rank, max(1, rank // 4)}, reverse=True):
            recipe = Recipe(method=card.recipe.get("method", "sft"), lr=card.recipe["lr"],
                            max_steps=card.recipe["max_steps"], patience=card.recipe.get("patience", 30),
                            seed=card.recipe.get("seed", 0), batch_size=10**6)  # all records, as calibrated
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                side = train_adapter(spec, card.base_model["name"], r, Path(tmp) / "a", template=template,
                                     recipe=recipe, progress=False)
                f = side["final"]
            row = {"corpus": corpus, "target_tokens": est["target_tokens"], "loss_before": est["loss_before"],
                   "predicted_rank": rank, "rank_interval": est["rank_interval"], "trained_rank": r,
                   "coverage": f["coverage"], "exact": f["exact_records"], "records": f["records"],
                   "loss_after": f["mean_loss"], "predicted_loss_after": est.get("predicted_loss_after"),
                   "steps": side["train"]["steps"], "seconds": round(time.perf_counter() - t, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"\n| corpus | ℓ | L_before | predicted rank [interval] | trained rank | coverage | exact | L_after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {Path(r['corpus']).name} | {r['target_tokens']} | {r['loss_before']:.2f} | {r['predicted_rank']} "
              f"{r['rank_interval']} | {r['trained_rank']} | {r['coverage']:.3f} | {r['exact']}/{r['records']} | "
              f"{r['loss_after']:.3f} |")


if __name__ == "__main__":
    main()
