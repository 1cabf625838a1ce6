"""Scoring backends behind one interface (memlaw.backends): get_backend is the one place a backend
name is interpreted, vLLM is imported only to score, and the transformers backend gives
memlaw.scoring's numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from memlaw.backends import (CHOICES, NAMES, ScoringBackend, TransformersBackend, VLLMBackend, get_backend,
                             takes_vllm_options)
from memlaw.errors import UserError

PKG = Path(__file__).resolve().parents[1] / "memlaw"


def test_no_backend_name_comparisons_outside_the_factory():
    """Callers ask the backend object; a name compared elsewhere is a branch that was missed."""
    pattern = re.compile(r"""[!=]=\s*["']vllm["']|["']vllm["']\s*[!=]=""")
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel == Path("backends.py") or rel.parts[0] == "cli":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"memlaw/{rel}:{n}: {line.strip()}")
    assert not found, "backend names compared outside memlaw/backends.py:\n" + "\n".join(found)


def test_get_backend_names_and_errors():
    assert CHOICES == ("auto", *NAMES)
    assert type(get_backend("transformers")) is TransformersBackend and get_backend("transformers").note is None
    v = get_backend("vllm", vllm_mode="merged", tensor_parallel_size=2)
    assert type(v) is VLLMBackend and (v.vllm_mode, v.tensor_parallel_size) == ("merged", 2)
    assert v.scores_from_files and v.supports_vllm_mode and v.name == "vllm"
    assert get_backend(v) is v  # an object passes through
    with pytest.raises(UserError) as e:
        get_backend("onnx")
    assert str(e.value) == "unknown scoring backend 'onnx' — use one of: auto, transformers, vllm"
    with pytest.raises(UserError) as e:
        get_backend("auto", allow_auto=False)
    assert str(e.value) == "unknown scoring backend 'auto' — use one of: transformers, vllm"
    assert takes_vllm_options("vllm") and not takes_vllm_options("auto") and not takes_vllm_options("transformers")
    assert isinstance(get_backend("auto"), ScoringBackend)


def test_auto_without_a_gpu_is_transformers_and_says_why():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: auto may choose vLLM")
    b = get_backend("auto")
    assert type(b) is TransformersBackend and b.note.startswith("--backend auto chose transformers")


def test_vllm_backend_does_not_import_vllm_until_it_scores():
    code = ("import sys\nfrom memlaw.backends import get_backend\n"
            "b = get_backend('vllm', vllm_mode='lora')\nassert 'vllm' not in sys.modules, 'vllm imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_transformers_backend_scores_like_scoring(kv_corpus, one_thread):
    import numpy as np

    from memlaw.corpus import encode_records, read_corpus
    from memlaw.models import load_base
    from memlaw.scoring import score

    base = load_base("tiny")
    enc = encode_records(base.tokenizer, read_corpus(kv_corpus))
    got = get_backend("transformers").score_base(base.model, enc, pad_id=0)
    want = score(base.model, enc, pad_id=0)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert np.array_equal(a.logprob, b.logprob) and np.array_equal(a.argmax, b.argmax)
