"""Evidence for the paper's findings on SmolLM2-135M, measured with memlaw itself (issue #9).

One script, one output folder (``runs/evidence/``, ignored by git) plus the PNGs in ``docs/img/``.
Every number in ``docs/results.md`` sections 4–7 comes from one of these parts:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evidence.py --part natural    # law on natural text
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evidence.py --part methods    # MemFT vs SFT
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evidence.py --part threshold  # p > 0.5, greedy, cascade
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evidence.py --part plots      # docs/img/*.png
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evidence.py --part all        # the four, in this order

``threshold`` audits the adapters ``methods`` trained (runs/evidence/adapters/), so run ``methods``
first. Each part resumes: a finished calibration point, trained adapter or result file is reused
(delete it to redo it). Results: ``runs/evidence/{natural,methods,threshold}.json`` and a Markdown
table per part on stdout (``runs/evidence/*.md``).

Definitions (DESIGN.md): token p is teacher-forced; *locked* p > 0.5; *greedy-correct* argmax ==
target; *exact record* every target token greedy-correct; *coverage* locked / all target tokens;
*anchor* the first non-greedy-correct target token of a record.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "smollm2-135m"
METHODS = ("sft", "ot", "sw", "curriculum")
# The shipped card's fast template and recipe (as `make demo`): q/v of the last two layers.
TEMPLATE = {"target_modules": ["q_proj", "v_proj"], "layers": [28, 29], "alpha": "2*rank", "dropout": 0.0}
NATURAL_CMD = [str(BIN / "memplan"), "calibrate", "--model", MODEL, "--data", "examples/natural.jsonl",
               "--ranks", "1,2,4,8", "--lengths", "64,128,256", "--out", "cal/smollm2-natural", "--quiet"]


def threads_one():
    import torch

    torch.set_num_threads(1)


def write(out: Path, name: str, obj) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(obj, indent=1) + "\n")


def emit(out: Path, name: str, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    (out / name).write_text(text)
    print(text, flush=True)


# ------------------------------------------------------------------------------------------------
# part 1: the law on natural text


def part_natural(args) -> None:
    from memlaw.card import load_card

    cal = ROOT / "cal/smollm2-natural"
    if not (cal / "law.json").exists():  # resumes an unfinished sweep
        t = time.perf_counter()
        subprocess.run(NATURAL_CMD, cwd=ROOT, check=True)
        print(f"calibration: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    nat = load_card(cal / "law.json")
    rnd = load_card(ROOT / "memlaw/cards/smollm2-135m.json")
    res = {"command": " ".join(["memplan"] + NATURAL_CMD[1:-1]), "natural": nat.to_dict(), "random": rnd.to_dict()}
    write(args.out, "natural.json", res)
    lines = ["| rank | ℓ | L_before | L_after | ΔL | coverage | steps | seconds | stop |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in sorted(nat.points, key=lambda p: (p["rank"], p["length"])):
        star = " *" if p.get("saturated") else ""
        lines.append(f"| {p['rank']} | {p['length']} | {p['loss_before']:.3f} | {p['loss_after']:.3f} | "
                     f"{p['delta_loss']:.3f} | {p['coverage']:.3f}{star} | {p['steps']} | {p['seconds']:.1f} | "
                     f"{p['stop_reason']} |")
    lines += ["", "| coefficient | natural text [90% interval] | random tokens (shipped card) [90% interval] |",
              "| --- | --- | --- |"]
    for k in ("C", "alpha", "beta", "b"):
        a, b = nat.intervals.get(k, [math.nan] * 2), rnd.intervals.get(k, [math.nan] * 2)
        lines.append(f"| {k} | {nat.coefficients[k]:.4g} [{a[0]:.4g}, {a[1]:.4g}] | "
                     f"{rnd.coefficients[k]:.4g} [{b[0]:.4g}, {b[1]:.4g}] |")
    lines.append(f"| R² | {nat.r2:.4f} ({len(nat.points) - nat.n_saturated} non-saturated points) | "
                 f"{rnd.r2:.4f} ({len(rnd.points) - rnd.n_saturated} non-saturated points) |")
    emit(args.out, "natural.md", lines)


# ------------------------------------------------------------------------------------------------
# part 3: MemFT vs SFT at equal rank and step budget


def long_text_corpus(out: Path, min_tokens: int) -> Path:
    """One {"text"} record: paragraphs of examples/natural.jsonl, taken from ``--long-from`` on and
    joined with a space until the target holds at least ``min_tokens`` SmolLM2 tokens."""
    from transformers import AutoTokenizer

    from memlaw.models import resolve_model_path

    path = out / "data" / f"natural_long_{min_tokens}.jsonl"
    if path.exists():
        return path
    tok = AutoTokenizer.from_pretrained(resolve_model_path(MODEL))
    paras = [json.loads(line)["text"] for line in (ROOT / "examples/natural.jsonl").read_text().splitlines()]
    text = ""
    for p in paras[LONG_FROM:]:
        text = p if not text else text + " " + p
        if len(tok(text, add_special_tokens=False)["input_ids"]) >= min_tokens:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"text": text}) + "\n")
    return path


LONG_FROM = 0  # set from --long-from


def corpora(args) -> dict[str, Path]:
    return {"phonebook": ROOT / "examples/phonebook_small.jsonl",
            "longtext": long_text_corpus(args.out, args.long_tokens)}


def card_recipe(method: str, seed: int, budget: int | None = None):
    """The shipped card's recipe (sft, lr 2e-2 decaying linearly to 0 over B = 300 steps, two cycles,
    every record in each batch, bf16 training forward) with only the objective swapped: the
    paper's budget class (hundreds of epochs, linear decay), long enough to converge."""
    from memlaw.card import load_card
    from memlaw.memft import Recipe

    d = dict(load_card(ROOT / "memlaw/cards/smollm2-135m.json").recipe)
    d.update(method=method, seed=seed, batch_size=10**6)
    if budget:
        d["max_steps"] = budget
    return Recipe.from_dict(d)


def one_run(job: dict) -> dict:
    """Train one adapter (corpus × rank × method × seed) with a scoring pass every ``eval_every``
    steps. A plain function of a dict so that it runs in a worker process."""
    import torch

    from memlaw.corpus import encode_records
    from memlaw.memft import CorpusSpec, LoraTemplate, make_lora_model, seed_everything, train
    from memlaw.models import load_base
    from memlaw.scoring import score, summarize

    torch.set_num_threads(job.get("threads", 1))
    spec = CorpusSpec(job["corpus_path"])
    template = LoraTemplate.from_dict(TEMPLATE)
    recipe = card_recipe(job["method"], job["seed"], job.get("budget"))
    seed_everything(recipe.seed)
    base = load_base(MODEL, device=job["device"])
    encoded = encode_records(base.tokenizer, spec.read())
    pad = base.tokenizer.pad_token_id or 0
    model = make_lora_model(base.model, template, job["rank"], recipe.seed)
    curve = []

    def evaluate(step: int) -> None:
        s = summarize(score(model, encoded, pad_id=pad))
        curve.append({"step": step, "coverage": s["coverage"], "exact_records": s["exact_records"],
                      "mean_loss": s["mean_loss"]})

    evaluate(0)  # LoRA B starts at zero: this is the base model, L_before

    def on_epoch(entry) -> bool:  # batch = all records: one epoch is one step
        if entry["step"] % job["eval_every"] == 0:
            model.eval()
            evaluate(entry["step"])
            model.train()
        return False

    t0 = time.perf_counter()
    result = train(model, encoded, recipe, pad_id=pad, progress=False, on_epoch=on_epoch)
    wall = time.perf_counter() - t0
    final = summarize(score(model, encoded, pad_id=pad))
    if job.get("save_dir"):  # part threshold audits these
        from memlaw.memft import save_adapter

        sidecar = {"corpus": spec.to_dict(), "base_model": base.identity, "rank": job["rank"],
                   "template": template.to_dict(), "recipe": recipe.to_dict(), "final": final}
        if not Path(job["save_dir"]).exists():
            save_adapter(model, job["save_dir"], base.name, sidecar)
    return {"corpus": job["name"], "corpus_path": job["corpus_path"], "rank": job["rank"], "method": job["method"],
            "seed": job["seed"], "device": job["device"], "target_tokens": final["target_tokens"],
            "records": final["records"], "loss_before": curve[0]["mean_loss"], "final": final, "steps": result.steps,
            "stop_reason": result.stop_reason, "converged": result.converged, "seconds": round(wall, 1),
            "curve": curve, "recipe": recipe.to_dict()}


def run_jobs(fn, jobs: list[dict], out_file: Path, workers: int, report_only: bool = False) -> list[dict]:
    """Run ``fn`` over ``jobs``, appending each result to the JSONL ``out_file`` as it finishes;
    jobs already in the file (same key) are skipped, so an interrupted part resumes."""
    key = lambda d: tuple(d[k] for k in ("kind", "corpus", "rank", "method", "seed"))  # noqa: E731
    done = [json.loads(x) for x in out_file.read_text().splitlines() if x.strip()] if out_file.exists() else []
    have = {key(d) for d in done}
    todo = [j for j in jobs if key({**j, "corpus": j["name"]}) not in have]
    print(f"{len(done)} runs on file, {len(todo)} to do", file=sys.stderr, flush=True)
    if report_only:
        return done
    out_file.parent.mkdir(parents=True, exist_ok=True)

    def record(res: dict) -> None:
        done.append(res)
        with out_file.open("a") as f:
            f.write(json.dumps(res) + "\n")
        print(f"{res['kind']} {res['corpus']} r{res['rank']} {res['method']} seed {res['seed']}: coverage "
              f"{res['final']['coverage']:.3f} steps {res['steps']} [{res['seconds']:.0f} s]", file=sys.stderr, flush=True)

    if workers <= 1:
        for j in todo:
            record({"kind": j["kind"], **fn(j)})
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # Several runs at once: one small LoRA run leaves a GPU mostly idle.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(fn, j): j for j in todo}
            for fut in as_completed(futs):
                record({"kind": futs[fut]["kind"], **fut.result()})
    return done


def mean_sd(xs) -> tuple[float, float, int]:
    """Mean, sample sd and count."""
    import statistics

    xs = list(xs)
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)


def verdicts(cells: dict, baseline: str) -> dict:
    """For each cell's method: better / worse / tie against ``baseline`` — a difference counts only
    beyond 2 sd (the larger of the two methods' seed sd)."""
    out = {}
    b_mean, b_sd, b_n = cells[baseline]
    for m, (mu, sd, n) in cells.items():
        if m == baseline:
            continue
        d = mu - b_mean
        if min(n, b_n) < 3:
            out[m] = "n/a (< 3 seeds)"
        else:
            out[m] = "better" if d > 2 * max(sd, b_sd) else "worse" if -d > 2 * max(sd, b_sd) else "tie"
    return out


def part_methods(args) -> None:
    jobs = [{"kind": "methods", "name": name, "corpus_path": str(corpus), "rank": rank, "method": method,
             "seed": seed, "device": args.device, "eval_every": args.eval_every, "budget": args.budget,
             "save_dir": str(args.out / "adapters" / f"{name}-r{rank}-{method}") if seed == 0 else None}
            for name, corpus in corpora(args).items() for rank in args.ranks[name]
            for method in METHODS for seed in range(args.seeds)]
    runs = [r for r in run_jobs(one_run, jobs, args.out / "methods.jsonl", args.workers, args.report_only)
            if r["kind"] == "methods"]
    report_methods(args, runs)


def report_methods(args, runs: list[dict]) -> None:
    by = {}
    for r in runs:
        by.setdefault((r["corpus"], r["target_tokens"], r["rank"]), {}).setdefault(r["method"], []).append(r)
    lines = ["| corpus | ℓ | rank | method | seeds | coverage (mean ± sd) | exact records (mean ± sd) | mean loss | "
             "steps (mean ± sd) | converged | coverage vs sft | exact vs sft | steps vs sft |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary = []
    for (corpus, ell, rank), per in sorted(by.items()):
        cov = {m: mean_sd(x["final"]["coverage"] for x in rs) for m, rs in per.items()}
        exact = {m: mean_sd(x["final"]["exact_records"] for x in rs) for m, rs in per.items()}
        # fewer steps (to every token locked, or the whole budget) is better: compare negated
        steps = {m: mean_sd(-x["steps"] for x in rs) for m, rs in per.items()}
        vc, ve, vs = ((verdicts(c, "sft") if "sft" in c else {}) for c in (cov, exact, steps))
        for m in [m for m in METHODS if m in per]:
            rs = per[m]
            mu, sd, _ = cov[m]
            lo_mu = mean_sd(x["final"]["mean_loss"] for x in rs)[0]
            lines.append(f"| {corpus} | {ell} | {rank} | {m} | {len(rs)} | {mu:.3f} ± {sd:.3f} | "
                         f"{exact[m][0]:.1f} ± {exact[m][1]:.1f} / {rs[0]['records']} | {lo_mu:.3f} | "
                         f"{-steps[m][0]:.0f} ± {steps[m][1]:.0f} | "
                         f"{sum(bool(x['converged']) for x in rs)}/{len(rs)} | {vc.get(m, '—')} | {ve.get(m, '—')} | "
                         f"{vs.get(m, '—')} |")
            summary.append({"corpus": corpus, "ell": ell, "rank": rank, "method": m, "seeds": len(rs),
                            "coverage_mean": mu, "coverage_sd": sd, "exact_mean": exact[m][0],
                            "exact_sd": exact[m][1], "steps_mean": -steps[m][0], "steps_sd": steps[m][1],
                            "coverage_vs_sft": vc.get(m), "exact_vs_sft": ve.get(m), "steps_vs_sft": vs.get(m)})
    write(args.out, "methods.json", {"recipe": runs[0]["recipe"] if runs else None, "template": TEMPLATE,
                                    "cells": summary, "runs": runs})
    emit(args.out, "methods.md", lines)


# ------------------------------------------------------------------------------------------------
# repair: MemFT repair of a half-trained adapter against continued SFT from the same adapter


def locality_records() -> list[dict]:
    """Public-domain text no corpus here trains on: the last four paragraphs of examples/natural.jsonl
    (the long-text corpus starts at the first paragraph and stops after ~400 tokens)."""
    from memlaw.memft import CorpusSpec

    return CorpusSpec(str(ROOT / "examples/natural.jsonl")).read()[-4:]


def half_trained(job: dict, out: Path) -> Path:
    """Plain SFT at constant lr, stopped at the first scoring pass (every 5 steps) that reaches
    ``job['half']`` coverage: the "half-trained adapter" a repair starts from. One per corpus × seed."""
    from memlaw.corpus import encode_records
    from memlaw.memft import CorpusSpec, LoraTemplate, Recipe, make_lora_model, save_adapter, seed_everything, train
    from memlaw.models import load_base
    from memlaw.scoring import score, summarize

    adir = out / f"half-{job['name']}-r{job['rank']}-s{job['seed']}"
    if (adir / "memlaw.json").exists():
        return adir
    spec = CorpusSpec(job["corpus_path"])
    recipe = Recipe(method="sft", lr=1e-2, batch_size=10**6, max_steps=1000, patience=0, seed=job["seed"])
    seed_everything(recipe.seed)
    base = load_base(MODEL, device=job["device"])
    encoded = encode_records(base.tokenizer, spec.read())
    pad = base.tokenizer.pad_token_id or 0
    model = make_lora_model(base.model, LoraTemplate.from_dict(TEMPLATE), job["rank"], recipe.seed)
    state = {}

    def on_epoch(entry) -> bool:
        if entry["step"] % 5:
            return False
        model.eval()
        s = summarize(score(model, encoded, pad_id=pad))
        model.train()
        state["summary"] = s
        return s["coverage"] >= job["half"]

    result = train(model, encoded, recipe, pad_id=pad, progress=False, on_epoch=on_epoch)
    sidecar = {"corpus": spec.to_dict(), "base_model": base.identity, "rank": job["rank"],
               "template": LoraTemplate.from_dict(TEMPLATE).to_dict(), "recipe": recipe.to_dict(),
               "final": summarize(score(model, encoded, pad_id=pad)), "train": result.to_dict()}
    tmp = adir.with_name(adir.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    save_adapter(model, tmp, base.name, sidecar)
    os.replace(tmp, adir)
    return adir


def passage_loss(adapter_dir: Path | None, device: str) -> float:
    """Mean per-token loss on the locality passage, base model alone (None) or with an adapter."""
    from memlaw.corpus import encode_records
    from memlaw.models import attach_adapter, load_base
    from memlaw.scoring import score, summarize

    base = load_base(MODEL, device=device)
    model = attach_adapter(base, adapter_dir) if adapter_dir else base.model
    encoded = encode_records(base.tokenizer, locality_records())
    return summarize(score(model, encoded, pad_id=base.tokenizer.pad_token_id or 0))["mean_loss"]


def one_repair(job: dict) -> dict:
    """Repair the half-trained adapter with ``job['method']`` (memlaw's `memaudit --repair` code path,
    its default lr / batch / step budget) and measure coverage and the locality cost."""
    import tempfile

    import torch

    from memlaw.auditor.repair import repair

    torch.set_num_threads(job.get("threads", 1))
    half_dir = Path(job["half_dir"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = repair(half_dir, Path(tmp) / "r", method=job["method"], steps=job["steps"], seed=job["seed"],
                     device=job["device"], backend="transformers")
        seconds = time.perf_counter() - t0
        after_loss = passage_loss(Path(tmp) / "r", job["device"])
    before_loss = passage_loss(half_dir, job["device"])
    return {"corpus": job["name"], "rank": job["rank"], "method": job["method"], "seed": job["seed"],
            "device": job["device"], "before": res.before.summary["coverage"], "final": res.after.summary,
            "steps": res.steps, "stop_reason": res.stop_reason, "seconds": round(seconds, 1),
            "passage_loss_half": before_loss, "passage_loss_after": after_loss,
            "locality_cost": after_loss - before_loss}


REPAIR_METHODS = ("sft", "ot", "sw", "curriculum")


def part_repair(args) -> None:
    halves = args.out / "half"
    halves.mkdir(parents=True, exist_ok=True)
    base_file = args.out / "repair_base_passage.json"
    if not base_file.exists():
        write(args.out, base_file.name, {"base_passage_loss": passage_loss(None, args.device)})
    base_passage = json.loads(base_file.read_text())["base_passage_loss"]
    jobs = []
    for name, corpus in corpora(args).items():
        rank = args.repair_ranks[name]
        for seed in range(args.seeds):
            h = {"name": name, "corpus_path": str(corpus), "rank": rank, "seed": seed, "device": args.device,
                 "half": args.half}
            hdir = halves / "not-trained" if args.report_only else half_trained(h, halves)
            jobs += [{"kind": "repair", "name": name, "rank": rank, "method": m, "seed": seed, "device": args.device,
                      "half_dir": str(hdir), "steps": args.repair_steps} for m in REPAIR_METHODS]
    runs = [r for r in run_jobs(one_repair, jobs, args.out / "repair.jsonl", args.workers, args.report_only)
            if r["kind"] == "repair"]
    by = {}
    for r in runs:
        by.setdefault((r["corpus"], r["rank"]), {}).setdefault(r["method"], []).append(r)
    lines = [f"Locality passage (last 4 paragraphs of examples/natural.jsonl): base model's mean loss "
             f"{base_passage:.3f} nats/token.", "",
             "| corpus | rank | method | seeds | coverage before → after (mean ± sd) | exact | steps | "
             "Δ passage loss (mean ± sd) | coverage vs sft | locality vs sft |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (corpus, rank), per in sorted(by.items()):
        cov = {m: mean_sd(x["final"]["coverage"] for x in rs) for m, rs in per.items()}
        # lower locality cost is better: compare negated costs
        loc = {m: tuple(v * s for v, s in zip(mean_sd(x["locality_cost"] for x in rs), (-1, 1, 1)))
               for m, rs in per.items()}
        vc = verdicts(cov, "sft") if "sft" in cov else {}
        vl = verdicts(loc, "sft") if "sft" in loc else {}
        for m in [m for m in REPAIR_METHODS if m in per]:
            rs = per[m]
            b_mu = mean_sd(x["before"] for x in rs)[0]
            mu, sd, _ = cov[m]
            l_mu, l_sd, _ = mean_sd(x["locality_cost"] for x in rs)
            lines.append(f"| {corpus} | {rank} | {m} | {len(rs)} | {b_mu:.3f} → {mu:.3f} ± {sd:.3f} | "
                         f"{mean_sd(x['final']['exact_records'] for x in rs)[0]:.1f}/{rs[0]['final']['records']} | "
                         f"{mean_sd(x['steps'] for x in rs)[0]:.0f} | {l_mu:+.3f} ± {l_sd:.3f} | "
                         f"{vc.get(m, '—')} | {vl.get(m, '—')} |")
    write(args.out, "repair.json", {"base_passage_loss": base_passage, "runs": runs})
    emit(args.out, "repair.md", lines)


def greedy_generate(model, key_ids, n: int, eos_id) -> list[int]:
    """transformers' greedy decoding (do_sample=False), n new tokens; EOS does not stop it (a
    stop would only shorten a continuation that is already wrong at that token)."""
    import torch
    from transformers import GenerationConfig

    cfg = GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=0, num_beams=1,
                           eos_token_id=[], pad_token_id=eos_id, bos_token_id=None)
    ids = torch.tensor([list(key_ids)], dtype=torch.long)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    return [int(x) for x in out[0, ids.shape[1]:]]


def part_threshold(args) -> None:
    import numpy as np

    from memlaw.auditor.audit import audit_inputs, load_adapter_inputs

    threads_one()
    adapters = sorted(p for p in (args.out / "adapters").iterdir() if (p / "memlaw.json").exists())
    if not adapters:
        sys.exit("no adapters: run --part methods first")
    bins = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    tot = {"tokens": 0, "locked": 0, "locked_correct": 0, "locked_min_margin": math.inf,
           "nonlocked": 0, "nonlocked_correct": 0, "bin_n": [0] * 5, "bin_correct": [0] * 5,
           "records": 0, "gen_records": 0, "gen_agree": 0, "gen_disagree": [], "tf_exact": 0, "gen_exact": 0,
           "prefix_agree": 0, "anchor_token_agree": 0}
    per_adapter, cascade = [], []
    for adir in adapters:
        inp = load_adapter_inputs(adir)
        res = audit_inputs(inp)
        eos = inp.base.tokenizer.eos_token_id
        a = {"adapter": adir.name, **{k: res.summary[k] for k in ("records", "target_tokens", "coverage",
                                                                      "exact_records", "locked_records")}}
        nl, nlc = 0, 0
        t_gen = time.perf_counter()
        for rec, e in zip(res.records, inp.encoded):
            p = np.array([t["p"] for t in rec.tokens])
            tgt = np.array([t["id"] for t in rec.tokens])
            am = np.array([t["argmax"] for t in rec.tokens])
            mg = np.array([t["margin"] for t in rec.tokens])
            ok, locked = am == tgt, p > 0.5
            tot["tokens"] += len(p)
            tot["locked"] += int(locked.sum())
            tot["locked_correct"] += int((ok & locked).sum())
            if locked.any():
                tot["locked_min_margin"] = min(tot["locked_min_margin"], float(mg[locked].min()))
            tot["nonlocked"] += int((~locked).sum())
            tot["nonlocked_correct"] += int((ok & ~locked).sum())
            nl += int((~locked).sum())
            nlc += int((ok & ~locked).sum())
            for i in range(5):
                m = (~locked) & (p > bins[i]) & (p <= bins[i + 1]) if i else (~locked) & (p <= bins[1])
                tot["bin_n"][i] += int(m.sum())
                tot["bin_correct"][i] += int((ok & m).sum())
            # real greedy generation of this record
            gen = np.array(greedy_generate(inp.model, e.key_ids, len(tgt), eos))
            gen_exact = len(gen) == len(tgt) and bool((gen == tgt).all())
            tot["gen_records"] += 1
            tot["tf_exact"] += int(rec.exact)
            tot["gen_exact"] += int(gen_exact)
            if gen_exact == rec.exact:
                tot["gen_agree"] += 1
            else:
                tot["gen_disagree"].append(f"{adir.name}#{rec.index}")
            if rec.anchor is None:
                continue
            k = rec.anchor
            tot["prefix_agree"] += int(bool((gen[:k] == tgt[:k]).all()))
            tot["anchor_token_agree"] += int(gen[k] == am[k])  # greedy picks the teacher-forced argmax there
            rest_t, rest_g, rest_tf = tgt[k + 1:], gen[k + 1:], ok[k + 1:]
            n_rest = len(rest_t)
            sm = difflib.SequenceMatcher(None, rest_g.tolist(), rest_t.tolist(), autojunk=False)
            cascade.append({"adapter": adir.name, "corpus": "phonebook" if "phonebook" in adir.name else "longtext",
                            "record": rec.index, "n": len(tgt), "anchor": k, "n_after": n_rest,
                            "tf_correct_after": int(rest_tf.sum()),
                            "gen_correct_after": int((rest_g == rest_t).sum()),
                            "gen_matched_after": sum(b.size for b in sm.get_matching_blocks()),
                            "tf_all_after": bool(rest_tf.all()) if n_rest else None,
                            "gen_all_after": bool((rest_g == rest_t).all()) if n_rest else None,
                            "tf_wrong_after": int((~rest_tf).sum())})
        a["nonlocked"], a["nonlocked_greedy_correct"] = nl, nlc
        a["generation_seconds"] = round(time.perf_counter() - t_gen, 1)
        per_adapter.append(a)
        print(f"{adir.name}: coverage {a['coverage']:.3f} exact {a['exact_records']}/{a['records']} "
              f"non-locked greedy-correct {nlc}/{nl} (generation {a['generation_seconds']} s)",
              file=sys.stderr, flush=True)
    write(args.out, "threshold.json", {"totals": tot, "adapters": per_adapter, "cascade": cascade})

    pct = lambda a, b: f"{a}/{b} = {100 * a / b:.1f}%" if b else "—"
    lines = [f"Adapters: {len(adapters)}; target tokens audited: {tot['tokens']}.", "",
             "| tokens | count | greedy-correct (argmax == target) |", "| --- | --- | --- |",
             f"| locked (p > 0.5) | {tot['locked']} | {pct(tot['locked_correct'], tot['locked'])} "
             f"(smallest margin {tot['locked_min_margin']:.3g} nats) |",
             f"| not locked (p ≤ 0.5) | {tot['nonlocked']} | {pct(tot['nonlocked_correct'], tot['nonlocked'])} |"]
    names = ["p ≤ 0.1", "0.1 < p ≤ 0.2", "0.2 < p ≤ 0.3", "0.3 < p ≤ 0.4", "0.4 < p ≤ 0.5"]
    for i, nm in enumerate(names):
        lines.append(f"| … {nm} | {tot['bin_n'][i]} | {pct(tot['bin_correct'][i], tot['bin_n'][i])} |")
    lines += ["", "| adapter | coverage | exact (teacher-forced) | non-locked tokens greedy-correct |",
              "| --- | --- | --- | --- |"]
    for a in per_adapter:
        lines.append(f"| {a['adapter']} | {a['coverage']:.3f} | {a['exact_records']}/{a['records']} | "
                     f"{pct(a['nonlocked_greedy_correct'], a['nonlocked'])} |")
    lines += ["", f"Real greedy generation (`model.generate`, do_sample=False), every record of every adapter: "
              f"{tot['gen_records']} records; teacher-forced exact {tot['tf_exact']}, generated == target "
              f"{tot['gen_exact']}; the two verdicts agree on {pct(tot['gen_agree'], tot['gen_records'])}"
              + (f" (disagree: {', '.join(tot['gen_disagree'])})" if tot["gen_disagree"] else "") + ".",
              f"Non-exact records: {len(cascade)}; generation reproduces the target up to the anchor in "
              f"{tot['prefix_agree']} and emits the teacher-forced argmax at the anchor in "
              f"{tot['anchor_token_agree']}.", ""]
    lines += ["| corpus | non-exact records (with tokens after the anchor) | tokens after the anchor | "
              "teacher-forced greedy-correct after the anchor | free-running generated == target, same position | "
              "free-running, target tokens found in order (difflib) | records whose rest is all right: teacher-forced / free-running |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for corpus in ("phonebook", "longtext", None):
        cs = [c for c in cascade if (corpus is None or c["corpus"] == corpus) and c["n_after"] > 0]
        if not cs:
            continue
        n = sum(c["n_after"] for c in cs)
        lines.append(f"| {corpus or 'all'} | {len(cs)} | {n} | {pct(sum(c['tf_correct_after'] for c in cs), n)} | "
                     f"{pct(sum(c['gen_correct_after'] for c in cs), n)} | "
                     f"{pct(sum(c['gen_matched_after'] for c in cs), n)} | "
                     f"{sum(c['tf_all_after'] for c in cs)} / {sum(c['gen_all_after'] for c in cs)} |")
    emit(args.out, "threshold.md", lines)


# ------------------------------------------------------------------------------------------------
# part 4: plots


def part_plots(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from memlaw.card import load_card

    img = ROOT / "docs/img"
    img.mkdir(parents=True, exist_ok=True)
    cards = [("random tokens (shipped card)", ROOT / "memlaw/cards/smollm2-135m.json"),
             ("natural text (examples/natural.jsonl)", ROOT / "cal/smollm2-natural/law.json")]
    cards = [(t, p) for t, p in cards if p.exists()]  # the natural card exists once part natural ran
    fig, axes = plt.subplots(1, len(cards), figsize=(5.5 * len(cards), 4.2), squeeze=False)
    for ax, (title, path) in zip(axes[0], cards):
        card = load_card(path)
        law = card.law()
        lengths = sorted({p["length"] for p in card.points})
        rr = np.geomspace(1, 8, 50)
        for i, length in enumerate(lengths):
            pts = sorted((p for p in card.points if p["length"] == length), key=lambda p: p["rank"])
            c = f"C{i}"
            ax.plot([p["rank"] for p in pts], [p["delta_loss"] for p in pts], "o-", color=c, label=f"ℓ = {length}")
            sat = [p for p in pts if p.get("saturated")]
            ax.plot([p["rank"] for p in sat], [p["delta_loss"] for p in sat], "o", mfc="white", color=c, ms=9)
            ax.plot(rr, law.predict(rr, length), "--", color=c, lw=1, alpha=0.7)
        c_ = card.coefficients
        ax.set_title(f"{title}\nα = {c_['alpha']:.2f}, β = {c_['beta']:.2f}, R² = {card.r2:.3f}", fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
        ax.set_xlabel("LoRA rank r")
        ax.set_ylabel("ΔL = L_before − L_after (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M, each card's template and recipe: measured (solid), fitted law (dashed), "
                 "hollow = all locked", fontsize=9)
    fig.tight_layout()
    fig.savefig(img / "law_points.png", dpi=110)
    plt.close(fig)

    mpath = args.out / "methods.jsonl"
    if mpath.exists():
        runs = [json.loads(x) for x in mpath.read_text().splitlines() if x.strip()]
        panels = sorted({(r["corpus"], r["rank"]) for r in runs}, key=lambda x: (x[0] != "phonebook", x[1]))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.8), sharey=True)
        for ax, (corpus, rank) in zip(np.atleast_1d(axes), panels):
            for i, m in enumerate(METHODS):
                rs = [r for r in runs if r["corpus"] == corpus and r["rank"] == rank and r["method"] == m]
                for r in rs:  # one thin line per seed: the spread is the point
                    ax.plot([c["step"] for c in r["curve"]], [c["coverage"] for c in r["curve"]], "-",
                            color=f"C{i}", lw=0.8, alpha=0.6, label=f"{m} ({len(rs)} seeds)" if r is rs[0] else None)
            n = next(r["target_tokens"] for r in runs if r["corpus"] == corpus)
            ax.set_title(f"{corpus} (ℓ = {n}), rank {rank}", fontsize=10)
            ax.set_xlabel("training steps")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        np.atleast_1d(axes)[0].set_ylabel("coverage (share of tokens with p > 0.5)")
        fig.suptitle("sft vs MemFT (ot, sw, curriculum), the card's recipe (lr 2e-2 → 0 linearly, 2 × 300 steps); "
                     "scoring pass every 50 steps; a run ends when every token is locked", fontsize=9)
        fig.tight_layout()
        fig.savefig(img / "coverage_steps.png", dpi=110)
        plt.close(fig)
    print(f"wrote {img}/law_points.png" + (f" and {img}/coverage_steps.png" if mpath.exists() else ""))


# ------------------------------------------------------------------------------------------------


def main():
    global LONG_FROM
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["natural", "methods", "repair", "threshold", "plots", "all"], required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "runs/evidence")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--report-only", action="store_true", help="tables from the runs on file; train nothing")
    ap.add_argument("--budget", type=int, default=None, help="steps per cycle (default: the card's B = 300)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per (corpus, rank, method) cell")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ap.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process")
    ap.add_argument("--repair-ranks", default="phonebook=4,longtext=4", help="rank of the half-trained adapters")
    ap.add_argument("--half", type=float, default=0.5, help="coverage at which the half-trained adapter stops")
    ap.add_argument("--repair-steps", type=int, default=300, help="step budget of every repair method")
    ap.add_argument("--phonebook-ranks", default="1,8")
    ap.add_argument("--long-ranks", default="1,8")
    ap.add_argument("--long-tokens", type=int, default=400, help="target tokens of the single long text")
    ap.add_argument("--long-from", type=int, default=0, help="first paragraph of examples/natural.jsonl used")
    args = ap.parse_args()
    LONG_FROM = args.long_from
    args.ranks = {"phonebook": [int(x) for x in args.phonebook_ranks.split(",")],
                  "longtext": [int(x) for x in args.long_ranks.split(",")]}
    args.repair_ranks = {k: int(v) for k, v in (x.split("=") for x in args.repair_ranks.split(","))}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parts = ["natural", "methods", "repair", "threshold", "plots"] if args.part == "all" else [args.part]
    for part in parts:
        t = time.perf_counter()
        globals()[f"part_{part}"](args)
        print(f"[part {part}: {time.perf_counter() - t:.0f} s]", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
