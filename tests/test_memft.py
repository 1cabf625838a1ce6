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


def _flat_batch(lengths):
    """A Batch-like object over records of the given target lengths (what token_weights reads)."""
    from types import SimpleNamespace

    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return SimpleNamespace(offsets=offsets, indices=list(range(len(lengths))),
                           targets=torch.zeros(offsets[-1], dtype=torch.long))


def _memlaw_loss(recipe, loss, argmax, batch, tracker):
    w = token_weights(recipe, loss, argmax, batch, tracker)
    return (w * loss).sum() / w.sum() if float(w.sum()) > 0 else torch.tensor(0.0), w


@pytest.mark.parametrize("seed", range(6))
def test_ot_matches_the_papers_code(seed):
    """memlaw's OT loss equals a line-by-line port of the paper's trainer (tests/paper_memft_port.py)
    on random per-token losses, including a batch with nothing above the threshold (SFT loss)."""
    import paper_memft_port as paper

    g = torch.Generator().manual_seed(seed)
    lengths = [int(x) for x in torch.randint(3, 12, (4,), generator=g)]
    scale = 0.3 if seed == 0 else 3.0  # seed 0: every token locked -> the SFT fallback
    flat = torch.rand(sum(lengths), generator=g) * scale
    # the port's layout: [B, T] padded, mask 1 on labelled tokens, loss 0 elsewhere
    T = max(lengths)
    loss2d, mask = torch.zeros(len(lengths), T), torch.zeros(len(lengths), T)
    o = 0
    for i, n in enumerate(lengths):
        loss2d[i, :n], mask[i, :n] = flat[o:o + n], 1.0
        o += n
    batch = _flat_batch(lengths)
    ours, w = _memlaw_loss(Recipe(method="ot"), flat, batch.targets, batch, AnchorTracker(50))
    theirs = paper.ot_loss(loss2d, mask)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    if seed == 0:
        assert w.tolist() == [1.0] * len(flat)  # the fallback trained every token


def test_curriculum_takes_no_step_when_nothing_is_above_threshold():
    """The PhoneBook curriculum uses the paper's zero-bp OT: no SFT fallback."""
    import paper_memft_port as paper

    flat = torch.full((5,), 0.1)
    batch = _flat_batch([5])
    w = token_weights(Recipe(method="curriculum"), flat, batch.targets, batch, AnchorTracker(50))
    assert float(w.sum()) == 0.0
    assert paper.ot_zero_bp_loss(flat[None], torch.ones(1, 5))[1] is True


def test_sw_matches_the_papers_code_visit_by_visit():
    """Intra-sample sliding window, one record seen over many visits (the paper's batch size 1):
    the anchor stays stuck for a while (the window grows past the point where its decay falls below
    the 0.01 outside it), then moves, then the record has no error. Weights equal the port's
    element by element on every visit."""
    import paper_memft_port as paper

    T = 260
    g = torch.Generator().manual_seed(0)
    state, tracker = paper.SlidingState(), AnchorTracker(50)
    batch = _flat_batch([T])
    anchors = [5] * 11 + [9, 9, 30] + [None, None] + [7, 7, 7, 7]
    for visit, anchor in enumerate(anchors):
        loss = torch.rand(T, generator=g) * 4
        correct = torch.ones(T, dtype=torch.bool)
        if anchor is not None:
            correct[anchor] = False
            correct[anchor + 1:] = torch.rand(T - anchor - 1, generator=g) > 0.3
        argmax = torch.where(correct, batch.targets, batch.targets + 1)
        ours = token_weights(Recipe(method="sw"), loss, argmax, batch, tracker)
        theirs = paper.sw_weights(loss[None], correct[None], torch.ones(1, T), state)[0]
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-9), f"visit {visit} (anchor {anchor})"
        assert float(_memlaw_loss(Recipe(method="sw"), loss, argmax, batch, AnchorTracker(50))[0]) > 0
    # the window did grow to 4x (200 tokens) while stuck: the 4th visit is the first to grow
    assert [h[2][0] for h in state.history[:11]] == [1, 1, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4, 4]


def test_sw_window_rule():
    pos = torch.arange(80, dtype=torch.float32)
    w = window(pos, anchor=10, width=50, tau_w=20.0, floor=0.01)
    assert w[:10].tolist() == pytest.approx([1.0] * 10)  # before the anchor: full weight (the paper)
    assert float(w[30]) == pytest.approx(math.exp(-1.0))  # decays with tau_w = 20
    assert float(w[59]) == pytest.approx(math.exp(-49 / 20))
    assert w[60:].tolist() == pytest.approx([0.01] * 20)  # outside the 50-token window
    assert window(pos, None, 50, 20.0, 0.01).tolist() == pytest.approx([1.0] * 80)  # no error: all 1
    loss = torch.full((80,), 0.05)
    loss[12] = 3.0
    sw = weights_sw(loss, pos, 10, 50)
    assert float(sw[12]) == pytest.approx(math.exp(-2 / 20) / (1 + math.exp(-10 * (3.0 - LN2))), rel=1e-5)
    assert float(sw[11]) < 0.01  # a locked token in the window gets ~no weight (the sigmoid gate)


def test_sw_window_grows_from_the_fourth_stuck_visit_and_snaps_back():
    t = AnchorTracker(base=50)
    widths = [t.width(0, 7) for _ in range(10)]
    assert widths == [50, 50, 50, 75, 100, 125, 150, 175, 200, 200]
    assert t.width(0, 8) == 50  # the anchor moved: snap back
    assert t.width(1, None) == 50


def test_curriculum_schedule_matches_the_papers_code():
    """Active samples per epoch: the paper's PhoneBook schedule (boundaries 20/40/60/80 of 300
    epochs), shares rounded down to whole batches. One deliberate difference: in the last stage
    memlaw trains every sample, where the paper's rounding to whole batches leaves the remainder
    (n mod batch) untrained for the whole run."""
    import paper_memft_port as paper

    from memlaw.memft import curriculum_active

    for n, bs in ((100, 10), (37, 4), (300, 40)):
        for epoch in range(0, 120):
            ours = curriculum_active(epoch, 300, n, bs)
            theirs = paper.curriculum_active_count(epoch, n, bs, boundaries=(20, 40, 60, 80, 300), drop_last=False)
            assert ours == (theirs if epoch < 80 else n), (n, bs, epoch)


def test_linear_schedule_and_cycles():
    r = Recipe(method="sft", lr=0.1, max_steps=10, schedule="linear", cycles=2)
    assert [round(r.lr_at(s), 6) for s in (0, 5, 9)] == [0.1, 0.05, 0.01]
    assert Recipe(lr=0.1, max_steps=10).lr_at(9) == 0.1  # constant
    with pytest.raises(Exception, match="schedule"):
        Recipe(schedule="cosine")


def test_train_adapter_writes_plain_peft_adapter(kv_corpus, tmp_path):
    out = tmp_path / "adapter"
    side = train_adapter(CorpusSpec(str(kv_corpus)), "tiny", 4, out,
                         recipe=Recipe(method="sft", lr=1e-2, max_steps=30, batch_size=8), progress=False)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    cfg = json.loads((out / "adapter_config.json").read_text())
    # the config names what plain PEFT loads (tiny's folder in memlaw's cache); the sidecar memlaw's name
    from memlaw.models import tiny_dir

    assert cfg["r"] == 4 and cfg["base_model_name_or_path"] == str(tiny_dir().resolve())
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


@pytest.mark.parametrize("method", ["sft", "ot"])
def test_training_stops_when_every_token_is_locked(kv_corpus, tmp_path, method):
    """The stop rule: training ends when every target token is locked, confirmed by scoring."""
    side = train_adapter(CorpusSpec(str(kv_corpus)), "tiny", 8, tmp_path / "full",
                         recipe=Recipe(method=method, lr=1e-2, max_steps=400, batch_size=24), progress=False)
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


def test_convergence_test_has_a_coverage_clause():
    """A last cycle that barely moved the loss but still locked tokens is not converged: the
    planner predicts coverage, so coverage must have settled too."""
    from memlaw.memft import passes_convergence_test

    assert passes_convergence_test(10.0, 2.00, 1.98, 0.1, 0.05)  # loss only: converged
    assert passes_convergence_test(10.0, 2.00, 1.98, 0.1, 0.05, 0.50, 0.51, 0.02)
    assert not passes_convergence_test(10.0, 2.00, 1.98, 0.1, 0.05, 0.50, 0.60, 0.02)
    assert not passes_convergence_test(10.0, 3.00, 1.50, 0.1, 0.05, 0.50, 0.50, 0.02)  # the loss clause still


def test_until_converged_stops_at_the_first_converged_cycle(kv_corpus, tmp_path):
    """With until_converged, cycles is a ceiling: a run whose loss has settled stops after the
    first cycle that passes the test, with the evidence of its last two cycles; without it every
    cycle runs. Tiny rank 1 at a small lr settles within a few 10-step cycles."""
    spec = CorpusSpec(str(kv_corpus))
    base = dict(method="sft", lr=3e-3, max_steps=10, batch_size=24, patience=0, schedule="linear", cycles=12,
                converge_rel_tol=0.5, converge_abs_tol=0.5, converge_cov_tol=0.5)
    stop = train_adapter(spec, "tiny", 1, tmp_path / "a", recipe=Recipe(**base, until_converged=True),
                         progress=False)["train"]
    full = train_adapter(spec, "tiny", 1, tmp_path / "b", recipe=Recipe(**base), progress=False)["train"]
    assert stop["stop_reason"] == "converged" and stop["converged"] is True
    assert stop["steps"] < 120 and stop["steps"] % 10 == 0 and len(stop["cycle_ends"]) == stop["steps"] // 10
    assert full["steps"] == 120 and full["stop_reason"] == "max_steps"
    # the same run up to the stop: the schedule and the data order do not depend on the flag
    n = len(stop["cycle_ends"])
    assert [c["mean_loss"] for c in full["cycle_ends"][:n]] == pytest.approx([c["mean_loss"] for c in stop["cycle_ends"]])


def test_memft_cli_convergence_tolerances(kv_corpus, tmp_path):
    """The test's tolerances are flags (a card's printed line states them); given ones reach the
    recipe, and the stop follows them: with loose tolerances the run stops at a cycle end, with zero
    tolerance it runs on longer."""
    args = ["train", str(kv_corpus), "--model", "tiny", "--rank", "1", "--max-steps", "10", "--cycles", "12",
            "--until-converged", "--patience", "0", "--lr", "3e-3", "--batch-size", "24", "--method", "sft",
            "--schedule", "linear", "--quiet"]
    r = CliRunner().invoke(memft_cli, args + ["--converge-rel-tol", "0.5", "--converge-abs-tol", "0.5",
                                             "--converge-cov-tol", "0.5", "--out", str(tmp_path / "loose")])
    assert r.exit_code == 0, r.output
    loose = json.loads((tmp_path / "loose" / "memlaw.json").read_text())
    assert {k: loose["recipe"][k] for k in ("converge_rel_tol", "converge_abs_tol", "converge_cov_tol")} == \
        {"converge_rel_tol": 0.5, "converge_abs_tol": 0.5, "converge_cov_tol": 0.5}
    assert loose["train"]["stop_reason"] == "converged" and loose["train"]["steps"] % 10 == 0
    r = CliRunner().invoke(memft_cli, args + ["--converge-cov-tol", "0", "--converge-abs-tol", "0",
                                             "--converge-rel-tol", "0", "--out", str(tmp_path / "strict")])
    assert r.exit_code == 0, r.output
    strict = json.loads((tmp_path / "strict" / "memlaw.json").read_text())
    assert strict["recipe"]["converge_rel_tol"] == 0.0 and strict["train"]["steps"] > loose["train"]["steps"]
    r = CliRunner().invoke(memft_cli, args + ["--converge-cov-tol", "-1", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "--converge-cov-tol" in r.output and not (tmp_path / "bad").exists()


def test_memft_cli_until_converged_flag(kv_corpus, tmp_path):
    r = CliRunner().invoke(memft_cli, ["train", str(kv_corpus), "--model", "tiny", "--rank", "1", "--max-steps", "4",
                                       "--cycles", "3", "--all-cycles", "--patience", "0", "--lr", "1e-3",
                                       "--out", str(tmp_path / "a"), "--quiet"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "a" / "memlaw.json").read_text())
    assert meta["recipe"]["until_converged"] is False and meta["train"]["steps"] == 12
