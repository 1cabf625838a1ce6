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
from memlaw.errors import ParameterError, UserError
from memlaw.io import atomic_write_json, json_safe
from memlaw.law import FORMS, NAMES, FitError, Law, bootstrap, coverage_loss_thresholds, fit

SCHEMA_VERSION = 2  # 2: convergence evidence, censoring of non-converged points, delta_definition
MIN_POINTS = 5
INTERVAL_LEVEL = 0.9
REQUIRED_POINT_KEYS = ("rank", "length", "loss_before", "loss_after", "coverage")
VALIDATION_FIELDS = ("mean_abs_error", "max_abs_error", "cells", "corpora")  # per predictor in ``validation``
#: the other keys of ``validation``: where it is written up, how it was made, and ``named_rank``: how
#: often the rank the planner named reached its target on every seed ({"predictor", "seeds", "targets":
#: {"0.99": {"reached", "cases", "missed": [corpus, …]}}})
VALIDATION_META = ("source", "how", "named_rank")

from memlaw.calibration.defaults import DEFAULT_DELTA, DEFAULT_LAW_FORM, DELTA_DEFINITIONS  # noqa: E402
#: the convergence test's tolerance (a recipe may record its own): a second cycle of B steps may
#: lower the loss by at most this share of ΔL, or this many nats
CONVERGE_REL_TOL = 0.10
CONVERGE_ABS_TOL = 0.05


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
    delta_definition: str = "raw"  # see DELTA_DEFINITIONS
    n_not_converged: int = 0
    sweep: dict = field(default_factory=dict)  # wall time, template reason, … (free-form)
    law_form: str = "pml"  # see memlaw.law.FORMS; cards from before the capacity form are "pml"
    # how this card's coverage predictions fared on held-out corpora, per coverage predictor:
    # {"unigram": {"mean_abs_error", "max_abs_error", "cells", "corpora"}, …, "source": where, "how": command};
    # written by benchmarks/planner_accuracy.py --record-validation, never by a fit (a refit is a new card)
    validation: dict = field(default_factory=dict)
    # what the card's nats are worth on records told apart only by the digits of their key, relative to
    # the card's own keys: {"digits_only_keys": f, "source": where, "how": command}; measured on
    # content-free points by benchmarks/key_kind.py --record, never by a fit
    key_factor: dict = field(default_factory=dict)
    # spare nats the named rank needs at high targets: the law's nats at the rank must reach h(t) times
    # the nats ``predictor`` prices the target t at, because the recipe locks the last percent of tokens
    # only with room to spare while the predictors saturate at 1.000 once the nats merely suffice:
    # {"predictor": "context", "targets": {"0.9": 1.035, "0.99": 1.83}, "source": where, "how": command};
    # fitted on held-out cells by benchmarks/target_headroom.py --record, never by a fit
    target_headroom: dict = field(default_factory=dict)

    def law(self) -> Law:
        return Law.from_dict(self.coefficients)

    def key_scale(self, digit_keyed_share: float) -> float:
        """The share of the law's nats a corpus gets when ``digit_keyed_share`` of its records are told
        apart only by the digits of their key (``memlaw.corpus.digits_only_keys``): 1 − s·(1 − f),
        1 without a measured factor f."""
        f = _num(self.key_factor.get("digits_only_keys"))
        return 1.0 if f is None else 1.0 - float(digit_keyed_share) * (1.0 - f)

    def headroom(self, coverage: float, predictor: str) -> float:
        """h(coverage) for ``predictor``: linear in log(1 − t) between the recorded targets, the end
        values beyond them (a target of 1.0 gets the highest recorded one); 1 without a record for
        this predictor."""
        rec = self.target_headroom
        if not rec or rec.get("predictor") != predictor or not rec.get("targets"):
            return 1.0
        pts = sorted((float(t), float(h)) for t, h in rec["targets"].items())
        x = [-math.log10(1.0 - t) for t, _ in pts]
        here = -math.log10(max(1.0 - float(coverage), 1e-12))
        return float(np.interp(here, x, [h for _, h in pts]))

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


def point_delta(p: dict, definition: str = "raw") -> float:
    """A point's ΔL under a definition (see DELTA_DEFINITIONS)."""
    lb = float(p["loss_before"])
    if definition == "source" and (src := _num(p.get("loss_source"))) is not None:
        lb = min(lb, src)
    return lb - float(p["loss_after"])


def converged(p: dict, rel_tol: float = CONVERGE_REL_TOL, abs_tol: float = CONVERGE_ABS_TOL,
              cov_tol: float | None = None) -> bool:
    """The convergence test, from a point's own evidence: the last cycle (budget B → 2B) lowered
    the loss by at most max(abs_tol, rel_tol·ΔL) and, with ``cov_tol`` (a recipe that records one),
    raised coverage by at most ``cov_tol``. A point without that evidence counts as converged only
    if it says so itself."""
    lb, la, la_b = _num(p.get("loss_before")), _num(p.get("loss_after")), _num(p.get("loss_after_B"))
    if None not in (lb, la, la_b):
        from memlaw.memft import passes_convergence_test

        return passes_convergence_test(lb, la_b, la, rel_tol, abs_tol, _num(p.get("coverage_B")),
                                       _num(p.get("coverage")), cov_tol)
    return p.get("converged") is True


#: a point whose adapter holds this share of all the information its records carry (ΔL ≥ 90 % of
#: its L_before under the ΔL definition) is bounded by the data, not by its rank
NEAR_CEILING_SHARE = 0.9


def censoring(p: dict, saturation_loss: float = math.log(2), rel_tol: float = CONVERGE_REL_TOL,
              abs_tol: float = CONVERGE_ABS_TOL, cov_tol: float | None = None,
              delta_definition: str | None = None) -> str | None:
    """Why a point is only a lower bound on the converged ΔL, or None when it is an observation.

    * ``saturated`` — every token locked (coverage 1, loss ≤ ln 2): the adapter held everything,
      so its capacity was at least that much; with a ``delta_definition`` (the capacity form)
      also ``near_ceiling``: ΔL reached NEAR_CEILING_SHARE of what the records hold under that
      definition — the data ran out before the rank did;
    * ``not_converged`` — the convergence test failed (another cycle still lowered the loss more
      than its tolerance), or the point carries no evidence (made before the test existed), so
      more training would have raised ΔL."""
    if float(p["coverage"]) >= 1.0 and float(p["loss_after"]) <= saturation_loss:
        return "saturated"
    if delta_definition is not None:
        held = point_delta(p, delta_definition)
        if held >= NEAR_CEILING_SHARE * (held + float(p["loss_after"])):
            return "near_ceiling"
    if not converged(p, rel_tol, abs_tol, cov_tol):
        return "not_converged"
    return None


def build_card(points: list[dict], *, base_model: dict, template: dict, recipe: dict, data_kind: str,
               n_boot: int = 200, seed: int = 0, saturation_loss: float = math.log(2),
               delta_definition: str = DEFAULT_DELTA, sweep: dict | None = None,
               law_form: str = DEFAULT_LAW_FORM) -> LawCard:
    """Fit the law to sweep points and wrap it in a card (``law_form``: see memlaw.law.FORMS).

    ΔL per point by ``delta_definition`` (DELTA_DEFINITIONS). Points that are only lower bounds —
    saturated ones, and ones that did not pass the convergence test (:func:`censoring`) — enter
    the fit as censored observations (see ``memlaw.law.fit``): never as if they had converged,
    and not in R².

    Points whose numbers are missing or not finite (e.g. a failed run wrote null) are not usable
    and are left out; a point lacking a required key altogether is an error.
    """
    if delta_definition not in DELTA_DEFINITIONS:
        raise UserError(f"unknown ΔL definition '{delta_definition}'", fix=f"use one of {', '.join(DELTA_DEFINITIONS)}")
    if law_form not in FORMS:
        raise UserError(f"unknown law form '{law_form}'", fix=f"use one of {', '.join(FORMS)}")
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
    la = np.array([float(p["loss_after"]) for p in usable])
    cov = np.array([float(p["coverage"]) for p in usable])
    dl = np.array([point_delta(p, delta_definition) for p in usable])
    rel_tol = _num((recipe or {}).get("converge_rel_tol")) or CONVERGE_REL_TOL
    abs_tol = _num((recipe or {}).get("converge_abs_tol")) or CONVERGE_ABS_TOL
    cov_tol = _num((recipe or {}).get("converge_cov_tol"))  # None for recipes from before the coverage clause
    ceiling_rule = delta_definition if law_form == "capacity" else None
    why = [censoring(p, saturation_loss, rel_tol, abs_tol, cov_tol, ceiling_rule) for p in usable]
    cens = np.array([w is not None for w in why])

    try:
        res = fit(r, l, dl, cens, form=law_form)
    except FitError as e:
        raise ParameterError("max_steps", f"the law fit failed: {e}",
                             fix="train the points longer (a larger {name}, so they pass the convergence test) "
                                 "or sweep smaller ranks / longer targets if every adapter saturated") from None
    if not math.isfinite(res.r2):
        raise UserError("R² is undefined: the converged, unsaturated points all have the same ΔL",
                        fix="sweep a wider range of ranks and lengths")
    boot = bootstrap(r, l, dl, cens, n=n_boot, seed=seed, form=law_form) if n_boot > 0 else None
    intervals = boot.intervals(INTERVAL_LEVEL) if boot is not None else {}

    stored = []
    for p, d, w in zip(usable, dl, why):
        q = dict(p)
        q["delta_loss"] = float(d)
        q["saturated"] = w in ("saturated", "near_ceiling")
        q["censored"] = w
        q["converged"] = w != "not_converged"
        stored.append(q)
    ok = ~cens
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
        coverage_loss=coverage_loss_thresholds(la[ok], cov[ok]) if ok.any() else {},
        bootstrap_samples=[] if boot is None else boot.samples.tolist(),
        n_saturated=int(sum(w in ("saturated", "near_ceiling") for w in why)),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        memlaw_version=__version__,
        delta_definition=delta_definition,
        n_not_converged=int(sum(w == "not_converged" for w in why)),
        sweep=dict(sweep or {}),
        law_form=law_form,
    )


# ---------------------------------------------------------------------------------------------
# saving and loading


def named_rank_record(validation: dict, coverage: float) -> tuple[str, dict] | None:
    """The card's named-rank record for the recorded target nearest ``coverage``: (target, entry)."""
    targets = (validation.get("named_rank") or {}).get("targets") or {}
    if not targets:
        return None
    t = min(targets, key=lambda k: abs(float(k) - coverage))
    return t, targets[t]


def named_rank_phrase(validation: dict, coverage: float) -> str | None:
    """That record in words, or None when the card has none."""
    found = named_rank_record(validation, coverage)
    if found is None:
        return None
    t, e = found
    seeds = validation["named_rank"].get("seeds")
    text = (f"the rank named for coverage {t} reached it on every seed{f' ({seeds})' if seeds else ''} "
            f"on {int(e['reached'])} of {int(e['cases'])} held-out corpora")
    text += f" (missed: {', '.join(e['missed'])})" if e.get("missed") else ""
    if validation["named_rank"].get("headroom_chosen_here"):
        text += "; the card's target headroom was chosen on the same corpora"
    return text


def _named_rank_ok(v) -> bool:
    if not (isinstance(v, dict) and isinstance(v.get("predictor"), str) and isinstance(v.get("targets"), dict)
            and v["targets"]):
        return False
    for t, e in v["targets"].items():
        try:
            target = float(t)
        except ValueError:
            return False
        if not (0 < target <= 1 and isinstance(e, dict) and isinstance(e.get("reached"), int)
                and isinstance(e.get("cases"), int) and 0 <= e["reached"] <= e["cases"]
                and isinstance(e.get("missed", []), list) and all(isinstance(m, str) for m in e.get("missed", []))):
            return False
    return True


def _headroom_ok(v: dict) -> bool:
    if not (isinstance(v.get("predictor"), str) and isinstance(v.get("targets"), dict) and v["targets"]):
        return False
    for t, h in v["targets"].items():
        try:
            target = float(t)
        except ValueError:
            return False
        if not (0 < target < 1 and (h := _num(h)) is not None and 1 <= h <= 10):
            return False
    return True


def validation_phrase(v: dict) -> str:
    """One predictor's held-out record in words."""
    return (f"off by {v['mean_abs_error']:.3f} on average and by up to {v['max_abs_error']:.3f} over "
            f"{int(v['cells'])} (corpus, rank) cells of {int(v['corpora'])} corpora")


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

    if d.get("delta_definition", "raw") not in DELTA_DEFINITIONS:
        raise _bad(path, f"unknown delta_definition {d.get('delta_definition')!r}")
    if d.get("law_form", "pml") not in FORMS:
        raise _bad(path, f"unknown law_form {d.get('law_form')!r}")
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
    validation = d.get("validation", {})
    if not isinstance(validation, dict) or not all(
            isinstance(v, dict) and all(_num(v.get(k)) is not None for k in VALIDATION_FIELDS)
            for k_, v in validation.items() if k_ not in VALIDATION_META):
        raise _bad(path, "'validation' must map each predictor to finite " + ", ".join(VALIDATION_FIELDS))
    if "named_rank" in validation and not _named_rank_ok(validation["named_rank"]):
        raise _bad(path, "'validation.named_rank' must give a predictor and, per target coverage, "
                         "integers 0 ≤ reached ≤ cases")
    key_factor = d.get("key_factor", {})
    if not isinstance(key_factor, dict) or ("digits_only_keys" in key_factor and not (
            (f := _num(key_factor["digits_only_keys"])) is not None and 0 < f <= 2)):
        raise _bad(path, "'key_factor.digits_only_keys' must be a number in (0, 2]")
    headroom = d.get("target_headroom", {})
    if not isinstance(headroom, dict) or (headroom and not _headroom_ok(headroom)):
        raise _bad(path, "'target_headroom' must give a predictor and, per target coverage in (0, 1), "
                         "a factor in [1, 10]")
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
        ("law", f"ΔL = {c['C']:.4g} · r^{c['alpha']:.4g} / ℓ  (capacity: {c['C']:.4g} · r^{c['alpha']:.4g} nats "
                "stored at rank r)" if card.law_form == "capacity" else
                f"ΔL = {c['C']:.4g} · r^{c['alpha']:.4g} · ℓ^(−{c['beta']:.4g}) + {c['b']:.4g}"),
    ]
    for k in NAMES:
        iv = card.intervals.get(k)
        ci = f"  [{iv[0]:.4g}, {iv[1]:.4g}] ({card.interval_level:.0%})" if iv else ""
        rows.append((k, f"{c[k]:.4g}{ci}"))
    rows += [
        ("R²", f"{card.r2:.4f} (over converged, unsaturated points)"),
        ("ΔL", "L_before − L_after" if card.delta_definition == "raw" else "min(L_before, ln N) − L_after"),
        ("points", f"{len(card.points)} ({card.n_saturated} saturated"
                   + (" or near the data's ceiling" if card.law_form == "capacity" else "")
                   + f", {card.n_not_converged} not converged: fitted as lower bounds)"),
        ("rank domain", f"{_fmt(card.domain['rank'][0])} – {_fmt(card.domain['rank'][1])}"),
        ("length domain", f"{_fmt(card.domain['length'][0])} – {_fmt(card.domain['length'][1])}"),
    ]
    if card.sweep.get("wall_seconds"):
        rows.append(("sweep wall time", f"{card.sweep['wall_seconds'] / 60:.1f} min"))
    for name, v in card.validation.items():
        if name not in VALIDATION_META:
            rows.append((f"held-out coverage ({name})", validation_phrase(v)))
    for t in (card.validation.get("named_rank") or {}).get("targets", {}):
        rows.append((f"held-out named rank ({card.validation['named_rank']['predictor']})",
                     named_rank_phrase(card.validation, float(t))))
    if (f := _num(card.key_factor.get("digits_only_keys"))) is not None:
        rows.append(("key factor (digit-only keys)", f"{f:.3f}: records told apart only by their key's digits "
                                                      "get this share of the law's nats"))
    if card.target_headroom.get("targets"):
        hr = card.target_headroom
        rows.append((f"target headroom ({hr['predictor']})",
                     ", ".join(f"{t}: ×{float(h):.2f}"
                               for t, h in sorted(hr["targets"].items(), key=lambda x: float(x[0])))
                     + " the nats the predictor prices the target at"))
    rows.append(("created", f"{card.created or '—'} (memlaw {card.memlaw_version or '?'})"))
    return rows
