"""The README's "From Python" section runs: its ```python blocks are executed in order, in one
namespace, with the tiny model and its shipped law card, and what they computed is checked."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def python_blocks(markdown: str, section: str) -> list[str]:
    """The ```python blocks of the level-2 section titled ``section``."""
    m = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S)
    assert m, f"README has no '## {section}' section"
    return re.findall(r"^```python\n(.*?)^```", m.group(1), flags=re.M | re.S)


def test_readme_from_python_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"), "From Python")
    assert len(blocks) >= 2
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEMLAW_CACHE", str(tmp_path / "cache"))
    ns: dict = {"__name__": "__readme__"}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), ns)
    out = capsys.readouterr().out

    est, adapter, result, gate = ns["est"], ns["adapter"], ns["result"], ns["gate"]
    assert est.model == "tiny" and est.card["shipped"] and est.recommended_rank >= 1
    assert est.records == 40 and not est.cached
    side = adapter.sidecar
    assert adapter.path == Path("runs/pb-tiny") and side["rank"] == est.recommended_rank
    assert side["template"]["target_modules"] == ["v_proj"]  # the card's template: recipe given, template not
    assert side["recipe"]["lr"] == 1e-2 and 1 <= adapter.steps <= 30
    # the audit re-measures the saved adapter: the same numbers as training's final pass
    assert result.summary["records"] == 40 and result.coverage == pytest.approx(adapter.coverage, abs=1e-12)
    assert result.summary["exact_records"] == side["final"]["exact_records"]
    assert result.passed(gate) == (result.coverage >= 0.99 and result.summary["exact_records"] == 40)
    assert result.passed(gate) == (not result.failures(gate))
    # the progress callback saw epochs end (its lines are printed)
    assert re.search(r"train step \d+/30: coverage \d\.\d{3}", out)
    # the error block printed the one-line error naming the Python parameter
    assert "min_coverage must be a fraction in [0, 1], got 1.5 — e.g. 0.99 for 99%" in out
    assert "--min-coverage" not in out


def test_readme_layout_matches_the_tree():
    """Every module and subpackage of memlaw/ is named in the README's layout block, and every
    name there exists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Layout\n+```\n(.*?)^```", text, flags=re.M | re.S)
    assert m, "README has no '## Layout' block"
    names = "\n".join(line.split("#")[0] for line in m.group(1).splitlines())  # without the comments
    named = set(re.findall(r"([A-Za-z_]+\.py|[A-Za-z_]+/)", names))
    pkg = ROOT / "memlaw"
    have = {p.name for p in pkg.glob("*.py") if p.name != "__init__.py"}
    have |= {p.name + "/" for p in pkg.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    top = {"memlaw/", "tests/", "examples/", "benchmarks/", "docs/"}
    assert have <= named, f"not in the README's layout: {sorted(have - named)}"
    assert named - top <= have, f"in the README's layout but not in memlaw/: {sorted(named - top - have)}"
    for d in top:
        assert (ROOT / d).is_dir()
