"""memaudit end to end against lm-evaluation-harness's ``loglikelihood`` on the same adapter and records.

The peer a user would otherwise reach for: lm-eval's ``HFLM(pretrained=…, peft=…)`` returns, per
(context, continuation), the log-likelihood and whether the continuation is the greedy one — the
same "exact record" verdict memaudit gives. Both run as separate processes, timed from launch to
exit (start-up, model load, checks, scoring, reports), one after the other on the same machine;
then the verdicts are compared record by record. lm-eval is a benchmark-only dependency:

    .venv/bin/pip install lm-eval
    .venv/bin/python benchmarks/lm_eval_speed.py                       # SmolLM2-135M, 300 phone-book records
    .venv/bin/python benchmarks/lm_eval_speed.py --repeat 3            # median of 3 runs each

The adapter is trained once (``runs/lm-eval-speed/adapter``: rank 8, lr 0.05, 150 steps, so that some
records are exact and some are not) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

LM_EVAL_SCRIPT = r"""
import json, sys
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
base, adapter, corpus, out, batch = sys.argv[1:6]
recs = [json.loads(x) for x in open(corpus) if x.strip()]
lm = HFLM(pretrained=base, peft=adapter, batch_size=batch if batch.startswith("auto") else int(batch),
          max_batch_size=64, device="cpu", dtype="float32")
reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(r["prompt"], r["completion"]), idx=i)
        for i, r in enumerate(recs)]
res = lm.loglikelihood(reqs, disable_tqdm=True)
json.dump([{"ll": ll, "greedy": bool(g)} for ll, g in res], open(out, "w"))
"""

#: memaudit's runs: label → (extra options, environment, empty the prefix store first). The adapter
#: sits on layers 28-29 (the card's template), so layers 0-27 compute the base model's states: a
#: first audit of the corpus stores them (memlaw.scoring.PrefixStates), a later audit of any adapter
#: above layer 27 on the same base model and corpus reads them. ACTIVE restores torch's default of
#: spinning OpenMP threads, which memaudit turns off unless OMP_WAIT_POLICY is set (memlaw/cli/memaudit.py).
OURS = {
    "memaudit (float32), first audit of the corpus": ([], {}, True),
    "memaudit (float32), a later audit (prefix stored)": ([], {}, False),
    "memaudit (float32), no prefix store (MEMLAW_PREFIX_CACHE_MB=0)": ([], {"MEMLAW_PREFIX_CACHE_MB": "0"}, False),
}


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def executed_flops(corpus: str) -> dict:
    """Matmul FLOPs memaudit's float32 pass executes on ``corpus``: every position of its padded,
    trimmed batches through every linear layer and the attention products, and the LM head at the
    target positions only (memlaw.scoring); and lm-eval's, with the LM head at every position."""
    from memlaw.corpus import encode_records, read_corpus
    from memlaw.models import load_base
    from memlaw.scoring import length_batches

    base = load_base("smollm2-135m")
    cfg = base.model.config
    enc = encode_records(base.tokenizer, read_corpus(corpus))
    linear = sum(p.numel() for n, p in base.model.named_parameters() if ".layers." in n and n.endswith("proj.weight"))
    head = cfg.vocab_size * cfg.hidden_size
    positions = attn = 0
    for chunk in length_batches(enc):
        width = max(len(e.key_ids) + len(e.target_ids) for e in chunk) - 1  # the last token is trimmed
        positions += width * len(chunk)
        attn += 2 * 2 * width * width * cfg.hidden_size * cfg.num_hidden_layers * len(chunk)  # QK^T and AV
    targets = sum(len(e.target_ids) for e in enc)
    ours = 2 * linear * positions + attn + 2 * head * targets
    k = 28  # the adapter's lowest layer (the card's template): below it, a later audit reads stored states
    above = sum(p.numel() for n, p in base.model.named_parameters() if n.endswith("proj.weight")
                and ".layers." in n and int(n.split(".layers.")[1].split(".")[0]) >= k)
    warm = 2 * above * positions + attn * (cfg.num_hidden_layers - k) / cfg.num_hidden_layers + 2 * head * targets
    lm_positions = sum(len(e.key_ids) + len(e.target_ids) - 1 for e in enc)  # lm-eval: unpadded lower bound
    return {"ours": ours, "warm": warm, "linear": 2 * linear * positions, "attention": attn, "head": 2 * head * targets,
            "positions": positions, "targets": targets, "lm_eval": 2 * (linear + head) * lm_positions}


def token_verdicts(report: Path) -> list:
    """Per token (record order): p as the report writes it, locked (p > 0.5), and the argmax token."""
    recs = sorted(json.loads(report.read_text())["records"], key=lambda r: r["index"])
    return [(r["index"], t["p"], t["p"] is not None and t["p"] > 0.5, t["argmax"]) for r in recs for t in r["tokens"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(ROOT / "examples/phonebook.jsonl"))
    ap.add_argument("--work", type=Path, default=ROOT / "runs/lm-eval-speed")
    ap.add_argument("--batch-sizes", default="32,64,auto",
                    help="lm-eval batch sizes to time (1 is HFLM's default; auto probes with 5 passes of up to "
                         "64 records, then runs at what fits; memaudit picks its own batches)")
    ap.add_argument("--passive-lm-eval", action="store_true",
                    help="also time lm-eval at its largest batch size with OMP_WAIT_POLICY=PASSIVE")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--flops", type=float, default=None, metavar="SECONDS",
                    help="only print the FLOPs memaudit's pass executes, the matmul peak measured now, and the "
                         "share of it that a pass of SECONDS reaches")
    args = ap.parse_args()
    if args.flops is not None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import torch
        from train_step_speed import matmul_peak

        f = executed_flops(args.corpus)
        peaks = {d: matmul_peak(getattr(torch, d)) for d in ("float32", "bfloat16")}
        print(f"memaudit float32 pass: {f['ours'] / 1e9:.0f} GFLOP as executed ({f['linear'] / 1e9:.0f} linear layers "
              f"over {f['positions']} padded positions, {f['attention'] / 1e9:.1f} attention, {f['head'] / 1e9:.0f} LM "
              f"head at {f['targets']} target positions); lm-eval's pass ≥ {f['lm_eval'] / 1e9:.0f} GFLOP")
        print(f"matmul peak now ({torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}): "
              f"fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s; a {args.flops:.1f} s "
              f"pass: {f['ours'] / args.flops / 1e9:.0f} GFLOP/s, {f['ours'] / args.flops / peaks['float32']:.0%} of fp32")
        print(f"a later audit (layers 0-27 stored): {f['warm'] / 1e9:.0f} GFLOP as executed")
        return
    from memlaw.models import cache_dir, resolve_model_path

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OMP_WAIT_POLICY", None)
    adapter = args.work / "adapter"
    if not (adapter / "memlaw.json").exists():
        subprocess.run([str(BIN / "memft"), "train", args.corpus, "--model", "smollm2-135m", "--rank", "8",
                        "--max-steps", "150", "--lr", "0.05", "--cycles", "1", "--device", "cpu", "--quiet", "--out", str(adapter)],
                       check=True, env=env)
    base = resolve_model_path("smollm2-135m")
    script = args.work / "lm_eval_run.py"
    script.write_text(LM_EVAL_SCRIPT)
    lm_out = args.work / "lm_eval.json"
    theirs_runs = {f"lm-eval loglikelihood, batch {b}": (b, {}) for b in args.batch_sizes.split(",")}
    if args.passive_lm_eval:
        b = args.batch_sizes.split(",")[-1 if args.batch_sizes.split(",")[-1] != "auto" else -2]
        theirs_runs[f"lm-eval loglikelihood, batch {b}, OMP_WAIT_POLICY=PASSIVE"] = (b, {"OMP_WAIT_POLICY": "PASSIVE"})
    times = {k: [] for k in [*OURS, *theirs_runs]}
    reports = {k: args.work / f"audit.{i}.json" for i, k in enumerate(OURS)}
    outs = {k: lm_out.with_suffix(f".{i}.json") for i, k in enumerate(theirs_runs)}
    for _ in range(args.repeat):  # alternate, so that a change in machine load hits all alike
        for k, (opts, extra, cold) in OURS.items():
            reports[k].unlink(missing_ok=True)
            if cold:
                shutil.rmtree(cache_dir() / "prefix", ignore_errors=True)
            # --no-effect-check: the comparison with the base model is a second scoring pass (unless the
            # planner's cache has it) that lm-eval does not make; same work on both sides
            times[k].append(timed([str(BIN / "memaudit"), str(adapter), "--corpus", args.corpus, "--quiet",
                                   "--no-effect-check", *opts, "--json", str(reports[k])], {**env, **extra}))
        for k, (b, extra) in theirs_runs.items():
            times[k].append(timed([sys.executable, str(script), base, str(adapter), args.corpus, str(outs[k]), b],
                                  {**env, **extra}))
    ref_key = next(iter(OURS))
    audit = json.loads(reports[ref_key].read_text())
    recs = sorted(audit["records"], key=lambda r: r["index"])
    exact = [r["exact"] for r in recs]
    ll_ours = [r["log_likelihood"] for r in recs]
    print(f"records {len(exact)}, target tokens {audit['summary']['target_tokens']}, exact {sum(exact)}, "
          f"coverage {audit['summary']['coverage']:.4f} (memaudit); load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    ref_tokens = token_verdicts(reports[ref_key])
    best = min(statistics.median(times[k]) for k in theirs_runs if "PASSIVE" not in k)
    for k in times:
        t = statistics.median(times[k])
        line = f"{k:<58} {t:7.1f} s   (runs: {', '.join(f'{x:.1f}' for x in times[k])})"
        if k in OURS:
            rep = json.loads(reports[k].read_text())
            same = token_verdicts(reports[k]) == ref_tokens
            line += (f"   {best / t:.2f}x faster than lm-eval's best batch; per-token verdicts "
                     f"{'identical to' if same else 'DIFFER from'} the first run's (p, locked, argmax)"
                     + (f" ({rep['backend_note']})" if rep.get("backend_note") else ""))
        else:
            got = json.loads(outs[k].read_text())
            agree = sum(a == x["greedy"] for a, x in zip(exact, got))
            dll = max(abs(a - x["ll"]) for a, x in zip(ll_ours, got))
            line += f"   exact-record verdicts agree on {agree}/{len(exact)}, max |Δ log-likelihood| {dll:.1e} nats"
        print(line, flush=True)


if __name__ == "__main__":
    main()
