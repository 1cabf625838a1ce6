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


def _adapted_tiny(layers, seed=0):
    """The tiny model with LoRA on ``layers`` and non-zero B (so the adapter changes the numbers)."""
    model = make_lora_model(load_base("tiny").model, LoraTemplate(layers=layers), 4, seed=seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(seed))
    return model.eval()


def _same_bits(a, b):
    return all(np.array_equal(x.logprob, y.logprob) and np.array_equal(x.argmax, y.argmax)
               and np.array_equal(x.margin, y.margin) for x, y in zip(a, b, strict=True))


def test_prefix_states_give_the_same_bits_and_are_stored(kv_corpus, tmp_path, monkeypatch):
    """Scoring from the stored input of the adapter's lowest layer gives the very numbers of the
    unsplit pass, with the adapter and without it (the no-effect check's pass); a second audit reads
    the stored states instead of running the layers below."""
    from memlaw.scoring import PrefixStates, first_adapted_layer, prefix_states

    monkeypatch.delenv("MEMLAW_PREFIX_CACHE_MB", raising=False)
    base = load_base("tiny")
    enc = _encoded(base, kv_corpus)
    model = _adapted_tiny((1,))
    assert first_adapted_layer(model) == 1
    ident = base.identity
    assert ident.get("weights_sha256")
    store = tmp_path / "prefix"
    first = prefix_states(model, ident, store_dir=store)
    assert isinstance(first, PrefixStates) and first.k == 1
    plain = score(model, enc, max_tokens=64)
    split = score(model, enc, max_tokens=64, prefix=first)
    assert _same_bits(plain, split)
    assert not _same_bits(plain, score(base.model, enc, max_tokens=64))  # the adapter matters here
    n_batches = len(length_batches(enc, max_tokens=64))
    assert first.computed == n_batches and first.read == 0
    with model.disable_adapter():  # the base-model pass: same stored states, from memory
        assert _same_bits(score(model, enc, max_tokens=64), score(model, enc, max_tokens=64, prefix=first))
    assert first.computed == n_batches
    assert len(list(store.rglob("*.safetensors"))) == n_batches

    # the next audit (a new object, another adapter on the same base): states from the store
    other = _adapted_tiny((1,), seed=1)
    again = prefix_states(other, ident, store_dir=store)
    assert _same_bits(score(other, enc, max_tokens=64), score(other, enc, max_tokens=64, prefix=again))
    assert again.read == n_batches and again.computed == 0

    # a damaged file is computed again, to the same numbers
    victim = sorted(store.rglob("*.safetensors"))[0]
    victim.write_bytes(b"not a tensor")
    third = prefix_states(other, ident, store_dir=store)
    assert _same_bits(score(other, enc, max_tokens=64), score(other, enc, max_tokens=64, prefix=third))
    assert third.computed == 1 and third.read == n_batches - 1


def test_prefix_states_apply_only_above_the_first_layer(kv_corpus, tmp_path, monkeypatch):
    """LoRA on layer 0 leaves no base layer to share; a store limit of 0 keeps states in memory."""
    from memlaw.scoring import first_adapted_layer, prefix_states

    base = load_base("tiny")
    assert first_adapted_layer(base.model) is None
    assert prefix_states(_adapted_tiny((0, 1)), base.identity) is None
    assert prefix_states(_adapted_tiny(None), base.identity) is None
    monkeypatch.setenv("MEMLAW_PREFIX_CACHE_MB", "0")
    enc = _encoded(base, kv_corpus)
    model = _adapted_tiny((1,))
    store = tmp_path / "prefix"
    p = prefix_states(model, base.identity, store_dir=store)
    assert _same_bits(score(model, enc, max_tokens=64), score(model, enc, max_tokens=64, prefix=p))
    assert not store.exists()


def test_prefix_store_evicts_the_least_recently_used(kv_corpus, tmp_path, monkeypatch):
    """Past its size limit the store deletes the files used longest ago, never the ones the audit
    at hand reads or writes, and the numbers stay the same."""
    import os

    from memlaw.scoring import prefix_states

    base = load_base("tiny")
    enc = _encoded(base, kv_corpus)
    model = _adapted_tiny((1,))
    store = tmp_path / "prefix"
    old = store / "other-model"
    old.mkdir(parents=True)
    stale = []
    for i in range(3):  # another model's files, used long ago (oldest first)
        f = old / f"stale{i}.safetensors"
        f.write_bytes(b"\0" * 40_000)
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
        stale.append(f)
    p = prefix_states(model, base.identity, store_dir=store)
    plain = score(model, enc, max_tokens=64)
    # room for this corpus's states and one stale file: the two oldest go, the newest stays
    n_batches = len(length_batches(enc, max_tokens=64))
    mine = score(model, enc, max_tokens=64, prefix=prefix_states(model, base.identity, store_dir=tmp_path / "probe"))
    needed = sum(f.stat().st_size for f in (tmp_path / "probe").rglob("*.safetensors"))
    monkeypatch.setenv("MEMLAW_PREFIX_CACHE_MB", str((needed + 40_000 + 1_000) / 2**20))
    assert _same_bits(plain, mine)
    assert _same_bits(plain, score(model, enc, max_tokens=64, prefix=p))
    assert [f.exists() for f in stale] == [False, False, True]
    assert len(list(p.store.glob("*.safetensors"))) == n_batches


def test_an_adapter_that_saves_the_embeddings_gets_no_prefix():
    """modules_to_save=["embed_tokens"]: the embedding itself is the adapter's, so no layer's input is
    the base model's, however high the LoRA layers sit."""
    from peft import LoraConfig, get_peft_model

    from memlaw.scoring import first_adapted_layer, prefix_states

    base = load_base("tiny")
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[1],
                     modules_to_save=["embed_tokens"], task_type="CAUSAL_LM")
    model = get_peft_model(base.model, cfg)
    assert any("modules_to_save" in n and "embed_tokens" in n for n, _ in model.named_parameters())
    assert first_adapted_layer(model) is None
    assert prefix_states(model, base.identity) is None
    plain = get_peft_model(load_base("tiny").model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                               layers_to_transform=[1], task_type="CAUSAL_LM"))
    assert first_adapted_layer(plain) == 1
