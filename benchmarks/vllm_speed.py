"""Scoring throughput: vLLM against transformers, same records, same adapter, one process.

Target tokens' log-probs for N key → value records (~16-token targets, as in audit_speed.py),
under (a) the base model and (b) a LoRA adapter (rank 8 on q/v of every layer, random non-zero
weights so it changes every number). Prints tokens scored per second for each engine, the ratio,
vLLM's engine start-up time apart, and the largest |Δ log p| against transformers.

    .venv/bin/python benchmarks/vllm_speed.py --model smollm2-135m --records 500

vLLM's LoRA path runs one sequence at a time (its batched LoRA prompt_logprobs crashes, see
memlaw/vllm_backend.py); "merged" folds the adapter into the weights from the safetensors files
(memlaw.modelfiles.stream_merge, as memaudit does) and batches. --tensor-parallel-size N splits
the model over N GPUs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def max_dlogp(a, b) -> float:
    return max(float(np.abs(x.logprob - y.logprob).max()) for x, y in zip(a, b))


def main():
    import torch
    from peft import LoraConfig, get_peft_model

    from audit_speed import make_records
    from memlaw.models import load_base
    from memlaw.scoring import score
    from memlaw.modelfiles import check_adapter_against, read_model_files, stream_merge
    from memlaw.models import read_adapter_config
    from memlaw.vllm_backend import VLLMScorer, max_len, require_vllm, vllm_model_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--records", type=int, default=500)
    ap.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs vLLM splits the model over")
    args = ap.parse_args()
    tp = dict(tensor_parallel_size=args.tensor_parallel_size)
    require_vllm()

    base = load_base(args.model)
    pad = base.tokenizer.pad_token_id or 0
    recs = make_records(base.tokenizer, args.records)
    n_tokens = sum(len(e.key_ids) + len(e.target_ids) for e in recs)
    length = max_len(recs)
    rows = []

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    # (a) base model
    ref_base, t_hf_base = timed(lambda: score(base.model, recs, pad_id=pad))
    scorer, t_start = timed(lambda: VLLMScorer(vllm_model_path(args.model), max_model_len=length, **tp))
    got, t_v = timed(lambda: scorer.score(recs))
    scorer.close()
    rows.append(("base model", t_hf_base, t_v, t_start, max_dlogp(ref_base, got)))

    # (b) a LoRA adapter
    torch.manual_seed(0)
    peft_model = get_peft_model(base.model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    peft_model.eval()
    tmp = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    try:
        adapter = tmp / "adapter"
        peft_model.save_pretrained(str(adapter))
        ref, t_hf = timed(lambda: score(peft_model, recs, pad_id=pad))
        scorer, t_start = timed(lambda: VLLMScorer(vllm_model_path(args.model), max_model_len=length, lora_rank=8, **tp))
        got, t_v = timed(lambda: scorer.score(recs, adapter_dir=adapter))
        scorer.close()
        rows.append(("adapter, vLLM LoRA (1 seq/step)", t_hf, t_v, t_start, max_dlogp(ref, got)))
        def merge():  # what memaudit --vllm-mode merged does: from the files, tensor by tensor
            files = read_model_files(args.model)
            weights = adapter / "adapter_model.safetensors"
            table = check_adapter_against(files, weights, adapter)
            return stream_merge(files, read_adapter_config(adapter), table, weights, tmp / "merged")

        (folder, t_merge) = timed(merge)
        scorer, t_start = timed(lambda: VLLMScorer(str(folder), max_model_len=length, **tp))
        got, t_v = timed(lambda: scorer.score(recs))
        scorer.close()
        rows.append((f"adapter, vLLM merged (+{t_merge:.1f} s merge)", t_hf, t_v, t_start, max_dlogp(ref, got)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"model {args.model}: {len(recs)} records, {n_tokens} tokens scored per pass; torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'what':44s} {'transformers tok/s':>18s} {'vLLM tok/s':>11s} {'vLLM/HF':>8s} {'vLLM start s':>12s} "
          f"{'max |dlogp|':>11s}")
    for what, t_hf, t_v, t_start, d in rows:
        print(f"{what:44s} {n_tokens / t_hf:18.0f} {n_tokens / t_v:11.0f} {t_hf / t_v:8.2f} {t_start:12.1f} {d:11.1e}")


if __name__ == "__main__":
    main()
