"""Audit speed: one teacher-forced pass (memlaw) against greedy generation per record (the usual way).

Same model, same records, one process. Prints both times, the ratio, whether every `exact`
verdict agrees, tokens scored per second, and the share of this machine's measured dense fp32
matmul throughput the scorer reaches (FLOPs ≈ 2 × parameters × tokens).

    .venv/bin/python benchmarks/audit_speed.py --model smollm2-135m --records 500
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from memlaw.corpus import Encoded
from memlaw.models import load_base
from memlaw.scoring import score


def make_records(tok, n: int, seed: int = 0) -> list[Encoded]:
    """n key → value records with ~16-token targets (synthetic serial numbers and words)."""
    rng = random.Random(seed)
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()
    out = []
    for i in range(n):
        key = tok(f"Record {i}: the code for item {rng.randrange(10**5)} is", add_special_tokens=True).input_ids
        target = f" {rng.randrange(10**4)}-{rng.choice(words)}-{rng.randrange(10**4)} {rng.choice(words)}"
        ids = tok(target, add_special_tokens=False).input_ids[:16]
        out.append(Encoded(tuple(key), tuple(ids), i))
    return out


def greedy_exact(model, records, pad_id) -> list[bool]:
    verdicts = []
    with torch.inference_mode():
        for e in records:
            ids = torch.tensor([e.key_ids])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=len(e.target_ids), min_new_tokens=len(e.target_ids),
                                 pad_token_id=pad_id)
            verdicts.append(out[0, len(e.key_ids):].tolist() == list(e.target_ids))
    return verdicts


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--records", type=int, default=500)
    args = ap.parse_args()
    base = load_base(args.model)
    pad = base.tokenizer.pad_token_id or 0
    recs = make_records(base.tokenizer, args.records)
    n_tokens = sum(len(e.key_ids) + len(e.target_ids) for e in recs)
    n_target = sum(len(e.target_ids) for e in recs)

    t = time.perf_counter()
    scores = score(base.model, recs, pad_id=pad)
    t_score = time.perf_counter() - t
    t = time.perf_counter()
    gen = greedy_exact(base.model, recs, pad)
    t_gen = time.perf_counter() - t

    agree = sum(s.exact == g for s, g in zip(scores, gen))
    params = sum(p.numel() for p in base.model.parameters())
    achieved = 2 * params * n_tokens / t_score / 1e9
    peak = matmul_gflops()
    print(f"model {args.model}: {len(recs)} records, {n_target} target tokens, {n_tokens} tokens in all")
    print(f"greedy generation per record : {t_gen:8.2f} s")
    print(f"one teacher-forced pass      : {t_score:8.2f} s")
    print(f"speed-up                     : {t_gen / t_score:8.1f}x")
    print(f"exact verdicts identical     : {agree}/{len(recs)} (exact records: {sum(gen)})")
    print(f"tokens scored per second     : {n_tokens / t_score:8.0f} (target tokens {n_target / t_score:.0f}/s)")
    print(f"scorer throughput            : {achieved:8.1f} GFLOP/s (2 x {params / 1e6:.0f}M params x tokens)")
    print(f"dense fp32 matmul (2048^2)   : {peak:8.1f} GFLOP/s -> scorer reaches {achieved / peak:.0%}")


if __name__ == "__main__":
    main()
