"""The auditor's claims on the real SmolLM2-135M (slow: MEMLAW_SLOW=1, which `make test` sets).

Two real adapters, each stopped while some records are exact and some are not: one trained by
memft (all linear layers), one by a plain PEFT loop on attention modules only (another trainer's
adapter). The audit's `exact` verdict must equal greedy generation on every record, and a repair
must lift the failing adapter without touching its files.
"""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from helpers import masked_label_batch
from memlaw.cli.memaudit import main as memaudit
from memlaw.corpus import encode_records, read_corpus
from memlaw.models import load_base
from memlaw.scoring import score, summarize

pytestmark = pytest.mark.slow
N = 16


def _mixed(s):
    return 0.2 * s["records"] <= s["exact_records"] <= 0.8 * s["records"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rows = Path("examples/phonebook_small.jsonl").read_text().splitlines()[:N]
    p = tmp_path_factory.mktemp("real") / "pb16.jsonl"
    p.write_text("\n".join(rows) + "\n")
    return p


@pytest.fixture(scope="module")
def memft_adapter(corpus, tmp_path_factory):
    from memlaw.memft import CorpusSpec, Recipe, train_adapter

    base = load_base("smollm2-135m")
    enc = encode_records(base.tokenizer, read_corpus(corpus))
    out = tmp_path_factory.mktemp("real") / "memft-r2"
    side = train_adapter(CorpusSpec(str(corpus)), "smollm2-135m", 2, out, base=base, progress=False,
                         recipe=Recipe(method="sft", lr=3e-3, batch_size=N, max_steps=80, patience=80),
                         on_epoch=lambda e: _mixed(summarize(score(base.model, enc, pad_id=2))))
    assert side["train"]["stop_reason"] == "callback", side["train"]
    return out


@pytest.fixture(scope="module")
def plain_adapter(corpus, tmp_path_factory):
    """Plain PEFT on q_proj/v_proj, HF-style masked labels, saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model

    base = load_base("smollm2-135m")
    enc = encode_records(base.tokenizer, read_corpus(corpus))
    torch.manual_seed(0)
    model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    ids, mask, labels = masked_label_batch(enc, pad_id=2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(120):
        model.train()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        if _mixed(summarize(score(model, enc, pad_id=2))):
            break
    else:
        pytest.fail("plain PEFT never reached a mix of exact and failing records")
    out = tmp_path_factory.mktemp("real") / "plain-qv"
    model.peft_config["default"].base_model_name_or_path = None
    model.save_pretrained(str(out))
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "smollm2-135m"
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


def _greedy(model, e):
    ids = torch.tensor([e.key_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=len(e.target_ids), min_new_tokens=len(e.target_ids), pad_token_id=2)
    return out[0, len(e.key_ids):].tolist() == list(e.target_ids)


@pytest.mark.parametrize("which", ["memft_adapter", "plain_adapter"])
def test_exact_equals_greedy_generation(which, corpus, request, tmp_path):
    from memlaw.models import attach_adapter

    adapter = request.getfixturevalue(which)
    report = tmp_path / "audit.json"
    r = CliRunner().invoke(memaudit, [str(adapter), "--corpus", str(corpus), "--json", str(report), "--quiet"])
    assert r.exit_code == 0, r.output
    audit = json.loads(report.read_text())
    verdicts = [rec["exact"] for rec in audit["records"]]
    assert any(verdicts) and not all(verdicts)
    base = load_base("smollm2-135m")
    model = attach_adapter(base, adapter)
    enc = encode_records(base.tokenizer, read_corpus(corpus))
    assert verdicts == [_greedy(model, e) for e in enc]


def test_repair_lifts_the_plain_adapter(plain_adapter, corpus, tmp_path):
    def hashes(d):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}

    before = hashes(plain_adapter)
    out = tmp_path / "fixed"
    r = CliRunner().invoke(memaudit, [str(plain_adapter), "--corpus", str(corpus), "--min-exact", "1.0",
                                      "--repair-out", str(out), "--method", "ot", "--repair-steps", "150",
                                      "--lr", "1e-2", "--json", str(tmp_path / "after.json"), "--quiet"])
    after = json.loads((tmp_path / "after.json").read_text())
    s, b = after["summary"], after["repair"]["before"]
    print(f"repair: coverage {b['coverage']:.3f} -> {s['coverage']:.3f}, exact {b['exact_records']} -> "
          f"{s['exact_records']}/{N}, exit {r.exit_code}")
    assert r.exit_code == (0 if s["exact_records"] == N else 1), r.output  # the gate decides the exit code
    assert s["coverage"] > b["coverage"] and s["exact_records"] > b["exact_records"]
    assert hashes(plain_adapter) == before
