"""The law card: one calibrated Parametric Memory Law and everything needed to trust or reuse it.

A card is a versioned JSON file. It records what was calibrated (base model and its hashes, LoRA
template, training recipe, data kind), the fitted coefficients with bootstrap intervals and R², the
calibrated domain, the sweep points themselves and the loss at which coverage reached its targets.
Torch-free: the planner reads cards without a deep-learning stack.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from memlaw import __version__
from memlaw.errors import UserError
from memlaw.io import atomic_write_json, json_safe
from memlaw.law import NAMES, FitError, Law, bootstrap, coverage_loss_thresholds, fit

SCHEMA_VERSION = 1
MIN_POINTS = 5
INTERVAL_LEVEL = 0.9
REQUIRED_POINT_KEYS = ("rank", "length", "loss_before", "loss_after", "coverage")


@dataclass
class LawCard:
    schema_version: int
    base_model: dict  # name, config_sha256, weights_sha256
    template: dict  # target_modules, layers, alpha (rule like "2*rank" or a number), params_per_rank
    recipe: dict  # objective, lr, batch_size, stop_rule, max_steps, seed, dtype, … (free-form)
    data_kind: str  # "random" or a corpus name
    coefficients: dict  # C, alpha, beta, b
    intervals: dict  # name -> [lo, hi] at interval_level
    interval_level: float
    r2: float
    domain: dict  # rank: [min, max], length: [min, max]
    points: list  # sweep points: rank, length, loss_before, loss_after, coverage, (steps, seconds, …)
    coverage_loss: dict  # "0.9"/"0.99"/"1.0" -> loss_after threshold or None
    bootstrap_samples: list = field(default_factory=list)  # [[C, alpha, beta, b], …]
    n_saturated: int = 0
    created: str = ""
    memlaw_version: str = ""

    def law(self) -> Law:
        return Law.from_dict(self.coefficients)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# building


def _num(x) -> float | None:
    """A finite float, or None for anything else (missing, null, NaN, a string, a bool)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def build_card(points: list[dict], *, base_model: dict, template: dict, recipe: dict, data_kind: str,
               n_boot: int = 200, seed: int = 0, saturation_loss: float = math.log(2)) -> LawCard:
    """Fit the law to sweep points and wrap it in a card.

    ΔL = min(loss_before, loss_source) − loss_after, where a point's optional ``loss_source`` is
    the entropy of its data source (random tokens: ln of the pool size; see
    :mod:`memlaw.calibration.sweep`, "What ΔL counts"): the nats above it are learnt from the
    token distribution alone, not stored. Without ``loss_source``, ΔL = loss_before − loss_after.
    A point is *saturated* when coverage >= 1.0 and
    loss_after <= ``saturation_loss`` (default ln 2, i.e. every token locked): the adapter held
    everything and training stopped there (memft's stop rule), so its ΔL says only that the
    capacity was at least that much — it enters the fit as a censored (lower-bound) observation,
    see ``memlaw.law.fit``.

    Points whose numbers are missing or not finite (e.g. a failed run wrote null) are not usable
    and are left out; a point lacking a required key altogether is an error.
    """
    usable = []
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise UserError(f"point {i + 1} is not a JSON object", fix="each line of points.jsonl must be an object")
        missing = [k for k in REQUIRED_POINT_KEYS if k not in p]
        if missing:
            raise UserError(f"point {i + 1} lacks {', '.join(missing)}",
                            fix=f"every point needs {', '.join(REQUIRED_POINT_KEYS)}")
        vals = [_num(p[k]) for k in REQUIRED_POINT_KEYS]
        if any(v is None for v in vals) or vals[0] <= 0 or vals[1] <= 0:
            continue
        usable.append(p)
    if len(usable) < MIN_POINTS:
        raise UserError(f"only {len(usable)} usable sweep points; the law needs at least {MIN_POINTS}",
                        fix="run the sweep over more ranks and lengths (e.g. 4 ranks × 3 lengths)")

    r = np.array([float(p["rank"]) for p in usable])
    l = np.array([float(p["length"]) for p in usable])
    lb = np.array([float(p["loss_before"]) for p in usable])
    la = np.array([float(p["loss_after"]) for p in usable])
    cov = np.array([float(p["coverage"]) for p in usable])
    source = np.array([np.inf if (s := _num(p.get("loss_source"))) is None else s for p in usable])
    dl = np.minimum(lb, source) - la
    sat = (cov >= 1.0) & (la <= saturation_loss)

    try:
        res = fit(r, l, dl, sat)
    except FitError as e:
        raise UserError(f"the law fit failed: {e}",
                        fix="add more ranks and lengths to the sweep (smaller ranks or longer targets "
                            "if every adapter saturated)") from None
    if not math.isfinite(res.r2):
        raise UserError("R² is undefined: the unsaturated points all have the same ΔL",
                        fix="sweep a wider range of ranks and lengths")
    boot = bootstrap(r, l, dl, sat, n=n_boot, seed=seed) if n_boot > 0 else None
    intervals = boot.intervals(INTERVAL_LEVEL) if boot is not None else {}

    stored = []
    for p, d, s in zip(usable, dl, sat):
        q = dict(p)
        q["delta_loss"] = float(d)
        q["saturated"] = bool(s)
        stored.append(q)

    return LawCard(
        schema_version=SCHEMA_VERSION,
        base_model=dict(base_model),
        template=dict(template),
        recipe=dict(recipe),
        data_kind=str(data_kind),
        coefficients=res.law.to_dict(),
        intervals=intervals,
        interval_level=INTERVAL_LEVEL,
        r2=float(res.r2),
        domain={"rank": [float(r.min()), float(r.max())], "length": [float(l.min()), float(l.max())]},
        points=stored,
        coverage_loss=coverage_loss_thresholds(la, cov),
        bootstrap_samples=[] if boot is None else boot.samples.tolist(),
        n_saturated=int(res.n_saturated),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        memlaw_version=__version__,
    )


# ---------------------------------------------------------------------------------------------
# saving and loading


def save_card(card: LawCard, path) -> None:
    atomic_write_json(path, json_safe(card.to_dict()), indent=2)


def _bad(path, what, fix="re-create it with `memplan fit POINTS.jsonl --out CARD.json`"):
    return UserError(f"not a valid law card: {what}", where=str(path), fix=fix)


def load_card(path) -> LawCard:
    """Read and validate a card. Every problem is a UserError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("no such law card", where=str(path),
                        fix="check the path, or create one with `memplan fit`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the law card ({e.__class__.__name__}: {e})", where=str(path)) from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(path, f"not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(d, dict):
        raise _bad(path, "the top level is not a JSON object")

    version = d.get("schema_version")
    if "schema_version" in d and (isinstance(version, bool) or version != SCHEMA_VERSION):
        raise UserError(f"law card schema version {version!r}; memlaw {__version__} reads version {SCHEMA_VERSION}",
                        where=str(path), fix="re-fit the card with this memlaw (`memplan fit`)")
    # fields without a default are required; the rest fall back to their defaults
    required = [f.name for f in fields(LawCard) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in d]
    if missing:
        raise _bad(path, f"missing field(s) {', '.join(missing)}")

    for k in ("base_model", "template", "recipe", "coefficients", "intervals", "domain", "coverage_loss"):
        if not isinstance(d[k], dict):
            raise _bad(path, f"'{k}' must be a JSON object")
    if not isinstance(d["points"], list) or not all(isinstance(p, dict) for p in d["points"]):
        raise _bad(path, "'points' must be a list of objects")

    coef = d["coefficients"]
    for k in NAMES:
        if k not in coef:
            raise _bad(path, f"coefficient '{k}' is missing")
        if _num(coef[k]) is None:
            raise _bad(path, f"coefficient '{k}' is {coef[k]!r}, not a finite number")
    if coef["C"] <= 0:
        raise _bad(path, f"coefficient 'C' must be positive, got {coef['C']}")
    for k in ("r2", "interval_level"):
        if _num(d[k]) is None:
            raise _bad(path, f"'{k}' is {d[k]!r}, not a finite number")
    for name, iv in d["intervals"].items():
        if not (isinstance(iv, list) and len(iv) == 2 and all(_num(v) is not None for v in iv)):
            raise _bad(path, f"interval '{name}' must be [lo, hi] of finite numbers")
    for k in ("rank", "length"):
        iv = d["domain"].get(k)
        if not (isinstance(iv, list) and len(iv) == 2 and all(_num(v) is not None for v in iv)):
            raise _bad(path, f"domain '{k}' must be [min, max] of finite numbers")
    samples = d.get("bootstrap_samples", [])
    if not isinstance(samples, list) or not all(
            isinstance(s, list) and len(s) == 4 and all(_num(v) is not None for v in s) for s in samples):
        raise _bad(path, "'bootstrap_samples' must be a list of [C, alpha, beta, b] finite numbers")

    known = {f.name for f in fields(LawCard)}
    return LawCard(**{k: v for k, v in d.items() if k in known})  # unknown keys: newer minor fields


# ---------------------------------------------------------------------------------------------
# points files


def read_points(path) -> list[dict]:
    """Read a sweep's points.jsonl.

    The writer appends one fsynced line per point, so a killed sweep leaves at most one truncated
    *last* line: it is skipped. A bad line anywhere else means the file is damaged → UserError with
    file:line. Points repeated for the same (rank, length[, shard][, seed]) — a resumed sweep that
    re-ran a point — keep the first.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError("no such points file", where=str(path), fix="pass the points.jsonl a sweep wrote") from None
    except OSError as e:
        raise UserError(f"cannot read the points file ({e})", where=str(path)) from None

    lines = [(i + 1, ln) for i, ln in enumerate(raw.split(b"\n")) if ln.strip()]
    points, seen = [], set()
    for j, (lineno, ln) in enumerate(lines):
        try:
            obj = json.loads(ln.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError) as e:
            if j == len(lines) - 1:
                break  # truncated last line of a killed writer
            raise UserError(f"invalid point ({e.__class__.__name__}: {e})".replace("\n", " "),
                            where=f"{path}:{lineno}",
                            fix="fix or delete that line (only a truncated last line is skipped)") from None
        key = tuple(json.dumps(obj.get(k), sort_keys=True) for k in ("rank", "length", "shard", "seed"))
        if key in seen:
            continue
        seen.add(key)
        points.append(obj)
    return points


# ---------------------------------------------------------------------------------------------
# display


def _fmt(x, digits=4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def card_summary(card: LawCard) -> list[tuple[str, str]]:
    """(label, value) rows for a human table."""
    c = card.coefficients
    bm = card.base_model
    t = card.template
    rows = [
        ("base model", str(bm.get("name", "—"))),
        ("config sha256", str(bm.get("config_sha256") or "—")[:16]),
        ("weights sha256", str(bm.get("weights_sha256") or "—")[:16]),
        ("data kind", card.data_kind),
        ("target modules", ", ".join(map(str, t.get("target_modules") or [])) or "—"),
        ("layers", "all" if t.get("layers") is None else ", ".join(map(str, t["layers"]))),
        ("lora alpha", _fmt(t.get("alpha"))),
        ("params per rank", _fmt(t.get("params_per_rank"))),
        ("objective", _fmt(card.recipe.get("objective"))),
        ("law", f"ΔL = {c['C']:.4g} · r^{c['alpha']:.4g} · ℓ^(−{c['beta']:.4g}) + {c['b']:.4g}"),
    ]
    for k in NAMES:
        iv = card.intervals.get(k)
        ci = f"  [{iv[0]:.4g}, {iv[1]:.4g}] ({card.interval_level:.0%})" if iv else ""
        rows.append((k, f"{c[k]:.4g}{ci}"))
    rows += [
        ("R²", f"{card.r2:.4f}"),
        ("points", f"{len(card.points)} ({card.n_saturated} saturated)"),
        ("rank domain", f"{_fmt(card.domain['rank'][0])} – {_fmt(card.domain['rank'][1])}"),
        ("length domain", f"{_fmt(card.domain['length'][0])} – {_fmt(card.domain['length'][1])}"),
    ]
    for target, loss in card.coverage_loss.items():
        rows.append((f"loss for coverage ≥ {target}", _fmt(loss)))
    rows.append(("created", f"{card.created or '—'} (memlaw {card.memlaw_version or '?'})"))
    return rows
