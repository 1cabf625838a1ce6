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
