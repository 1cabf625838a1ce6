"""Scoring: numbers per target token, batch independence, and exact == greedy generation."""

import numpy as np
import pytest
import torch

from memlaw.corpus import encode_records, read_corpus
from memlaw.memft import LoraTemplate, Recipe, make_lora_model, train
from memlaw.models import load_base
from memlaw.scoring import RecordScores, length_batches, score, summarize


def _encoded(base, path):
    return encode_records(base.tokenizer, read_corpus(path))


def test_matches_full_forward_logits(kv_corpus):
    """The head-only-at-target-positions shortcut gives the same log-probs as a plain forward."""
    base = load_base("tiny")
    enc = _encoded(base, kv_corpus)
    scores = score(base.model, enc, max_tokens=64)
    for e, s in zip(enc[:5], scores[:5]):
        with torch.no_grad():
            logits = base.model(torch.tensor([e.input_ids])).logits[0]
        lp = torch.log_softmax(logits.float(), -1)
        k, n = len(e.key_ids), len(e.target_ids)
        want = lp[k - 1: k + n - 1].gather(1, torch.tensor(e.target_ids)[:, None]).squeeze(1).numpy()
        np.testing.assert_allclose(s.logprob, want, atol=1e-5)
        assert (s.argmax == lp[k - 1: k + n - 1].argmax(-1).numpy()).all()
        assert ((s.margin > 0) == s.correct_mask).all()


def test_batch_independence(kv_corpus, tmp_path):
    """A record's numbers do not depend on what it was batched with (mixed lengths, padding)."""
    base = load_base("tiny")
    rows = kv_corpus.read_text().splitlines()
    rows += ['{"prompt": "a much longer key than the others, to force padding:", "completion": " 12345678"}',
             '{"text": "free text with no key at all"}'.replace('"text"', '"prompt": "", "completion"')]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(rows) + "\n")
    enc = _encoded(base, path)
    batched = score(base.model, enc, max_tokens=4096)
    assert len(length_batches(enc, max_tokens=4096)) < len(enc)  # really batched
    alone = [score(base.model, [e])[0] for e in enc]
    for a, b in zip(batched, alone):
        np.testing.assert_allclose(a.logprob, b.logprob, atol=1e-5)
        assert (a.argmax == b.argmax).all()


def test_record_definitions():
    s = RecordScores(0, np.array([5, 6, 7, 8, 9]),
                     np.log(np.array([0.9, 0.4, 0.3, 0.8, 0.45])),
                     np.array([5, 6, 1, 8, 2]), np.zeros(5))
    assert s.locked_mask.tolist() == [True, False, False, True, False]
    assert s.failing_spans == [(1, 3), (4, 5)]
    assert s.anchor == 2  # token 1 is greedy-correct though not locked
    assert not s.exact and not s.locked
    summ = summarize([s])
    assert summ["coverage"] == pytest.approx(2 / 5)
    assert summ["mean_loss"] == pytest.approx(float(-np.log([0.9, 0.4, 0.3, 0.8, 0.45]).mean()))


def greedy_exact(model, e) -> bool:
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([e.key_ids]), attention_mask=torch.ones(1, len(e.key_ids),
                             dtype=torch.long), do_sample=False, max_new_tokens=len(e.target_ids),
                             min_new_tokens=len(e.target_ids), pad_token_id=0)
    return out[0, len(e.key_ids):].tolist() == list(e.target_ids)


def test_exact_equals_greedy_generation_tiny(kv_corpus):
    base = load_base("tiny")
    enc = _encoded(base, kv_corpus)
    model = make_lora_model(base.model, LoraTemplate(), rank=8, seed=0)
    train(model, enc, Recipe(method="sft", lr=1e-2, max_steps=10, batch_size=8, seed=0), progress=False)
    scores = score(model, enc)
    verdicts = [s.exact for s in scores]
    assert any(verdicts) and not all(verdicts), "need a mix of exact and failing records"
    assert verdicts == [greedy_exact(model, e) for e in enc]


def _verdicts(scores):
    """Per token: locked, greedy-correct and which token is the argmax; per record: exact, locked."""
    return [(s.index, s.exact, s.locked, s.locked_mask.tolist(), s.correct_mask.tolist(), s.argmax.tolist())
            for s in scores]


@pytest.fixture(scope="module")
def near_half(tmp_path_factory, one_thread):
    """A tiny adapter trained on a corpus where six keys have two targets each, so that their first
    target tokens sit near p = 0.5 (the two targets share it), next to ordinary records."""
    import random

    from conftest import write_jsonl

    rng = random.Random(3)
    rows = [{"prompt": f"id {i:02d}:", "completion": f" {rng.randrange(100, 999)}"} for i in range(24)]
    rows += [{"prompt": f"id {i:02d}:", "completion": f" {rng.randrange(100, 999)}"} for i in range(6)]
    path = write_jsonl(tmp_path_factory.mktemp("near") / "near.jsonl", rows)
    base = load_base("tiny")
    enc = _encoded(base, path)
    model = make_lora_model(base.model, LoraTemplate(), rank=8, seed=0)
    train(model, enc, Recipe(method="sft", lr=1e-2, max_steps=80, batch_size=30, seed=0), progress=False)
    return model, enc


def test_bf16_with_recheck_gives_float32_verdicts(near_half):
    """--precision bf16: a bfloat16 pass, then float32 for every record with a token near a verdict
    boundary; every per-token verdict is float32's, and the re-checked records carry its numbers."""
    model, enc = near_half
    ref = score(model, enc, max_batch=8)
    near = {s.index for s in ref if (np.abs(s.p - 0.5) < 0.1).any()}
    assert near, "the corpus must put some tokens near p = 0.5"
    info = {}
    got = score(model, enc, max_batch=8, precision="bf16", info=info)
    assert info["precision"] == "bf16" and info["records"] == len(enc)
    assert _verdicts(got) == _verdicts(ref)
    assert 0 < info["rechecked_records"] < len(enc)
    for s, r in zip(got, ref):
        np.testing.assert_allclose(s.logprob, r.logprob, atol=0.3)  # bf16 numbers: within the documented bound
        if s.index in near:
            np.testing.assert_allclose(s.logprob, r.logprob, atol=1e-5)
            np.testing.assert_allclose(s.margin, r.margin, atol=1e-5)


def test_bf16_gives_up_when_most_records_need_the_recheck(near_half, monkeypatch):
    """Past BF16_GIVE_UP the rest of the corpus is scored in float32 directly: same verdicts."""
    import memlaw.scoring as scoring

    model, enc = near_half
    monkeypatch.setattr(scoring, "BF16_GIVE_UP", 0.0)
    info = {}
    got = score(model, enc, max_batch=8, precision="bf16", info=info)
    assert info["gave_up"]
    assert _verdicts(got) == _verdicts(score(model, enc, max_batch=8))


def test_precision_auto_and_bad_values():
    from memlaw.scoring import resolve_precision

    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("auto", "cpu") in ("float32", "bf16")
    assert resolve_precision("auto", "meta") == "float32"
    with pytest.raises(ValueError):
        resolve_precision("fp8", "cpu")


def test_trimmed_batches_give_the_same_numbers(kv_corpus):
    """The last token of a record is only an input nobody reads the output of: leaving it out
    changes nothing."""
    from memlaw.scoring import make_batch, target_log_softmax, token_stats

    base = load_base("tiny")
    enc = _encoded(base, kv_corpus)
    with torch.no_grad():
        full, cut = (token_stats(target_log_softmax(base.model, make_batch(enc, 0, trim=t)),
                                 make_batch(enc, 0).targets) for t in (False, True))
    assert make_batch(enc, 0, trim=True).input_ids.shape[1] == make_batch(enc, 0).input_ids.shape[1] - 1
    np.testing.assert_allclose(full[0].numpy(), cut[0].numpy(), atol=1e-6)
    assert (full[1] == cut[1]).all()
