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
lm = HFLM(pretrained=base, peft=adapter, batch_size=int(batch), device="cpu", dtype="float32")
reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(r["prompt"], r["completion"]), idx=i)
        for i, r in enumerate(recs)]
res = lm.loglikelihood(reqs, disable_tqdm=True)
json.dump([{"ll": ll, "greedy": bool(g)} for ll, g in res], open(out, "w"))
"""


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(ROOT / "examples/phonebook.jsonl"))
    ap.add_argument("--work", type=Path, default=ROOT / "runs/lm-eval-speed")
    ap.add_argument("--batch-sizes", default="1,32",
                    help="lm-eval batch sizes to time (1 is HFLM's default; memaudit picks its own batches)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    from memlaw.models import resolve_model_path

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    adapter = args.work / "adapter"
    if not (adapter / "memlaw.json").exists():
        subprocess.run([str(BIN / "memft"), "train", args.corpus, "--model", "smollm2-135m", "--rank", "8",
                        "--max-steps", "150", "--lr", "0.05", "--cycles", "1", "--device", "cpu", "--quiet", "--out", str(adapter)],
                       check=True, env=env)
    base = resolve_model_path("smollm2-135m")
    report = args.work / "audit.json"
    script = args.work / "lm_eval_run.py"
    script.write_text(LM_EVAL_SCRIPT)
    lm_out = args.work / "lm_eval.json"
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    ours, theirs = [], {b: [] for b in sizes}
    for _ in range(args.repeat):  # alternate, so that a change in machine load hits both
        report.unlink(missing_ok=True)
        # --no-effect-check: the comparison with the base model is a second scoring pass (unless the
        # planner's cache has it) that lm-eval does not make; same work on both sides
        ours.append(timed([str(BIN / "memaudit"), str(adapter), "--corpus", args.corpus, "--quiet",
                           "--no-effect-check", "--json", str(report)], env))
        for b in sizes:
            theirs[b].append(timed([sys.executable, str(script), base, str(adapter), args.corpus,
                                    str(lm_out.with_suffix(f".b{b}.json")), str(b)], env))
    audit = json.loads(report.read_text())
    recs = sorted(audit["records"], key=lambda r: r["index"])
    exact = [r["exact"] for r in recs]
    ll_ours = [r["log_likelihood"] for r in recs]
    t_ours = statistics.median(ours)
    print(f"records {len(exact)}, target tokens {audit['summary']['target_tokens']}, exact {sum(exact)} (memaudit)")
    print(f"memaudit end to end            {t_ours:7.1f} s   (runs: {', '.join(f'{x:.1f}' for x in ours)})")
    for b in sizes:
        got = json.loads(lm_out.with_suffix(f".b{b}.json").read_text())
        greedy = [x["greedy"] for x in got]
        agree = sum(a == g for a, g in zip(exact, greedy))
        dll = max(abs(a - x["ll"]) for a, x in zip(ll_ours, got))
        t = statistics.median(theirs[b])
        print(f"lm-eval loglikelihood, batch {b:<3} {t:7.1f} s   (runs: {', '.join(f'{x:.1f}' for x in theirs[b])})"
              f"   memaudit {t / t_ours:.2f}x faster; verdicts agree on {agree}/{len(exact)} records, "
              f"max |Δ log-likelihood| {dll:.1e} nats")

if __name__ == "__main__":
    main()
