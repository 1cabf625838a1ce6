"""Coverage of one adapter read in float32 and in bf16, after training it in either dtype.

    python benchmarks/dtype_coverage.py runs/fresh3/tracking.jsonl --rank 2 --cycles 2 --train-dtype bfloat16
    python benchmarks/dtype_coverage.py runs/fresh3/tracking.jsonl --rank 2 --cycles 2 --train-dtype float32

Trains with the shipped card's template and recipe (every one of ``--cycles`` cycles), then scores
the same adapter four ways: the full forward and the training path (frozen-prefix cache), each in
float32 and under bf16 autocast. docs/results.md §2 has the numbers.
"""
from __future__ import annotations

import argparse
import time

import torch

from planner_accuracy import card_recipe  # a sibling script: benchmarks/ is on the path when run
from memlaw.card import load_card
from memlaw.corpus import encode_records
from memlaw.memft import CorpusSpec, FrozenPrefix, LoraTemplate, make_lora_model, seed_everything, train
from memlaw.models import load_base
from memlaw.planner.estimate import resolve_card
from memlaw.scoring import make_batch, score, summarize, target_log_softmax, token_stats

LN2 = 0.6931471805599453


def coverage(model, encoded, pad_id: int, bf16: bool, prefix: bool) -> float:
    """Share of target tokens with p > 0.5, all records in one batch."""
    with torch.no_grad():
        batch = make_batch(encoded, pad_id, next(model.parameters()).device)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if prefix:
                lp = FrozenPrefix(model, FrozenPrefix.usable(model), pad_id).log_softmax(batch, encoded)
            else:
                lp = target_log_softmax(model, batch)
        logp, _, _ = token_stats(lp, batch.targets)
        return float(((-logp.float()) < LN2).float().mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--train-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--law", default=None, help="the card whose template and recipe train (default: shipped)")
    args = ap.parse_args()
    card_path = resolve_card(args.law, "smollm2-135m")[1]
    card = load_card(card_path)
    recipe = card_recipe(card)
    recipe.cycles, recipe.until_converged, recipe.train_dtype, recipe.seed = \
        args.cycles, False, args.train_dtype, args.seed
    seed_everything(args.seed)
    base = load_base(card.base_model["name"])
    encoded = encode_records(base.tokenizer, CorpusSpec(args.corpus).read(), eos=False)
    pad_id = base.tokenizer.pad_token_id or 0
    model = make_lora_model(base.model, LoraTemplate.from_dict(card.template), args.rank, args.seed)
    t = time.perf_counter()
    res = train(model, encoded, recipe, pad_id=pad_id, progress=False)
    print(f"trained in {args.train_dtype}: {res.steps} steps, {time.perf_counter() - t:.0f} s")
    model.eval()
    print(f"scoring pass (float32): {summarize(score(model, encoded, pad_id=pad_id))['coverage']:.4f}")
    for bf16 in (False, True):
        for prefix in (False, True):
            print(f"read in {'bf16   ' if bf16 else 'float32'} {'training path' if prefix else 'full forward '}: "
                  f"{coverage(model, encoded, pad_id, bf16, prefix):.4f}")


if __name__ == "__main__":
    main()
