"""memlaw.planner.context: the windows that put other records before each scored one, and the
in-context losses they give under the tiny model, checked against a forward pass done here."""

import json

import numpy as np
import pytest

from memlaw.planner.context import context_losses, context_windows


@pytest.mark.parametrize("lengths,k,max_tokens", [([10] * 20, 8, 2048), ([10] * 5, 8, 2048),
                                                  ([300, 5, 5, 2100, 700, 800, 900, 50], 8, 2048),
                                                  ([40] * 30, 4, 200), ([7], 8, 2048)])
def test_windows_score_every_record_once_never_after_itself(lengths, k, max_tokens):
    windows = context_windows(lengths, k=k, max_tokens=max_tokens)
    scored = [i for _, s in windows for i in s]
    fits = [i for i, n in enumerate(lengths) if n + 1 <= max_tokens]
    assert sorted(scored) == fits  # every record that fits, once
    for context, s in windows:
        assert not set(context) & set(s) and len(s) <= k
        assert 1 + sum(lengths[i] for i in context + s) <= max_tokens
        if all(n <= max_tokens // (2 * k) for n in lengths):  # short records: K before, as many as there are
            assert len(context) == min(k, len(fits) - len(s))


def test_in_context_losses_are_the_window_forward_pass(one_thread, tmp_path):
    import torch

    from memlaw.backends import get_backend
    from memlaw.corpus import encode_records, read_corpus
    from memlaw.models import load_base
    from memlaw.planner.baseloss import context_settings

    base = load_base("tiny")
    rows = [{"prompt": f"id {i:02d}:", "completion": f" {i * 37 % 1000:03d} ok"} for i in range(11)]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoded = encode_records(base.tokenizer, read_corpus(path))
    scorer = get_backend("transformers", allow_auto=False)
    alone = [-s.logprob for s in scorer.score_base(base.model, encoded)]
    settings = context_settings(base)
    got = context_losses(scorer, base.model, encoded, alone, **settings)
    assert [len(g) for g in got] == [e.n_target for e in encoded]

    bos, sep = settings["bos_id"], list(settings["separator"])
    opens = bos is not None

    def body(e):
        key = list(e.key_ids)
        return (key[1:] if opens and key[:1] == [bos] else key) + list(e.target_ids) + sep

    checked = 0
    for context, scored in context_windows([len(body(e)) for e in encoded], max_tokens=settings["max_tokens"]):
        seq = ([bos] if opens else []) + [t for j in context for t in body(encoded[j])]
        starts = {}
        for i in scored:
            starts[i] = len(seq) + len(body(encoded[i])) - len(sep) - encoded[i].n_target
            seq += body(encoded[i])
        with torch.no_grad():
            logp = torch.log_softmax(base.model(torch.tensor([seq])).logits[0].float(), -1).numpy()
        for i, start in starts.items():
            want = -logp[np.arange(start - 1, start - 1 + encoded[i].n_target), seq[start:start + encoded[i].n_target]]
            np.testing.assert_allclose(got[i], want, atol=2e-4)
            checked += 1
    assert checked == len(encoded)
    # the context changes the numbers (the windows really hold other records)
    assert not np.allclose(np.concatenate(got), np.concatenate(alone), atol=1e-3)
    # one record: nothing to put before it, so its in-context losses are its losses alone
    one = context_losses(scorer, base.model, encoded[:1], alone[:1], **settings)
    np.testing.assert_allclose(one[0], alone[0], atol=2e-4)


def test_context_prices_are_added_to_a_cached_entry(one_thread, tmp_path, monkeypatch):
    """The in-context pass runs only for the context predictor: a cached entry made without it gets
    it from one more pass (base losses from the token cache), as if measured whole."""
    from memlaw.corpus import corpus_sha256, read_corpus
    from memlaw.memft import CorpusSpec
    from memlaw.planner.baseloss import measure_or_load
    from memlaw.planner.coverage import LossProfile

    monkeypatch.setenv("MEMLAW_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"id {i:02d}:", "completion": f" {i * 37 % 1000:03d} ok"}) + "\n"
                            for i in range(20)))
    spec, records, sha = CorpusSpec(path), read_corpus(path), corpus_sha256(path)
    plain, cached, _ = measure_or_load(spec, records, "tiny", sha)
    assert not cached and "context_bins" not in plain.profile
    added, cached, _ = measure_or_load(spec, records, "tiny", sha, context=True)
    assert cached and "context_bins" in added.profile
    whole, cached, _ = measure_or_load(spec, records, "tiny", sha, use_cache=False, context=True)
    assert not cached
    a, w = LossProfile.from_dict(added.profile), LossProfile.from_dict(whole.profile)
    assert a.n == w.n == 20 * 7 and np.abs(a.context_counts - w.context_counts).sum() <= 2  # float32 cache: a bin at most
    again, cached, _ = measure_or_load(spec, records, "tiny", sha, context=True)
    assert cached and again.profile == whole.profile
