"""examples/ci/gate-adapter.yml, run: every `run:` step of the workflow in order, as GitHub Actions
would run it (bash -e, the workflow's env, `if: always()` steps after a failure), in a fresh
virtual environment where memlaw is installed by the workflow's own install step, from this
checkout (MEMLAW_SOURCE; memlaw is not on PyPI). The `uses:` steps are stood in for: checkout = a
workspace holding a real adapter and its corpus, setup-python = the fresh venv on PATH.

The venv sees the dependencies already installed for the tests (a .pth file), so the install
step downloads nothing but the build backend; without a reachable package index it skips."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "ci" / "gate-adapter.yml"


def _fresh_venv(d: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(d)
    site = next((d / "lib").glob("python*/site-packages"))
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co. already here
    return d / "bin"


def _workspace(root: Path, passing: bool) -> Path:
    """What actions/checkout would give: the user's repo with an adapter and its corpus."""
    from memlaw.memft import CorpusSpec, Recipe, train_adapter

    ws = root / ("ws-pass" if passing else "ws-fail")
    (ws / "data").mkdir(parents=True)
    corpus = ws / "data" / "phonebook.jsonl"
    corpus.write_text("".join(json.dumps({"prompt": f"tel {n}:", "completion": f" {v}"}) + "\n"
                              for n, v in [("ann", 12), ("bob", 34), ("cy", 56)]))
    side = train_adapter(CorpusSpec(str(corpus)), "tiny", 8, ws / "adapters" / "phonebook-r8",
                         recipe=Recipe(method="sft", lr=1e-2, batch_size=3, max_steps=400 if passing else 1,
                                       patience=400), progress=False)
    if passing:
        assert side["train"]["stop_reason"] == "all_locked" and side["final"]["mean_loss"] < 0.1, side["final"]
    return ws


def _run_workflow(ws: Path, bin_dir: Path) -> list[tuple[str, int, str]]:
    wf = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", GITHUB_WORKSPACE=str(ws),
               GITHUB_STEP_SUMMARY=str(ws / "summary.md"), OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)  # memaudit must come from the install step, not from this checkout
    for k, v in wf["env"].items():
        env[k] = re.sub(r"\$\{\{\s*github\.workspace\s*\}\}", str(ws), str(v))
    env["MEMLAW_SOURCE"] = str(ROOT)  # this checkout stands in for the git URL
    results, failed = [], False
    for step in wf["jobs"]["audit"]["steps"]:
        if "run" not in step or (failed and step.get("if") != "always()"):
            continue
        r = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=ws, env=env, capture_output=True, text=True,
                           timeout=600)
        results.append((step["name"], r.returncode, r.stdout + r.stderr))
        failed = failed or r.returncode != 0
    return results


def test_ci_example_steps_run(tmp_path):
    bin_dir = _fresh_venv(tmp_path / "venv")
    for passing in (True, False):
        ws = _workspace(tmp_path, passing)
        steps = _run_workflow(ws, bin_dir)
        names = [s[0] for s in steps]
        install = steps[0]
        if install[1] != 0 and re.search(r"Could not find a version|Failed to establish|No matching distribution|"
                                          r"Temporary failure in name resolution", install[2]):
            pytest.skip(f"the package index cannot be reached: {install[2].strip().splitlines()[-1]}")
        assert install[0] == "Install memlaw" and install[1] == 0, install[2][-3000:]
        assert (bin_dir / "memaudit").is_file()  # installed by the step, from MEMLAW_SOURCE
        gate = dict((s[0], s) for s in steps)["Audit and gate"]
        assert gate[1] == (0 if passing else 1), gate[2][-3000:]  # the gate decides the job
        assert names[-1] == "Job summary"  # runs after a failed gate too (if: always())
        assert (ws / "summary.md").read_text().startswith("## memaudit")
        failures = int(ET.parse(ws / "reports" / "audit.xml").getroot().get("failures"))
        assert (failures > 0) == (not passing)  # JUnit agrees with the step's exit code
        assert {p.name for p in (ws / "reports").iterdir()} == {"audit.json", "audit.md", "audit.html", "audit.xml"}
    shutil.rmtree(tmp_path / "venv", ignore_errors=True)


def test_ci_example_installs_from_source_not_pypi():
    """memlaw is not on PyPI: a bare `pip install memlaw` would install nothing (or someone else's)."""
    wf = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    scripts = "\n".join(s.get("run", "") for s in wf["jobs"]["audit"]["steps"])
    assert not re.search(r"pip install (-U )?memlaw\b", scripts)
    assert '"$MEMLAW_SOURCE"' in scripts and "git+" in wf["env"]["MEMLAW_SOURCE"]
    assert "memaudit" in scripts and "--junit" in scripts and "--min-coverage" in scripts
