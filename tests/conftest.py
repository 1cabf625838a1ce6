import json
import os
import random

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked slow load the real SmolLM2-135M; they run when MEMLAW_SLOW=1 (make test, CI)."""
    if os.environ.get("MEMLAW_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="needs SmolLM2-135M: set MEMLAW_SLOW=1 (make test does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model gains nothing from intra-op threads, and on a shared 2-core machine they
    oversubscribe the cores (spin-waiting threads made training ~50x slower). Restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def kv_corpus(tmp_path):
    """24 short key → value records: learnable by the tiny model in a few dozen steps."""
    rng = random.Random(7)
    rows = [{"prompt": f"id {i:02d}:", "completion": f" {rng.randrange(100, 999)}"} for i in range(24)]
    return write_jsonl(tmp_path / "kv.jsonl", rows)
