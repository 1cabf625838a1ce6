"""Calibration sweeps: fit the Parametric Memory Law ``ΔL = C·r^α·ℓ^(−β) + b`` for one base model.

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
then a second cycle of B more (warm restart): ``loss_after_B`` and ``loss_after`` (at 2B) are both
recorded, and the point is ``converged`` when the second cycle lowered the loss by no more than
max(0.05 nats, 3 % of ΔL). A point that fails the test is a lower bound on what its rank can hold
and the card fits it as one (censored), never as a converged observation; so is a saturated point
(every token locked, training stopped there).

**What ΔL counts.** ΔL = L_before − L_after, the definition the planner applies to a user's corpus.
Random-data points also record ``loss_source = ln N`` (N: the pool size) and ``loss_fresh_after``,
the adapter's loss on fresh random records it never saw — the held-out test of whether it learnt
anything but the records (``memplan fit --delta source`` fits min(L_before, ln N) − L_after
instead; docs/results.md §2 compares the two on held-out corpora).

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

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from memlaw.card import MIN_POINTS, LawCard, build_card, read_points, save_card
from memlaw.errors import ParameterError, UserError
from memlaw.io import append_jsonl, atomic_write_json, atomic_write_text
from memlaw.lock import locks_folder

POINTS = "points.jsonl"
SWEEP = "sweep.json"
LAW = "law.json"
PLOT = "law.png"

from memlaw.calibration.defaults import (DEFAULT_CHUNK, DEFAULT_LAST_LAYERS, DEFAULT_LENGTHS,  # noqa: F401
                                         DEFAULT_RANKS, DEFAULT_TARGET_MODULES, default_recipe)
FRESH_SEED_OFFSET = 1_000_003  # held-out random records: a data seed no sweep uses for training

TEMPLATE_REASON = ("q_proj,v_proj of the last two layers: narrow enough that capacity binds on a grid a "
                   "2-core CPU can train to convergence (all linear layers hold 256 random tokens at rank 1), and "
                   "above layer 0, so the frozen layers below run once per record (FrozenPrefix)")

#: sweep.json keys that must match for two sets of points to belong to one law
COMPAT_KEYS = ("base_model", "template", "recipe", "data")


# ---------------------------------------------------------------------------------------------
# what to run


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str | None) -> "Shard | None":
        if text is None or str(text).strip() == "":
            return None
        try:
            i, n = (int(x) for x in str(text).split("/"))
        except ValueError:
            raise ParameterError("shard", f"{{name}} must look like i/n (e.g. 0/4), got '{text}'") from None
        if n < 1 or not 0 <= i < n:
            raise ParameterError("shard", f"{{name}} {text}: need n ≥ 1 and 0 ≤ i < n",
                                 fix="e.g. {set}0/4 … {set}3/4")
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_ints(text: str | Sequence[int], param: str) -> tuple[int, ...]:
    """'1,2,4' (or [1, 2, 4]) → (1, 2, 4), sorted and without repeats; every value ≥ 1. Errors name
    the parameter ``param`` (the CLI re-words them with its option)."""
    if isinstance(text, str):
        try:
            vals = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ParameterError(param, f"{{name}} must be comma-separated integers, got '{text}'") from None
    else:
        try:
            vals = [int(x) for x in text]
        except (TypeError, ValueError):
            raise ParameterError(param, f"{{name}} must be integers, got {text!r}") from None
    if not vals:
        raise ParameterError(param, "{name} is empty", fix="pass e.g. {set}1,2,4,8")
    if min(vals) < 1:
        raise ParameterError(param, f"{{name}} values must be ≥ 1, got {min(vals)}")
    return tuple(sorted(set(vals)))


def parse_layers(text: str | None):
    """None (default: the last two layers), 'all', or a tuple of layer indices."""
    if text is None or str(text).strip() == "":
        return None
    if str(text).strip().lower() == "all":
        return "all"
    try:
        return tuple(sorted({int(x) for x in str(text).split(",") if x.strip()}))
    except ValueError:
        raise ParameterError("layers", f"{{name}} must be comma-separated integers or 'all', got '{text}'") from None


@dataclass
class SweepSpec:
    """Everything a sweep needs. ``layers``: None = the last two layers of the model, "all", or
    explicit indices. ``batch_size``: None = all records of a point in one batch."""

    model: str
    ranks: tuple[int, ...] = DEFAULT_RANKS
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    layers: tuple[int, ...] | str | None = None
    alpha: str | float = "2*rank"
    recipe: object = field(default_factory=default_recipe)  # memlaw.memft.Recipe
    batch_size: int | None = None
    chunk: int = DEFAULT_CHUNK
    data: object = None  # memlaw.memft.CorpusSpec, or None for random tokens
    data_seed: int = 0
    shard: Shard | None = None
    device: str = "cpu"
    dtype: str = "float32"
    n_boot: int = 200

    def __post_init__(self):
        self.ranks = parse_ints(self.ranks, "ranks")
        self.lengths = parse_ints(self.lengths, "lengths")
        if isinstance(self.layers, str):
            self.layers = parse_layers(self.layers)
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules:
            raise ParameterError("target_modules", "{name} is empty", fix="pass e.g. {set}q_proj,v_proj")
        if self.chunk < 1:
            raise ParameterError("chunk", f"{{name}} must be ≥ 1, got {self.chunk}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ParameterError("batch_size", f"{{name}} must be ≥ 1, got {self.batch_size}")
        if len(self.ranks) < 2 or len(self.lengths) < 2 or len(self.grid()) < MIN_POINTS:
            raise ParameterError("ranks", f"a grid of {len(self.ranks)} rank(s) × {len(self.lengths)} length(s) "
                                          "cannot determine the law (C, α, β, b)",
                                 fix=f"sweep at least 2 ranks and 2 lengths, {MIN_POINTS}+ points (e.g. {{set}}1,2,4,8 "
                                     "{set:lengths}64,128,256)")

    def grid(self) -> list[tuple[int, int]]:
        """Every (rank, length), row-major: ranks outer, lengths inner."""
        return [(r, n) for r in self.ranks for n in self.lengths]

    def shard_points(self) -> list[tuple[int, int]]:
        g = self.grid()
        if self.shard is None:
            return g
        return [p for i, p in enumerate(g) if i % self.shard.count == self.shard.index]

    def template(self, model):
        """The LoRA template with the layers resolved against the model."""
        from memlaw.memft import LoraTemplate

        n = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        if self.layers is None or self.layers == "all":
            if n < 1:
                raise ParameterError("layers", "cannot tell how many layers the model has (config.num_hidden_layers)",
                                     fix="pass {name} explicitly")
            layers = tuple(range(max(0, n - DEFAULT_LAST_LAYERS), n)) if self.layers is None else tuple(range(n))
        else:
            layers = tuple(self.layers)
            bad = [x for x in layers if x < 0 or (n and x >= n)]
            if bad:
                raise ParameterError("layers", f"{{name}} {','.join(map(str, bad))}: the model has layers 0–{n - 1}")
        t = LoraTemplate(target_modules=self.target_modules, layers=layers, alpha=self.alpha)
        try:
            t.alpha_for(1)
        except ValueError:
            raise ParameterError("alpha", f"{{name}} must be a number or k*rank, got '{self.alpha}'") from None
        if not t.matched_modules(model):
            raise ParameterError("target_modules", f"LoRA target modules {list(self.target_modules)} on layers "
                                                   f"{list(layers)} match no module of the model",
                                 fix="pass {name} names that exist (e.g. q_proj,v_proj)")
        return t

    def recipe_dict(self) -> dict:
        d = self.recipe.to_dict()
        d["batch_size"] = "all" if self.batch_size is None else int(self.batch_size)
        d["objective"] = d["method"]
        d["dtype"] = self.dtype
        return d

    def recipe_for(self, n_records: int):
        return dataclasses.replace(self.recipe, batch_size=self.batch_size or max(1, n_records))


# ---------------------------------------------------------------------------------------------
# data


def special_ids(tokenizer) -> set[int]:
    ids = set(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []))
    ids |= set(int(i) for i in (getattr(tokenizer, "added_tokens_decoder", None) or {}))
    return ids


def token_pool(tokenizer, model) -> np.ndarray:
    """The token ids random data is drawn from: the tokenizer's vocabulary minus special and added
    tokens, within the model's embedding size."""
    vocab = len(tokenizer)
    cfg_vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if cfg_vocab:
        vocab = min(vocab, int(cfg_vocab))
    skip = special_ids(tokenizer)
    pool = np.array([i for i in range(vocab) if i not in skip], dtype=np.int64)
    if len(pool) < 2:
        raise UserError("the tokenizer has fewer than 2 non-special tokens to draw random data from")
    return pool


def random_records(tokenizer, pool: np.ndarray, length: int, chunk: int, seed: int) -> list:
    """Content-free records: ``length`` target tokens drawn uniformly from ``pool`` (seeded by
    (seed, length)), ⌈length/chunk⌉ records, key = [bos or eos] + a distinct tag (see module doc)."""
    from memlaw.corpus import Encoded

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise UserError("the tokenizer has neither a BOS nor an EOS token to start random records from")
    rng = np.random.default_rng([int(seed), int(length)])
    ids = pool[rng.integers(0, len(pool), size=length)]
    n_rec = math.ceil(length / chunk)
    perm = pool[rng.permutation(len(pool))]
    digits = max(1, math.ceil(math.log(n_rec) / math.log(len(pool)))) if n_rec > 1 else 1
    out = []
    for j in range(n_rec):
        tag, x = [], j
        for _ in range(digits):
            tag.append(int(perm[x % len(pool)]))
            x //= len(pool)
        target = tuple(int(t) for t in ids[j * chunk:(j + 1) * chunk])
        out.append(Encoded(key_ids=(int(start), *tag), target_ids=target, index=j))
    return out


def corpus_slice(encoded: Sequence, length: int) -> list:
    """Records in file order until ``length`` target tokens, the last one truncated."""
    from memlaw.corpus import Encoded

    out, need = [], length
    for e in encoded:
        if need <= 0:
            break
        t = e.target_ids[:need]
        out.append(Encoded(key_ids=e.key_ids, target_ids=t, index=len(out)))
        need -= len(t)
    return out


class SweepData:
    """The records of each length, built once."""

    def __init__(self, spec: SweepSpec, base):
        self.spec, self.base = spec, base
        self._pool = None
        self._encoded = None
        if spec.data is not None:
            from memlaw.corpus import encode_records

            self._encoded = encode_records(base.tokenizer, spec.data.read())
            total = sum(e.n_target for e in self._encoded)
            if total < max(spec.lengths):
                raise ParameterError("lengths", f"{spec.data.path}: the corpus holds {total} target tokens, fewer "
                                                f"than the longest {{name}} ({max(spec.lengths)})",
                                     fix=f"pass {{name}} up to {total}, or a larger corpus")
        else:
            self._pool = token_pool(base.tokenizer, base.model)

    def describe(self) -> dict:
        s = self.spec
        if s.data is None:
            return {"kind": "random", "chunk": s.chunk, "seed": s.data_seed, "pool_size": int(len(self._pool))}
        d = s.data.to_dict()
        return {"kind": "corpus", "name": Path(s.data.path).name, "sha256": d["sha256"], "fmt": d["fmt"],
                "key_field": d["key_field"], "target_field": d["target_field"]}

    def kind(self) -> str:
        return "random" if self.spec.data is None else f"corpus:{Path(self.spec.data.path).name}"

    def loss_source(self) -> float | None:
        """The entropy of the data source (nats/token) when known: ln N for N equally likely tokens."""
        return math.log(len(self._pool)) if self._pool is not None else None

    def records(self, length: int) -> list:
        if self._encoded is not None:
            return corpus_slice(self._encoded, length)
        return random_records(self.base.tokenizer, self._pool, length, self.spec.chunk, self.spec.data_seed)

    def fresh_records(self, length: int) -> list | None:
        """Held-out records of the same kind (random data: another seed); None for a corpus."""
        if self._encoded is not None:
            return None
        return random_records(self.base.tokenizer, self._pool, length, self.spec.chunk,
                              self.spec.data_seed + FRESH_SEED_OFFSET)


# ---------------------------------------------------------------------------------------------
# one point


def loss_before(base, records, pad_id: int) -> float:
    from memlaw.scoring import score, summarize

    return float(summarize(score(base.model, records, pad_id=pad_id))["mean_loss"])


def run_point(base, template, recipe, records, rank: int, l_before: float, pad_id: int = 0,
              cache_prefix: bool = True, fresh=None) -> dict:
    """Train a fresh rank-``rank`` adapter on ``records`` and measure it. The adapter is removed
    again afterwards (``unload``): ``base.model`` is the clean base model when this returns.

    The point records its convergence evidence: the loss after the first cycle (budget B) and the
    last (2B with the default 2 cycles), and whether the last cycle still lowered it by more than
    the recipe's tolerance (then ``converged`` is false and the card fits the point only as a lower
    bound). ``fresh``: records of the same kind never trained on; their loss after training is
    the held-out test of what the adapter learnt beyond the records themselves."""
    from memlaw.memft import make_lora_model, seed_everything, train
    from memlaw.scoring import score, summarize

    start = time.perf_counter()
    seed_everything(recipe.seed)
    model = make_lora_model(base.model, template, rank, recipe.seed)
    try:
        result = train(model, records, recipe, pad_id=pad_id, progress=False, cache_prefix=cache_prefix,
                       loss_before=l_before)
        after = summarize(score(model, records, pad_id=pad_id))
        fresh_after = summarize(score(model, fresh, pad_id=pad_id))["mean_loss"] if fresh else None
    finally:
        base.model = model.unload()
        base.model.eval()
    ends = result.cycle_ends
    point = {
        "rank": int(rank),
        "length": int(sum(e.n_target for e in records)),
        "loss_before": float(l_before),
        "loss_after": float(after["mean_loss"]),
        "coverage": float(after["coverage"]),
        "exact_records": int(after["exact_records"]),
        "locked_records": int(after["locked_records"]),
        "records": int(after["records"]),
        "steps": int(result.steps),
        "seconds": round(time.perf_counter() - start, 3),
        "train_seconds": round(result.seconds, 3),
        "stop_reason": result.stop_reason,
        "converged": result.converged,
        "seed": int(recipe.seed),
    }
    if len(ends) >= 2:
        point["loss_after_B"] = float(ends[-2]["mean_loss"])
        point["coverage_B"] = float(ends[-2]["coverage"])
        point["steps_B"] = int(ends[-2]["step"])
    if fresh_after is not None:
        point["loss_fresh_after"] = float(fresh_after)
    return point


# ---------------------------------------------------------------------------------------------
# sweep folder helpers


def _canon(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def _diff(old, new, path=""):
    """First (path, old, new) where two JSON values differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            d = _diff(old.get(k), new.get(k), f"{path}.{k}" if path else k)
            if d:
                return d
        return None
    return None if old == new else (path, old, new)


def _short(v, n=40) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= n else s[: n - 1] + "…"


#: recipe fields that say how points are judged, not how they are trained: they may change on resume
FIT_ONLY_RECIPE_KEYS = ("converge_rel_tol", "converge_abs_tol", "stop_rule")


def check_compatible(old: dict, new: dict, where: str, fix: str) -> None:
    for key in COMPAT_KEYS:
        a, b = _canon(old.get(key)), _canon(new.get(key))
        if key == "recipe" and isinstance(a, dict) and isinstance(b, dict):
            a = {k: v for k, v in a.items() if k not in FIT_ONLY_RECIPE_KEYS}
            b = {k: v for k, v in b.items() if k not in FIT_ONLY_RECIPE_KEYS}
        d = _diff(a, b, key)
        if d:
            raise UserError(f"was measured with another {key} ({d[0]}: {_short(d[1])} ≠ {_short(d[2])})",
                            where=where, fix=fix)


def read_sweep_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("no sweep.json", where=str(path.parent),
                        fix="pass folders written by `memplan calibrate`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the sweep description ({e.__class__.__name__})", where=str(path),
                        fix="fix or remove sweep.json") from None
    if not isinstance(meta, dict):
        raise UserError("the sweep description is not a JSON object", where=str(path))
    return meta


def unique_points(points: list[dict]) -> list[dict]:
    """First point of each (rank, length)."""
    seen, out = set(), []
    for p in points:
        key = (p.get("rank"), p.get("length"))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def load_points(out: Path) -> list[dict]:
    path = Path(out) / POINTS
    return unique_points(read_points(path)) if path.exists() else []


def repair_points_file(path: Path) -> str | None:
    """Drop a truncated last line (a writer killed mid-line) so appended points stay readable;
    returns a note saying so (None when the file was whole). A last line that is a whole point but
    lacks its newline is kept."""
    if not path.exists():
        return None
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        start = raw.rfind(b"\n") + 1
        try:
            whole = isinstance(json.loads(raw[start:]), dict)
        except ValueError:
            whole = False
        with open(path, "r+b") as f:
            if whole:
                f.seek(0, 2)
                f.write(b"\n")
                return None
            f.truncate(start)
        return (f"{path}: dropped a truncated last line ({len(raw) - start} bytes, left by a writer killed "
                "mid-line); its point is measured again")
    return None


def missing_points(grid, points) -> list[tuple[int, int]]:
    have = {(p.get("rank"), p.get("length")) for p in points}
    return [g for g in grid if g not in have]


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
    """One progress bar over the whole sweep, weighted by length (a point's cost ~ ℓ), with an ETA;
    one line per finished point (also readable in a batch job's log)."""

    def __init__(self, enabled, todo, console):
        # a callable (the Python API's progress) gets (stage, points done, points to do, point) instead
        self.callback = enabled if callable(enabled) else None
        self.enabled, self.todo, self.console = bool(enabled) and self.callback is None, todo, console
        self.n_done = 0

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.p = Progress(TextColumn("sweep {task.fields[what]}"), BarColumn(),
                              TextColumn("{task.fields[count]}"), TimeElapsedColumn(), TextColumn("ETA"),
                              TimeRemainingColumn(), console=self.console, transient=False)
            self.p.start()
            self.task = self.p.add_task("sweep", total=sum(n for _, n in self.todo), what="",
                                        count=f"0/{len(self.todo)} points")
        return self

    def start(self, rank, length):
        if self.enabled:
            self.p.update(self.task, what=f"r={rank} ℓ={length}")

    def done(self, pt):
        self.n_done += 1
        if self.callback is not None:
            self.callback("calibrate", self.n_done, len(self.todo), dict(pt))
        if self.enabled:
            self.p.update(self.task, advance=pt["length"], count=f"{self.n_done}/{len(self.todo)} points")
            self.p.console.print(
                f"r={pt['rank']} ℓ={pt['length']}: L {pt['loss_before']:.3f} → "
                + (f"{pt['loss_after_B']:.3f} (B) → " if "loss_after_B" in pt else "")
                + f"{pt['loss_after']:.3f}, coverage {pt['coverage']:.3f}, exact {pt['exact_records']}/{pt['records']}, "
                f"{pt['steps']} steps ({pt['stop_reason']}, "
                + {True: "converged", False: "NOT converged", None: "convergence not tested"}[pt.get("converged")]
                + f"), {pt['seconds']:.1f} s", soft_wrap=True)

    def __exit__(self, *exc):
        if self.enabled:
            self.p.stop()
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


def _torn(path: Path) -> bool:
    """Does ``path`` end in a partial line that is not a whole point (read_points skips it)?"""
    try:
        tail = path.read_bytes().rsplit(b"\n", 1)[-1]
        return bool(tail.strip()) and not isinstance(json.loads(tail), dict)
    except ValueError:
        return True
    except OSError:  # no points file
        return False


# ---------------------------------------------------------------------------------------------
# plot


def plot_card(card: LawCard, path) -> str | None:
    """ΔL against r (log-log), one colour per ℓ: measured points (hollow: saturated, a lower bound)
    and the fitted curves. Returns None when written, else a one-line note why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'memlaw[plot]')"
    law = card.law()
    pts = card.points
    lengths = sorted({float(p["length"]) for p in pts})
    r_lo, r_hi = card.domain["rank"]
    rr = np.geomspace(r_lo, r_hi, 100)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("viridis")
    for i, n in enumerate(lengths):
        color = cmap(i / max(1, len(lengths) - 1))
        mine = [p for p in pts if float(p["length"]) == n]
        for sat in (False, True):
            sel = [p for p in mine if bool(p.get("saturated")) == sat and p["delta_loss"] > 0]
            if sel:
                ax.scatter([p["rank"] for p in sel], [p["delta_loss"] for p in sel], s=36, zorder=3,
                           facecolors="none" if sat else color, edgecolors=color,
                           label=None if sat else f"ℓ = {n:g}")
        pred = law.predict(rr, n)
        ok = pred > 0
        ax.plot(rr[ok], pred[ok], color=color, lw=1.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.set_xticks(sorted({float(p["rank"]) for p in pts}))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("ΔL = L_before − L_after (nats/token)")
    c = card.coefficients
    ax.set_title(f"{card.base_model.get('name', '?')}: ΔL = {c['C']:.3g}·r^{c['alpha']:.3g}·ℓ^(−{c['beta']:.3g}) "
                 f"+ {c['b']:.3g}   R² = {card.r2:.3f}", fontsize=9)
    ax.legend(fontsize=8, title="hollow: saturated (a lower bound)" if card.n_saturated else None,
              title_fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return None
