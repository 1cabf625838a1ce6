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


# --------------------------------------------------------------------------------------------
# real SmolLM2-135M adapters (slow tests only; shared by test_real_model.py and test_vllm.py)

REAL_N = 16


def _mixed(s):
    """Some records exact and some not: what makes an audit comparison meaningful."""
    return 0.2 * s["records"] <= s["exact_records"] <= 0.8 * s["records"]


@pytest.fixture(scope="session")
def real_corpus(tmp_path_factory):
    from pathlib import Path

    rows = Path("examples/phonebook_small.jsonl").read_text().splitlines()[:REAL_N]
    p = tmp_path_factory.mktemp("real") / "pb16.jsonl"
    p.write_text("\n".join(rows) + "\n")
    return p


@pytest.fixture(scope="session")
def real_memft_adapter(real_corpus, tmp_path_factory):
    from memlaw.corpus import encode_records, read_corpus
    from memlaw.memft import CorpusSpec, Recipe, train_adapter
    from memlaw.models import load_base
    from memlaw.scoring import score, summarize

    base = load_base("smollm2-135m")
    enc = encode_records(base.tokenizer, read_corpus(real_corpus))
    out = tmp_path_factory.mktemp("real") / "memft-r2"
    side = train_adapter(CorpusSpec(str(real_corpus)), "smollm2-135m", 2, out, base=base, progress=False,
                         recipe=Recipe(method="sft", lr=3e-3, batch_size=REAL_N, max_steps=80, patience=80),
                         on_epoch=lambda e: _mixed(summarize(score(base.model, enc, pad_id=2))))
    assert side["train"]["stop_reason"] == "callback", side["train"]
    return out


def _plain_adapter(real_corpus, tmp_path_factory, folder, **peft_options):
    from helpers import train_plain_peft
    from memlaw.corpus import encode_records, read_corpus
    from memlaw.models import load_base

    base = load_base("smollm2-135m")
    enc = encode_records(base.tokenizer, read_corpus(real_corpus))
    model = train_plain_peft(base, enc, rank=4, alpha=16, lr=5e-3, max_steps=120, pad_id=2, stop=_mixed,
                             **peft_options)
    if model is None:
        pytest.fail(f"plain PEFT ({peft_options or 'q/v'}) never reached a mix of exact and failing records")
    out = tmp_path_factory.mktemp("real") / folder
    model.peft_config["default"].base_model_name_or_path = None
    model.save_pretrained(str(out))
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "smollm2-135m"
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="session")
def real_plain_adapter(real_corpus, tmp_path_factory):
    """Plain PEFT on q_proj/v_proj, HF-style masked labels, saved with save_pretrained."""
    return _plain_adapter(real_corpus, tmp_path_factory, "plain-qv")


@pytest.fixture(scope="session")
def real_head_adapter(real_corpus, tmp_path_factory):
    """Plain PEFT on q_proj/v_proj and lm_head (tied to the embeddings in SmolLM2): vLLM #51594's case."""
    return _plain_adapter(real_corpus, tmp_path_factory, "plain-qv-head", target_modules=("q_proj", "v_proj", "lm_head"))


@pytest.fixture(scope="session")
def real_saved_head_adapter(real_corpus, tmp_path_factory):
    """Plain PEFT on q_proj/v_proj with a full trained copy of lm_head (modules_to_save)."""
    return _plain_adapter(real_corpus, tmp_path_factory, "plain-qv-mts", modules_to_save=["lm_head"])
