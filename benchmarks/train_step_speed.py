"""One calibration training step, side by side: the naive way (full model, float32) against
memlaw's (frozen-prefix cache, bf16 training forward), in one process, and each as a share of the
machine's measured matmul throughput.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_step_speed.py [--lengths 64,256] [--steps 8]

FLOPs counted as executed: per target token, the LM head (vocab × hidden) forward and its input
gradient (2 × 2·V·H), plus the adapted layers' forward and backward (≈ 3 × 2 × their dense
parameters per token over the whole sequence); the frozen layers below run once per record in
memlaw's path and every step in the naive one (forward only: no weight or input gradient there).
"""

from __future__ import annotations

import argparse
import time

import torch


def matmul_peak(dtype, n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def main():
    from memlaw.calibration.data import random_records, token_pool
    from memlaw.memft import FrozenPrefix, LoraTemplate, make_lora_model
    from memlaw.models import load_base
    from memlaw.scoring import make_batch, target_log_softmax, token_stats

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="64,256")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    base = load_base(args.model)
    cfg = base.model.config
    V, H, n_layers = cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers
    per_layer = sum(p.numel() for n, p in base.model.named_parameters() if ".layers.0." in n)
    pool = token_pool(base.tokenizer, base.model)
    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak: fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s "
          f"({torch.get_num_threads()} threads)")
    print("| ℓ | way | s/step | GFLOP/step | GFLOP/s | share of peak | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    template = LoraTemplate(target_modules=("q_proj", "v_proj"), layers=(n_layers - 2, n_layers - 1))
    for L in (int(x) for x in args.lengths.split(",")):
        recs = random_records(base.tokenizer, pool, L, 64, 0)
        seq = sum(len(e.key_ids) + len(e.target_ids) for e in recs)
        head = 2 * 2 * V * H * L
        top = 3 * 2 * 2 * per_layer * seq
        below = 2 * (n_layers - 2) * per_layer * seq
        times = {}
        for way in ("naive", "memlaw"):
            model = make_lora_model(base.model, template, 4, 0)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-3)
            batch = make_batch(recs, 0)
            prefix = FrozenPrefix(model, FrozenPrefix.usable(model), 0) if way == "memlaw" else None
            for i in range(args.steps + 1):
                if i == 1:
                    t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=way == "memlaw"):
                    lp = prefix.log_softmax(batch, recs) if prefix else target_log_softmax(model, batch)
                loss = -token_stats(lp, batch.targets)[0].mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            times[way] = (time.perf_counter() - t) / args.steps
            base.model = model.unload()
            flops = head + top + (below if way == "naive" else 0)
            peak = peaks["float32" if way == "naive" else "bfloat16"]
            print(f"| {L} | {way} | {times[way]:.3f} | {flops / 1e9:.1f} | {flops / times[way] / 1e9:.0f} | "
                  f"{flops / times[way] / peak:.0%} | {times['naive'] / times[way]:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
