"""MemFT objectives, the training loop, and `memft train`."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from memlaw.cli.memft import main as memft_cli
from memlaw.corpus import encode_records, read_corpus
from memlaw.memft import (AnchorTracker, CorpusSpec, LoraTemplate, Recipe, token_weights,
                          train_adapter, weights_ot, weights_sw, window)
from memlaw.models import load_base
from memlaw.scoring import make_batch

LN2 = math.log(2)


def test_ot_weights_zero_on_locked_tokens():
    loss = torch.tensor([0.1, LN2 - 1e-4, LN2 + 1e-4, 3.0])
    assert weights_ot(loss).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_key_tokens_never_enter_the_loss(kv_corpus):
    """The flat token arrays the loss is computed over hold exactly the target tokens."""
    base = load_base("tiny")
    enc = encode_records(base.tokenizer, read_corpus(kv_corpus))[:4]
    batch = make_batch(enc, pad_id=0)
    assert batch.targets.tolist() == [t for e in enc for t in e.target_ids]
    for i, e in enumerate(enc):
        a, b = batch.offsets[i], batch.offsets[i + 1]
        k = len(e.key_ids)
        # the output at position p predicts token p+1: the first target token is predicted at k-1
        assert batch.cols[a:b].tolist() == list(range(k - 1, k - 1 + len(e.target_ids)))
    # OT weights over a batch: one weight per target token, none for keys, zero where locked
    loss = torch.tensor([0.1 if j % 2 else 2.0 for j in range(len(batch.targets))])
    w = token_weights(Recipe(method="ot"), loss, batch.targets.clone(), batch, AnchorTracker(50))
    assert w.shape == batch.targets.shape
    assert w.tolist() == [0.0 if j % 2 else 1.0 for j in range(len(batch.targets))]


def test_sw_window_rule():
    pos = torch.arange(80, dtype=torch.float32)
    w = window(pos, anchor=10, width=50, tau_w=20.0, floor=0.01)
    assert w[:10].tolist() == pytest.approx([0.01] * 10)  # before the anchor: floor
    assert float(w[10]) == pytest.approx(1.0)
    assert float(w[30]) == pytest.approx(math.exp(-1.0))  # decays with tau_w = 20
    assert float(w[59]) == pytest.approx(math.exp(-49 / 20))
    assert w[60:].tolist() == pytest.approx([0.01] * 20)  # outside the 50-token window
    assert window(pos, None, 50, 20.0, 0.01).tolist() == pytest.approx([0.01] * 80)
    # the sigmoid gate: a locked token far below ln 2 gets ~no weight even in the window
    loss = torch.full((80,), 0.05)
    loss[12] = 3.0
    sw = weights_sw(loss, pos, 10, 50)
    assert float(sw[12]) == pytest.approx(math.exp(-2 / 20) / (1 + math.exp(-10 * (3.0 - LN2))), rel=1e-5)
    assert float(sw[11]) < 0.01


def test_sw_window_grows_while_stuck_and_snaps_back():
    t = AnchorTracker(base=50)
    widths = [t.width(0, 7) for _ in range(10)]
    assert widths == [50, 50, 75, 100, 125, 150, 175, 200, 200, 200]  # +½ base from the 3rd visit, ≤ 4×
    assert t.width(0, 8) == 50  # the anchor moved: snap back
    assert t.width(1, None) == 50


def test_train_adapter_writes_plain_peft_adapter(kv_corpus, tmp_path):
    out = tmp_path / "adapter"
    side = train_adapter(CorpusSpec(str(kv_corpus)), "tiny", 4, out,
                         recipe=Recipe(method="sft", lr=1e-2, max_steps=30, batch_size=8), progress=False)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["base_model_name_or_path"] == "tiny"
    meta = json.loads((out / "memlaw.json").read_text())
    assert meta["corpus"]["sha256"] and meta["base_model"]["name"] == "tiny"
    assert 0.0 <= meta["final"]["coverage"] <= 1.0 and meta["train"]["steps"] == side["train"]["steps"]
    # plain PEFT loads it and gives the same numbers memft recorded
    from peft import PeftModel

    from memlaw.scoring import score, summarize

    base = load_base("tiny")
    model = PeftModel.from_pretrained(base.model, str(out))
    enc = encode_records(base.tokenizer, read_corpus(kv_corpus))
    assert summarize(score(model, enc))["coverage"] == pytest.approx(meta["final"]["coverage"])
    assert meta["final"]["mean_loss"] < 5.0  # it learned something (random init is ~5.6 nats)


def test_training_is_deterministic(kv_corpus, tmp_path):
    recipe = Recipe(method="ot", lr=1e-2, max_steps=12, batch_size=8, seed=3)
    for name in ("a", "b"):
        train_adapter(CorpusSpec(str(kv_corpus)), "tiny", 2, tmp_path / name, recipe=recipe, progress=False)
    ta = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    tb = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    ma = json.loads((tmp_path / "a" / "memlaw.json").read_text())["final"]
    mb = json.loads((tmp_path / "b" / "memlaw.json").read_text())["final"]
    assert ma == mb


def test_ot_reaches_full_coverage_on_tiny(kv_corpus, tmp_path):
    """The stop rule: training ends when every target token is locked, confirmed by scoring."""
    side = train_adapter(CorpusSpec(str(kv_corpus)), "tiny", 8, tmp_path / "full",
                         recipe=Recipe(method="sft", lr=1e-2, max_steps=400, batch_size=24), progress=False)
    assert side["train"]["stop_reason"] == "all_locked"
    assert side["final"]["coverage"] == 1.0 and side["final"]["locked_records"] == 24


def test_memft_cli(kv_corpus, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(memft_cli, ["train", str(kv_corpus), "--model", "tiny", "--rank", "2", "--max-steps", "5",
                                  "--lr", "1e-2", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "coverage" in r.output and (out / "memlaw.json").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = runner.invoke(memft_cli, ["train", str(kv_corpus), "--model", "tiny", "--out", str(out), "--quiet"])
    assert r.exit_code == 2 and "already exists" in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    r = runner.invoke(memft_cli, ["train", str(bad), "--model", "tiny", "--out", str(tmp_path / "x"), "--quiet"])
    assert r.exit_code == 2 and "bad.jsonl:2" in r.output and "Traceback" not in r.output
    r = runner.invoke(memft_cli, ["train", str(kv_corpus), "--model", "tiny", "--rank", "0",
                                  "--out", str(tmp_path / "y"), "--quiet"])
    assert r.exit_code == 2 and "rank" in r.output


def test_frozen_prefix_cache_is_exact(kv_corpus):
    """With LoRA only on layer 1, caching layer 0's output gives the same log-probs and the same
    trained adapter as the full forward pass."""
    from memlaw.memft import FrozenPrefix, make_lora_model, train
    from memlaw.scoring import target_log_softmax

    enc = encode_records(load_base("tiny").tokenizer, read_corpus(kv_corpus))
    states = []
    for cache in (True, False):
        model = make_lora_model(load_base("tiny").model, LoraTemplate(layers=(1,)), 4, seed=0)
        assert FrozenPrefix.usable(model) == 1
        if cache:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
                batch = make_batch(enc[:8], 0)
                via_cache = FrozenPrefix(model, 1, 0).log_softmax(batch, enc[:8])
                assert torch.allclose(via_cache, target_log_softmax(model, batch), atol=1e-5)
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.zero_()
        train(model, enc, Recipe(method="sft", lr=1e-2, max_steps=8, batch_size=8), progress=False,
              cache_prefix=cache)
        states.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    for n in states[0]:
        assert torch.allclose(states[0][n], states[1][n], atol=1e-5), n
