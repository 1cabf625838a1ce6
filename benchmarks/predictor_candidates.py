"""Coverage-predictor candidates not (yet) in the planner, against trained runs (docs/results.md §2).

The shipped `unigram` predictor prices a token at min(base loss, its unigram code in the corpus).
The candidate here, `context`, also offers the base model's loss on that token with other records
of the corpus in its context — what a learner of the corpus's *kind* (its format, its word list,
the second half of " st|oat") can predict without the record's own fact; the adapter pays the
same naming cost as `unigram` first. ``--lock-level`` sets the loss a token must reach to count
as locked in the price (ln 2 is the definition; lower charges the token what training really
spends on it, since a trained token ends well below ln 2).

In-context losses, at about twice the base pass: records in a fixed shuffled order are scored K at
a time after the K records before them, so each sees K … 2K−1 other records and never itself.

    .venv/bin/python benchmarks/predictor_candidates.py runs/heldout/*.jsonl runs/fresh/*.jsonl \\
        --runs runs/planner-accuracy-v3.jsonl runs/fresh/runs.jsonl
    .venv/bin/python benchmarks/predictor_candidates.py runs/fresh3/*.jsonl --ranks 1,2   # predictions only
    … --law cal/smollm2-cpu/law.json     # with another card (e.g. one calibrated on this CPU)
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np

from memlaw.corpus import corpus_sha256, encode_records
from memlaw.memft import CorpusSpec
from memlaw.planner.baseloss import cache_key, measure_or_load, model_identity, read_cached_tokens
from memlaw.planner.estimate import resolve_card

LN2 = math.log(2.0)


def in_context_losses(base, encoded, k: int = 8, seed: int = 0) -> np.ndarray:
    """Per target token (corpus order): −ln p with K … 2K−1 other records of the corpus before it."""
    import torch

    tok, model = base.tokenizer, base.model
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id

    def body(e):
        key = list(e.key_ids)
        return (key[1:] if key and key[0] == bos else key), list(e.target_ids)

    n = len(encoded)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = [None] * n
    for c0 in range(0, n, k):
        chunk = order[c0:c0 + k]
        context = [j for j in (order[(c0 - k + i) % n] for i in range(k)) if j not in chunk] if n > k else []
        ids = [bos] if bos is not None else []
        for j in context:
            key, target = body(encoded[j])
            ids += key + target + newline
        spans = []
        for i in chunk:
            key, target = body(encoded[i])
            ids += key
            spans.append((i, len(ids), len(target)))
            ids += target + newline
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        for i, start, t in spans:
            target = torch.tensor(ids[start:start + t])
            out[i] = -logp[start - 1:start - 1 + t].gather(1, target[:, None])[:, 0].numpy()
    return np.concatenate(out).astype(np.float64)


def corpus_losses(corpus: str, model: str, work: Path, k: int, base_cache: dict) -> dict:
    """Base losses, ids, in-context losses (cached under ``work``), unigram code and naming cost."""
    spec = CorpusSpec(corpus)
    sha = corpus_sha256(corpus)
    bl, _, _ = measure_or_load(spec, spec.read(), model, sha)
    tokens = read_cached_tokens(cache_key(model_identity(model), sha, spec, "transformers"))
    ids, l = tokens["ids"], -tokens["logprob"].astype(np.float64)
    path = work / f"{Path(corpus).stem}-{sha[:12]}-k{k}.npz"
    if path.exists():
        li = np.load(path)["l"]
    else:
        if "base" not in base_cache:
            from memlaw.models import load_base

            base_cache["base"] = load_base(model)
        base = base_cache["base"]
        li = in_context_losses(base, encode_records(base.tokenizer, spec.read()), k)
        np.savez(path, l=li)
    count = Counter(ids.tolist())
    u = np.array([-math.log(count[t] / len(ids)) for t in ids.tolist()])
    cheapest = {}
    for t, x in zip(ids.tolist(), l):
        cheapest[t] = min(cheapest.get(t, math.inf), x)
    return {"l": l, "li": li, "u": u, "naming": sum(cheapest.values()), "ell": len(ids),
            "ceiling": bl.max_coverage, "base_coverage": bl.base_coverage}


def budget_coverage(costs: np.ndarray, budget: float) -> float:
    """Share of tokens locked when ``budget`` nats go to the cheapest first."""
    if budget <= 0:
        return 0.0
    return float(np.searchsorted(np.cumsum(np.sort(costs)), budget, side="right")) / len(costs)


def predict(d: dict, nats: float, candidate: str, lock_level: float) -> float:
    plain = budget_coverage(np.maximum(0.0, d["l"] - lock_level), nats)
    if candidate == "budget":
        cov = plain
    else:
        price = np.minimum(d["l"], d["u"]) if candidate == "unigram" else np.minimum(np.minimum(d["l"], d["u"]), d["li"])
        cov = max(plain, budget_coverage(np.maximum(0.0, price - lock_level), nats - d["naming"]))
    return max(d["base_coverage"], min(d["ceiling"], cov))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpora", nargs="+")
    ap.add_argument("--runs", nargs="*", default=[], help="planner_accuracy.py run files (measured coverage)")
    ap.add_argument("--ranks", default="1,2,4", help="ranks to predict at when no runs are given")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--law", default=None, help="law card to predict with (default: the one shipped for --model)")
    ap.add_argument("--k", type=int, default=8, help="other records in context: K … 2K−1")
    ap.add_argument("--lock-level", type=float, nargs="+", default=[LN2, 0.45])
    ap.add_argument("--work", default="runs/predictor-candidates")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    law = resolve_card(args.law, args.model)[0].law()
    base_cache: dict = {}
    data = {str(c): corpus_losses(c, args.model, work, args.k, base_cache) for c in args.corpora}
    measured: dict = {}
    for f in args.runs:
        for line in Path(f).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                measured.setdefault((str(r["corpus"]), r["rank"]), []).append(r["coverage"])
    cells = sorted((c, r) for c, r in measured if c in data) if measured else \
        [(c, int(r)) for c in data for r in args.ranks.split(",")]
    names = [("budget", LN2), ("unigram", LN2)] + [("context", e) for e in args.lock_level]
    head = " | ".join(f"{n}" + (f" @{e:.2f}" if n == "context" else "") for n, e in names)
    print(f"| corpus | rank | seeds | measured | {head} |")
    print("|" + " --- |" * (4 + len(names)))
    errs = {i: [] for i in range(len(names))}
    for corpus, rank in cells:
        d = data[corpus]
        nats = max(0.0, law.predict(rank, d["ell"])) * d["ell"]
        preds = [predict(d, nats, n, e) for n, e in names]
        seeds = measured.get((corpus, rank), [])
        meas = float(np.mean(seeds)) if seeds else None
        for i, p in enumerate(preds):
            if meas is not None:
                errs[i].append(abs(p - meas))
        print(f"| {Path(corpus).stem} | {rank} | {len(seeds)} | {'—' if meas is None else f'{meas:.3f}'} | "
              + " | ".join(f"{p:.3f}" for p in preds) + " |")
    if measured:
        print("| **mean \\|pred − meas\\|** | | | | " + " | ".join(f"**{np.mean(errs[i]):.3f}**" for i in range(len(names))) + " |")


if __name__ == "__main__":
    main()
