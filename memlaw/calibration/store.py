"""The sweep folder on disk: points.jsonl (append-only, torn last line dropped), sweep.json and
the compatibility check that keeps one law's points together."""

from __future__ import annotations

import json
from pathlib import Path


from memlaw.card import read_points
from memlaw.errors import UserError

POINTS = "points.jsonl"
SWEEP = "sweep.json"
LAW = "law.json"
PLOT = "law.png"


#: sweep.json keys that must match for two sets of points to belong to one law
COMPAT_KEYS = ("base_model", "template", "recipe", "data")


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
#: — unless the recipe trains until converged, where the test also decides when training stops
FIT_ONLY_RECIPE_KEYS = ("converge_rel_tol", "converge_abs_tol", "converge_cov_tol", "stop_rule")


def check_compatible(old: dict, new: dict, where: str, fix: str) -> None:
    for key in COMPAT_KEYS:
        a, b = _canon(old.get(key)), _canon(new.get(key))
        if key == "recipe" and isinstance(a, dict) and isinstance(b, dict):
            judged_only = [k for k in FIT_ONLY_RECIPE_KEYS if k == "stop_rule" or not
                           (a.get("until_converged") or b.get("until_converged"))]
            a = {k: v for k, v in a.items() if k not in judged_only}
            b = {k: v for k, v in b.items() if k not in judged_only}
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



def _torn(path: Path) -> bool:
    """Does ``path`` end in a partial line that is not a whole point (read_points skips it)?"""
    try:
        tail = path.read_bytes().rsplit(b"\n", 1)[-1]
        return bool(tail.strip()) and not isinstance(json.loads(tail), dict)
    except ValueError:
        return True
    except OSError:  # no points file
        return False
