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
