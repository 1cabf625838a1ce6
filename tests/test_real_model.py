"""The auditor's claims on the real SmolLM2-135M (slow: MEMLAW_SLOW=1, which `make test` sets).

Two real adapters, each stopped while some records are exact and some are not: one trained by
memft (all linear layers), one by a plain PEFT loop on attention modules only (another trainer's
adapter). The audit's `exact` verdict must equal greedy generation on every record, and a repair
must lift the failing adapter without touching its files.
"""

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner

from conftest import REAL_N as N
from memlaw.cli.memaudit import main as memaudit
from memlaw.corpus import encode_records, read_corpus
from memlaw.models import load_base

pytestmark = pytest.mark.slow


def _greedy(model, e):
    ids = torch.tensor([e.key_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=len(e.target_ids), min_new_tokens=len(e.target_ids), pad_token_id=2)
    return out[0, len(e.key_ids):].tolist() == list(e.target_ids)


@pytest.mark.parametrize("which", ["real_memft_adapter", "real_plain_adapter"])
def test_exact_equals_greedy_generation(which, real_corpus, request, tmp_path):
    from memlaw.models import attach_adapter

    corpus = real_corpus
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


def test_repair_lifts_the_plain_adapter(real_plain_adapter, real_corpus, tmp_path):
    plain_adapter, corpus = real_plain_adapter, real_corpus
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


@pytest.mark.parametrize("which", ["real_memft_adapter", "real_plain_adapter"])
def test_precision_bf16_gives_float32_verdicts(which, real_corpus, request, tmp_path):
    """memaudit --precision bf16 (a bfloat16 pass, float32 re-check near verdict boundaries) gives
    every per-token verdict of the float32 audit: locked, greedy-correct, the argmax token."""
    adapter = request.getfixturevalue(which)
    got = {}
    for precision in ("float32", "bf16"):
        report = tmp_path / f"{precision}.json"
        r = CliRunner().invoke(memaudit, [str(adapter), "--corpus", str(real_corpus), "--json", str(report), "--quiet",
                                          "--no-effect-check", "--precision", precision, "--backend", "transformers"])
        assert r.exit_code == 0, r.output
        got[precision] = json.loads(report.read_text())
    assert "bf16" in got["bf16"]["backend_note"]

    def verdicts(audit):
        return [(rec["exact"], rec["locked"], [(t["p"] > 0.5, t["argmax"]) for t in rec["tokens"]])
                for rec in audit["records"]]

    assert verdicts(got["bf16"]) == verdicts(got["float32"])
