"""Calibration sweeps: fit the Parametric Memory Law ``ΔL = C·r^α·ℓ^(−β) + b`` for one base model.

This module runs a sweep and merges shards; the pieces live beside it, one concern each:
:mod:`~memlaw.calibration.spec` (what to run: grid, shard, template, recipe),
:mod:`~memlaw.calibration.data` (random-token records or corpus slices),
:mod:`~memlaw.calibration.point` (one point trained to convergence),
:mod:`~memlaw.calibration.store` (points.jsonl / sweep.json, resume and compatibility),
:mod:`~memlaw.calibration.plot` (law.png) and :mod:`~memlaw.calibration.defaults`.

A sweep trains one *fresh* LoRA adapter for every point of a grid of ranks × lengths, under one
fixed, recorded recipe and LoRA template, measures L_before (the base model, once per length) and
L_after, coverage, exact records, steps and seconds, and fits the law to the points::

    memplan calibrate --model smollm2-135m --ranks 1,2,4,8 --lengths 64,128,256 --out cal/smollm2
    memplan fit cal/smollm2/points.jsonl --out cal/smollm2/law.json     # refit from saved points
    memplan law show cal/smollm2/law.json

Files in ``OUT``:

* ``points.jsonl`` — one line per point, appended (fsynced) as each point finishes;
* ``sweep.json``   — what the points were measured with: base model identity, template (with
  ``params_per_rank``), recipe, data, grid. ``memplan fit`` reads it;
* ``law.json``     — the law card, written once every grid point is present;
* ``law.png``      — with ``--plot`` and matplotlib installed: ΔL against r, one colour per ℓ.

**Resume.** A killed sweep (Ctrl-C, SIGKILL, a pre-empted job) resumes where it stopped: run the
same command again and the points already in ``points.jsonl`` are skipped. A ``sweep.json`` written
with another model, template, recipe or data is refused (exit 2): choose another ``--out`` or pass
the same settings. The grid may change (add ranks or lengths to an existing sweep).

**Data.** ``random`` (default) is content-free: token ids drawn uniformly (seeded by
``--data-seed``) from the tokenizer's non-special vocabulary, split into records of ``--chunk``
target tokens, so length ℓ is ⌈ℓ/chunk⌉ records. Each record's key is ``[bos]`` (or ``[eos]``)
followed by a one-token tag (distinct per record, also drawn from the vocabulary, never scored or
trained): with an identical key for every record, the first target tokens of different records
would share one context and conflict, and no adapter could reach coverage 1. ``--data
corpus.jsonl`` takes the corpus's encoded records in file order until ℓ target tokens (the last
record truncated).

**Convergence.** Every point trains B = ``max_steps`` steps with the lr decaying linearly to 0,
then restarts (warm) cycle after cycle until the convergence test passes or ``cycles`` are spent
(``until_converged``, the default recipe: at most 6): the last cycle lowered the loss by no more
than max(0.05 nats, 10 % of ΔL) and raised coverage by no more than 0.02. ``loss_after_B`` /
``coverage_B`` (the last-but-one cycle) and ``loss_after`` / ``coverage`` (the last) are recorded.
A point that fails the test is a lower bound on what its rank can hold and the card fits it as one
(censored), never as a converged observation; so is a saturated point (every token locked,
training stopped there) and, for the capacity form, one near the data's ceiling (ΔL ≥ 90 % of
what its records carry).

**What ΔL counts.** Random-data points record ``loss_source = ln N`` (N: the pool size) and
``loss_fresh_after``, the adapter's loss on fresh random records it never saw. The card fits the
source ΔL = min(L_before, ln N) − L_after (the default, ``memplan fit --delta``): the nats between
the base model's ~14 and ln N are learnt by any adapter as "targets are uniform over the pool" (at
large ℓ the fresh-record loss falls too), not as facts; on corpus data it equals L_before −
L_after. The law's form is ``capacity`` by default (ΔL·ℓ = C·r^α, the nats a rank stores;
``memplan fit --form pml`` for the paper's four free coefficients); docs/results.md §1–2.

**Shards and Slurm.** ``--shard i/n`` runs only the grid points whose position in the grid
(row-major over sorted ranks × sorted lengths) is ≡ i (mod n). Give every shard its own ``--out``,
then merge the folders; ``memplan merge`` checks that they were run with the same model, template,
recipe and data, and fits the law over all points::

    #!/bin/bash
    #SBATCH --job-name=memlaw-cal
    #SBATCH --array=0-3
    #SBATCH --gres=gpu:1
    #SBATCH --time=02:00:00
    memplan calibrate --model smollm2-135m --ranks 1,2,4,8 --lengths 64,128,256 \\
        --device cuda --shard ${SLURM_ARRAY_TASK_ID}/4 --out cal/smollm2/shard-${SLURM_ARRAY_TASK_ID}

    # once the array is done (e.g. sbatch --dependency=afterok:<array job id>):
    memplan merge cal/smollm2/shard-* --out cal/smollm2/all

A pre-empted or requeued array task simply resumes its own shard (same command, same ``--out``).

**Default recipe.** LoRA on all linear layers of SmolLM2-135M already holds 256 random tokens at
rank 1, so nothing would constrain ΔL: the default template is narrow enough for capacity to bite —
``q_proj,v_proj`` on the last two layers, alpha = 2·rank (rank 1 still falls short of 64 random
tokens after 600 steps, while rank 8 locks 256) — and the recipe is :func:`default_recipe`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence


from memlaw.calibration.data import SweepData
from memlaw.calibration.defaults import DEFAULT_TARGET_MODULES
from memlaw.calibration.plot import plot_card
from memlaw.calibration.point import loss_before, run_point
from memlaw.calibration.spec import Shard, SweepSpec
from memlaw.calibration.store import (LAW, PLOT, POINTS, SWEEP, _torn, check_compatible, load_points, 
                                      missing_points, read_sweep_json, repair_points_file, unique_points)
from memlaw.card import LawCard, build_card, read_points, save_card
from memlaw.errors import ParameterError, UserError
from memlaw.io import append_jsonl, atomic_write_json, atomic_write_text
from memlaw.lock import locks_folder

TEMPLATE_REASON = ("q_proj,v_proj of the last two layers: narrow enough that capacity binds on a grid a "
                   "2-core CPU can train to convergence (all linear layers hold 256 random tokens at rank 1), and "
                   "above layer 0, so the frozen layers below run once per record (FrozenPrefix)")


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class SweepResult:
    out: Path
    grid: list[tuple[int, int]]
    points: list[dict]  # every point in OUT/points.jsonl, one per (rank, length)
    ran: int  # points measured by this call
    missing: list[tuple[int, int]]
    card: LawCard | None = None
    card_path: Path | None = None
    plot_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    shard: Shard | None = None

    def summary(self) -> list[str]:
        lines = [f"{self.out}: {len(self.grid) - len(self.missing)} of {len(self.grid)} grid points "
                 f"({self.ran} measured now)"]
        if self.card_path is not None:
            lines.append(f"wrote {self.card_path}")
        elif self.missing:
            shown = ", ".join(f"r={r} ℓ={n}" for r, n in self.missing[:12])
            more = f" and {len(self.missing) - 12} more" if len(self.missing) > 12 else ""
            lines.append(f"missing: {shown}{more}")
            lines.append("no law card yet: run the other shards (same command, --shard j/n, each with its own "
                         "--out), then `memplan merge DIR1 DIR2 ... --out DIR` to fit the law over all points")
        return lines + list(self.notes)


def with_loss_source(points: list[dict], meta: dict) -> list[dict]:
    """Points of a random-data sweep made before points recorded ``loss_source`` get it from the
    pool size in sweep.json (see "What ΔL counts")."""
    data = meta.get("data") or {}
    pool = data.get("pool_size") if isinstance(data, dict) and data.get("kind") == "random" else None
    if not isinstance(pool, int) or pool < 2:
        return points
    return [p if not isinstance(p, dict) or "loss_source" in p else {**p, "loss_source": math.log(pool)}
            for p in points]


def sweep_summary(points: list[dict], meta: dict) -> dict:
    """What a card records about the sweep behind it."""
    return {"points_seconds": round(sum(float(p.get("seconds") or 0) for p in points if isinstance(p, dict)), 1),
            "grid": meta.get("grid"), "device": meta.get("device"), "template_reason": meta.get("template_reason")}


def finish(out: Path, meta: dict, points: list[dict], grid, *, n_boot: int, plot: bool,
           ran: int = 0, shard: Shard | None = None) -> SweepResult:
    """Fit and save the card once every grid point is present."""
    missing = missing_points(grid, points)
    res = SweepResult(Path(out), list(grid), points, ran, missing, shard=shard)
    if missing:
        return res
    sweep = sweep_summary(points, meta)
    try:
        card = build_card(with_loss_source(points, meta), base_model=meta["base_model"], template=meta["template"],
                          recipe=meta["recipe"], data_kind=meta["data_kind"], n_boot=n_boot, seed=0, sweep=sweep)
    except UserError as e:
        raise UserError(f"{e} (the {len(points)} points are kept in {Path(out) / POINTS}; run again with a "
                        "larger grid and the same --out to add to them)") from None
    res.card, res.card_path = card, Path(out) / LAW
    save_card(card, res.card_path)
    if plot:
        path = Path(out) / PLOT
        note = plot_card(card, path)
        if note is None:
            res.plot_path = path
            res.notes.append(f"wrote {path}")
        else:
            res.notes.append(note)
    return res


# ---------------------------------------------------------------------------------------------
# the sweep


def sweep_meta(spec: SweepSpec, base, template, data: SweepData) -> dict:
    import memlaw

    return {
        "base_model": dict(base.identity),
        "template": {**template.to_dict(), "params_per_rank": int(template.params_per_rank(base.model))},
        "recipe": spec.recipe_dict(),
        "data_kind": data.kind(),
        "data": data.describe(),
        "grid": {"ranks": list(spec.ranks), "lengths": list(spec.lengths)},
        "chunk": spec.chunk,
        "data_seed": spec.data_seed,
        "shard": None if spec.shard is None else str(spec.shard),
        "device": spec.device,
        "template_reason": TEMPLATE_REASON if spec.target_modules == DEFAULT_TARGET_MODULES and spec.layers is None
        else "chosen by the user",
        "memlaw_version": memlaw.__version__,
    }


@locks_folder("out")  # one writer per folder: a second run is refused, naming the first
def run_sweep(spec: SweepSpec, out, *, progress: bool = True, plot: bool = False, console=None,
              base=None) -> SweepResult:
    """Run (or resume) a sweep into folder ``out``; fit and save the card when the grid is complete."""
    from memlaw.models import load_base

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ParameterError("out", f"{out}: exists and is not a folder", fix="choose another {name}")
    points_path, meta_path = out / POINTS, out / SWEEP
    old_meta = read_sweep_json(meta_path) if meta_path.exists() else None
    if old_meta is None and points_path.exists():
        raise ParameterError("out", f"{out}: holds points.jsonl but no sweep.json: cannot tell what the points "
                                    "were measured with", fix="choose another {name}")

    base = base or load_base(spec.model, device=spec.device, dtype=spec.dtype, seed=0)
    template = spec.template(base.model)
    data = SweepData(spec, base)
    meta = sweep_meta(spec, base, template, data)
    if old_meta is not None:
        check_compatible(old_meta, meta, str(meta_path),
                         fix="choose another --out, or pass the same settings to resume this sweep")
        meta["created"] = old_meta.get("created")
    meta["created"] = meta.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(meta_path, meta)
    torn = repair_points_file(points_path)

    done = load_points(out)
    have = {(p.get("rank"), p.get("length")) for p in done}
    todo = [p for p in spec.shard_points() if p not in have]
    pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    console = console or _console()

    befores: dict[int, float] = {}
    records: dict[int, list] = {}
    ran = 0
    mine = spec.shard_points()
    if todo and len(todo) < len(mine) and progress is True:
        console.print(f"resuming: {len(mine) - len(todo)} of {len(mine)} points done in {points_path}", markup=False)
    with _SweepBar(progress if todo else False, todo, console) as bar:
        for rank, length in todo:
            bar.start(rank, length)
            if length not in records:
                records[length] = data.records(length)
                befores[length] = loss_before(base, records[length], pad_id)
            point = run_point(base, template, spec.recipe_for(len(records[length])), records[length], rank,
                              befores[length], pad_id, fresh=data.fresh_records(length))
            point["length"] = int(length)
            if data.loss_source() is not None:
                point["loss_source"] = data.loss_source()
            if spec.shard is not None:
                point["shard"] = str(spec.shard)
            append_jsonl(points_path, point)
            ran += 1
            bar.done(point)
    points = load_points(out)
    res = finish(out, meta, points, spec.grid(), n_boot=spec.n_boot, plot=plot, ran=ran, shard=spec.shard)
    res.notes[:0] = [torn] if torn else []
    return res


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class _SweepBar:
    """Sweep progress: nothing, calls of the Python API's callback (stage, points done, points to
    do, point), or with True the commands' bar (:class:`memlaw.cli.progress.SweepBar`)."""

    def __init__(self, enabled, todo, console):
        self.callback = enabled if callable(enabled) else None
        self.bar = None
        if enabled and self.callback is None:
            from memlaw.cli.progress import SweepBar

            self.bar = SweepBar(todo, console)
        self.todo, self.n_done = todo, 0

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def start(self, rank, length):
        if self.bar is not None:
            self.bar.start(rank, length)

    def done(self, pt):
        self.n_done += 1
        if self.callback is not None:
            self.callback("calibrate", self.n_done, len(self.todo), dict(pt))
        if self.bar is not None:
            self.bar.done(pt)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


# ---------------------------------------------------------------------------------------------
# merging shards


@locks_folder("out")
def merge_sweeps(dirs: Sequence, out, *, n_boot: int = 200, plot: bool = False) -> SweepResult:
    """Merge sweep folders (shards of one sweep, or sweeps with the same settings) into ``out``:
    points concatenated (first of each (rank, length) kept), settings checked, card fitted when the
    union of the grids is complete."""
    dirs = [Path(d) for d in dirs]
    out = Path(out)
    if not dirs:
        raise UserError("nothing to merge", fix="pass the sweep folders: memplan merge DIR1 DIR2 ... --out DIR")
    for d in dirs:
        if not d.is_dir():
            raise UserError("is not a sweep folder", where=str(d), fix="pass folders written by `memplan calibrate`")
    if any(out.resolve() == d.resolve() for d in dirs):
        raise UserError("--out is one of the folders being merged", where=str(out), fix="choose a new --out folder")
    if out.exists() and (not out.is_dir() or (out / POINTS).exists() or (out / SWEEP).exists()):
        raise UserError("already holds a sweep", where=str(out), fix="choose a new --out folder")

    metas = [read_sweep_json(d / SWEEP) for d in dirs]
    for d, m in zip(dirs[1:], metas[1:]):
        check_compatible(metas[0], m, str(d / SWEEP),
                         fix=f"merge only sweeps run with the same settings as {dirs[0]}")
    points: list[dict] = []
    for d in dirs:
        if (d / POINTS).exists():
            points.extend(read_points(d / POINTS))
    points = unique_points(points)
    ranks = sorted({r for m in metas for r in (m.get("grid") or {}).get("ranks", [])})
    lengths = sorted({n for m in metas for n in (m.get("grid") or {}).get("lengths", [])})
    grid = [(r, n) for r in ranks for n in lengths]

    meta = dict(metas[0])
    meta.update(grid={"ranks": ranks, "lengths": lengths}, shard=None,
                merged_from=[str(d.resolve()) for d in dirs])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / POINTS, "".join(json.dumps(p, allow_nan=False) + "\n" for p in points))
    atomic_write_json(out / SWEEP, meta)
    res = finish(out, meta, points, grid, n_boot=n_boot, plot=plot)
    res.notes[:0] = [f"{d / POINTS}: skipped its truncated last line (a writer killed mid-line; the file is left "
                     "as it is)" for d in dirs if _torn(d / POINTS)]
    return res
