"""memlaw.integrations under a real transformers.Trainer and a real TRL SFTTrainer (tiny model), and
one SmolLM2-135M run (slow)."""

import json
import random
import warnings

import pytest
import torch
from click.testing import CliRunner
from transformers import Trainer, TrainerCallback, TrainingArguments

from memlaw.corpus import Record, encode_records, read_corpus
from memlaw.errors import UserError
from memlaw.integrations import MemAuditCallback, MemFTLoss, RightPadCollator, corpus_dataset, memft_trainer_class
from memlaw.memft import AnchorTracker, LoraTemplate, Recipe, make_lora_model, token_weights, train
from memlaw.models import load_base
from memlaw.scoring import make_batch, score, summarize, target_log_softmax, token_stats

pytestmark = pytest.mark.usefixtures("one_thread")

# TRL deprecates compute_loss_func for v2 (an extra forward pass per step); it is what the issue asks for
TRL_DEPRECATION = "ignore:`compute_loss_func` is deprecated:FutureWarning"


def _args(tmp_path, cls=TrainingArguments, **kw):
    settings = dict(output_dir=str(tmp_path / "trainer"), learning_rate=1e-2, lr_scheduler_type="constant",
                    report_to="none", save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
                    logging_steps=10_000)
    settings.update(kw)
    return cls(**settings)


def _lora_params(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class GradGrab(TrainerCallback):
    """The accumulated gradients just before the optimizer step (clipping off: max_grad_norm=0)."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in _lora_params(model).items()}


class LogTap(TrainerCallback):
    """Sees every Trainer.log call as report_to integrations (W&B, TensorBoard) do: through on_log."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


# --------------------------------------------------------------------------------------------
# the loss


def _varied_records():
    """8 records with targets of 1-14 tokens: micro-batches of 2 hold very different token counts,
    so a per-micro-batch mean would weight them wrongly under accumulation."""
    rng = random.Random(3)
    return [Record(f"k{i}:", " " + "".join(rng.choice("abcdefghij") for _ in range(n)), f"mem:{i}")
            for i, n in enumerate([2, 9, 3, 14, 5, 1, 11, 6])]


@pytest.fixture(scope="module")
def half_trained():
    """A LoRA model part way to memorising the 8 records (some tokens locked, some not: OT's weights
    are neither all 0 nor all 1), and its LoRA state to reset to before each run."""
    base = load_base("tiny")
    recs = _varied_records()
    enc = encode_records(base.tokenizer, recs)
    model = make_lora_model(base.model, LoraTemplate(), 4, seed=0)
    train(model, enc, Recipe(method="sft", lr=1e-2, max_steps=10, batch_size=8, patience=0), progress=False)
    s = summarize(score(model, enc))
    assert 0.2 < s["coverage"] < 0.8, s
    state = {n: p.detach().clone() for n, p in _lora_params(model).items()}
    return base, model, recs, enc, state


def _reset(model, state):
    with torch.no_grad():
        for n, p in _lora_params(model).items():
            p.copy_(state[n])
            p.grad = None


def _trainer_grads(tmp_path, model, tok, recs, loss_func, batch, accum, sft_trainer=False, override=False):
    """One optimizer step of a real Trainer (or SFTTrainer) over all 8 records; its accumulated grads.
    ``override``: MemFT as the trainer's compute_loss (memft_trainer_class), not as compute_loss_func."""
    grab = GradGrab()
    common = dict(per_device_train_batch_size=batch, gradient_accumulation_steps=accum, max_steps=1,
                  max_grad_norm=0.0)
    # SFTConfig defaults to bf16 autocast where the CPU has it: exactness is a float32 question
    if override:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        rows = [{"prompt": r.key, "completion": r.target} for r in recs]
        with warnings.catch_warnings():
            # no deprecated compute_loss_func on this path
            warnings.filterwarnings("error", message=".*compute_loss_func.*deprecated", category=FutureWarning)
            tr = memft_trainer_class(SFTTrainer)(model=model, args=_args(tmp_path, SFTConfig, bf16=False, **common),
                                                 train_dataset=Dataset.from_list(rows), processing_class=tok,
                                                 memft_loss=loss_func, callbacks=[grab])
    elif sft_trainer:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        rows = [{"prompt": r.key, "completion": r.target} for r in recs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            tr = SFTTrainer(model=model, args=_args(tmp_path, SFTConfig, bf16=False, **common),
                            train_dataset=Dataset.from_list(rows), processing_class=tok,
                            compute_loss_func=loss_func, callbacks=[grab])
    else:
        tr = Trainer(model=model, args=_args(tmp_path, **common), train_dataset=corpus_dataset(recs, tok),
                     data_collator=RightPadCollator(0), compute_loss_func=loss_func, callbacks=[grab])
    tr.train()
    assert tr.state.global_step == 1 and grab.grads is not None
    return grab.grads


def _rel_err(a: dict, b: dict) -> float:
    num = max(float((a[k] - b[k]).abs().max()) for k in b)
    den = max(float(b[k].abs().max()) for k in b)
    return num / den


def _memlaw_grads(model, enc, method):
    """The reference: memlaw's own forward (target_log_softmax) and token weights over one batch of
    all 8 records, Σ w·loss / (target tokens)."""
    batch = make_batch(enc, pad_id=0)
    model.train()
    lp, argmax, _ = token_stats(target_log_softmax(model, batch), batch.targets)
    loss_tok = -lp
    w = token_weights(Recipe(method=method), loss_tok.detach(), argmax, batch, AnchorTracker(50), fallback=False)
    ((w * loss_tok).sum() / loss_tok.numel()).backward()
    grads = {n: p.grad.detach().clone() for n, p in _lora_params(model).items()}
    model.zero_grad(set_to_none=True)
    return grads, w


@pytest.mark.parametrize("method", ["sft", "ot", "sw"])
def test_accumulation_4x2_gives_the_gradients_of_batch_8(half_trained, tmp_path, method):
    """MemFT via compute_loss_func in a real Trainer: gradient accumulation 4 × batch 2 gives the
    gradients of batch 8 and of memlaw's own objective over the 8 records; the per-micro-batch mean
    (what a loss that ignores num_items_in_batch computes) does not."""
    base, model, recs, enc, state = half_trained
    _reset(model, state)
    ref, w = _memlaw_grads(model, enc, method)
    if method != "sft":
        assert 0 < float(w.sum()) < len(w) - 1  # the weights really are uneven here
    _reset(model, state)
    g8 = _trainer_grads(tmp_path / "b8", model, base.tokenizer, recs, MemFTLoss(method), 8, 1)
    _reset(model, state)
    g2x4 = _trainer_grads(tmp_path / "b2", model, base.tokenizer, recs, MemFTLoss(method), 2, 4)
    assert _rel_err(g8, ref) < 1e-5
    assert _rel_err(g2x4, g8) < 1e-5

    loss = MemFTLoss(method)

    def per_micro_batch_mean(outputs, labels, num_items_in_batch=None):
        return loss(outputs, labels) / 4  # local mean, averaged over the 4 accumulation steps

    _reset(model, state)
    wrong = _trainer_grads(tmp_path / "bad", model, base.tokenizer, recs, per_micro_batch_mean, 2, 4)
    assert _rel_err(wrong, g8) > 1e-2  # the test can tell an inexact normalisation apart
    _reset(model, state)


@pytest.mark.filterwarnings(TRL_DEPRECATION)
def test_accumulation_is_exact_in_trl_sfttrainer(half_trained, tmp_path):
    """The same under TRL's SFTTrainer (its own tokenisation, completion-only labels, EOS added)."""
    base, model, recs, enc, state = half_trained
    _reset(model, state)
    g8 = _trainer_grads(tmp_path / "b8", model, base.tokenizer, recs, MemFTLoss("ot"), 8, 1, sft_trainer=True)
    _reset(model, state)
    g2x4 = _trainer_grads(tmp_path / "b2", model, base.tokenizer, recs, MemFTLoss("ot"), 2, 4, sft_trainer=True)
    _reset(model, state)
    assert _rel_err(g2x4, g8) < 1e-5


@pytest.mark.filterwarnings(TRL_DEPRECATION)
def test_compute_loss_override_for_trl_matches_compute_loss_func(half_trained, tmp_path):
    """TRL deprecates compute_loss_func; memft_trainer_class(SFTTrainer) puts the same loss in a
    compute_loss override: no deprecation warning, accumulation 4 × 2 equals batch 8, and both
    equal the compute_loss_func path's gradients."""
    base, model, recs, enc, state = half_trained
    _reset(model, state)
    g8 = _trainer_grads(tmp_path / "o8", model, base.tokenizer, recs, MemFTLoss("ot"), 8, 1, override=True)
    _reset(model, state)
    g2x4 = _trainer_grads(tmp_path / "o2", model, base.tokenizer, recs, MemFTLoss("ot"), 2, 4, override=True)
    _reset(model, state)
    ref = _trainer_grads(tmp_path / "f8", model, base.tokenizer, recs, MemFTLoss("ot"), 8, 1, sft_trainer=True)
    _reset(model, state)
    assert _rel_err(g2x4, g8) < 1e-5 and _rel_err(g8, ref) < 1e-5


def test_sft_loss_is_the_models_own_loss_and_ot_uses_memlaw_weights(half_trained):
    """On one batch: MemFTLoss('sft') equals the model's built-in causal-LM loss; MemFTLoss('ot')
    equals Σ weights_ot·loss / N, with memlaw's per-token losses."""
    base, model, recs, enc, state = half_trained
    _reset(model, state)
    model.eval()
    inputs = RightPadCollator(0)(corpus_dataset(recs, base.tokenizer))
    labels = inputs.pop("labels")
    with torch.no_grad():
        out = model(**inputs)
        own = model(**inputs, labels=labels).loss
        sft, ot = MemFTLoss("sft")(out, labels), MemFTLoss("ot")(out, labels)
        lp, _, _ = token_stats(target_log_softmax(model, make_batch(enc, 0)), make_batch(enc, 0).targets)
    loss_tok = -lp
    n = int((labels[:, 1:] != -100).sum())
    assert n == len(loss_tok) == sum(e.n_target for e in enc)
    assert float(sft) == pytest.approx(float(own), rel=1e-5)
    expected = float((loss_tok * (loss_tok > 0.6931471805599453)).sum()) / n
    assert 0 < expected < float(sft)
    assert float(ot) == pytest.approx(expected, rel=1e-5)
    # num_items_in_batch (the whole accumulated batch's count) is the normaliser when given
    assert float(MemFTLoss("ot")(out, labels, num_items_in_batch=4 * n)) == pytest.approx(expected / 4, rel=1e-5)


def test_sft_fallback_is_off_unless_asked():
    """A micro-batch whose every target token is locked: OT's loss is 0 (exact under accumulation),
    or, with sft_fallback=True, the paper's SFT loss on it."""
    logits = torch.full((1, 4, 6), -5.0)
    labels = torch.tensor([[-100, 1, 2, 3]])
    for t, tok in enumerate([1, 2, 3]):
        logits[0, t, tok] = 5.0  # p ≈ 1: locked
    sft = float(MemFTLoss("sft")({"logits": logits}, labels))
    assert 0 < sft < 0.01
    assert float(MemFTLoss("ot")({"logits": logits}, labels)) == 0.0
    assert float(MemFTLoss("ot", sft_fallback=True)({"logits": logits}, labels)) == pytest.approx(sft)


def test_sw_counts_training_visits_only(half_trained):
    """SW's anchor tracker advances on training passes, not on evaluation (no_grad) passes."""
    base, model, recs, enc, state = half_trained
    _reset(model, state)
    inputs = RightPadCollator(0)(corpus_dataset(recs, base.tokenizer))
    labels = inputs.pop("labels")
    loss = MemFTLoss("sw")
    with torch.no_grad():
        loss(model(**inputs), labels)
    assert loss.tracker.state == {}
    loss(model(**inputs), labels).backward()
    model.zero_grad(set_to_none=True)
    assert len(loss.tracker.state) == len(recs)  # one entry per record, keyed by its target tokens
    assert {k for k in loss.tracker.state} == {e.target_ids for e in enc}


def test_bad_uses_are_one_line_errors(tmp_path, kv_corpus):
    with pytest.raises(UserError, match="data schedule"):
        MemFTLoss("curriculum")
    with pytest.raises(UserError, match="unknown MemFT loss method 'nope'"):
        MemFTLoss("nope")
    with pytest.raises(UserError, match="needs labels"):
        MemFTLoss("sft")({"logits": torch.zeros(1, 3, 5)}, None)
    base = load_base("tiny")
    tr = Trainer(model=base.model, args=_args(tmp_path, max_steps=1), processing_class=base.tokenizer)
    with pytest.raises(UserError, match="every_n_steps must be"):
        MemAuditCallback(tr, kv_corpus, every_n_steps=0)
    with pytest.raises(UserError, match="never audit"):
        MemAuditCallback(tr, kv_corpus, on_evaluate=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": 1\n')
    with pytest.raises(UserError, match="bad.jsonl:2") as e:
        MemAuditCallback(tr, bad, every_n_steps=1)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="needs the tokenizer"):
        MemAuditCallback(Trainer(model=base.model, args=_args(tmp_path, max_steps=1)), kv_corpus, every_n_steps=1)


# --------------------------------------------------------------------------------------------
# the callback


def _memaudit_json(adapter_dir, corpus, out):
    from memlaw.cli.memaudit import main as memaudit_cli

    r = CliRunner().invoke(memaudit_cli, [str(adapter_dir), "--corpus", str(corpus), "--base-model", "tiny",
                                          "--backend", "transformers", "--json", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())["summary"]


def _same(logged: dict, summary: dict, prefix="memlaw_"):
    n = summary["records"]
    assert logged[prefix + "coverage"] == summary["coverage"]
    assert logged[prefix + "exact"] == summary["exact_records"] / n
    assert logged[prefix + "locked"] == summary["locked_records"] / n
    assert logged[prefix + "mean_loss"] == pytest.approx(summary["mean_loss"], rel=1e-5)


def test_callback_stops_a_real_trainer_when_all_locked_and_matches_memaudit(kv_corpus, tmp_path):
    """A real Trainer with MemFTLoss and the callback auditing every step: the audits reach the logs
    (what report_to integrations receive), training stops at the first step with every target token
    locked, long before max_steps, and a separate memaudit of the saved adapters — half way and at
    the end — reports exactly the coverage, exact and locked shares that were logged."""
    base = load_base("tiny")
    model = make_lora_model(base.model, LoraTemplate(), 8, seed=0)
    tap = LogTap()
    tr = Trainer(model=model, args=_args(tmp_path, per_device_train_batch_size=8, max_steps=400),
                 train_dataset=corpus_dataset(kv_corpus, base.tokenizer), data_collator=RightPadCollator(0),
                 compute_loss_func=MemFTLoss("sft"), processing_class=base.tokenizer, callbacks=[tap])
    cb = MemAuditCallback(tr, kv_corpus, every_n_steps=1)
    tr.add_callback(cb)
    mid = {}

    class SaveHalfWay(TrainerCallback):  # runs after the audit of the same step (added after it)
        def on_step_end(self, args, state, control, model=None, **kwargs):
            last = cb.history[-1]
            if not mid and 0.3 < last["coverage"] < 0.9:
                model.save_pretrained(str(tmp_path / "mid"))
                mid.update(last)

    tr.add_callback(SaveHalfWay())
    tr.train()

    steps = tr.state.global_step
    assert steps < 400 and cb.stopped_at == steps
    assert [h["step"] for h in cb.history] == list(range(1, steps + 1))
    assert all(h["coverage"] < 1.0 for h in cb.history[:-1]) and cb.history[-1]["coverage"] == 1.0
    logged = {s: d for s, d in tap.logs if "memlaw_coverage" in d}
    assert sorted(logged) == list(range(1, steps + 1))  # every audit went through Trainer.log
    in_history = [e for e in tr.state.log_history if "memlaw_coverage" in e]
    assert len(in_history) == steps and in_history[-1]["step"] == steps

    tr.save_model(str(tmp_path / "final"))
    final = _memaudit_json(tmp_path / "final", kv_corpus, tmp_path / "final.json")
    _same(logged[steps], final)
    assert final["coverage"] == 1.0
    assert mid, "no step had a coverage between 0.3 and 0.9"
    half = _memaudit_json(tmp_path / "mid", kv_corpus, tmp_path / "mid.json")
    _same(logged[mid["step"]], half)
    assert 0.3 < half["coverage"] < 0.9


def test_callback_audits_at_evaluation(kv_corpus, tmp_path):
    """on_evaluate: eval_memlaw_* join the evaluation metrics (trainer.evaluate() returns them) and the
    logs; in training a step audited twice (every_n_steps and evaluation) is scored once."""
    base = load_base("tiny")
    model = make_lora_model(base.model, LoraTemplate(), 4, seed=0)
    ds = corpus_dataset(kv_corpus, base.tokenizer)
    loss = MemFTLoss("sw")
    tr = Trainer(model=model, args=_args(tmp_path, per_device_train_batch_size=8, max_steps=6, eval_strategy="steps",
                                         eval_steps=3, per_device_eval_batch_size=8),
                 train_dataset=ds, eval_dataset=ds, data_collator=RightPadCollator(0), compute_loss_func=loss,
                 processing_class=base.tokenizer)
    cb = MemAuditCallback(tr, kv_corpus, every_n_steps=3, stop_when_locked=False)
    tr.add_callback(cb)
    scored = []
    audit = cb.audit
    cb.audit = lambda *a, **k: scored.append(1) or audit(*a, **k)
    tr.train()
    assert [(h["step"], h["eval"]) for h in cb.history] == [(3, False), (3, True), (6, False), (6, True)]
    assert len(scored) == 2
    assert cb.history[0]["coverage"] == cb.history[1]["coverage"]
    visits = dict(loss.tracker.state)
    metrics = tr.evaluate()
    assert len(scored) == 3  # outside training every evaluation scores afresh
    assert loss.tracker.state == visits  # evaluating is not a training visit for SW
    direct = cb.audit()
    assert metrics["eval_memlaw_coverage"] == direct["coverage"]
    assert metrics["eval_memlaw_exact"] == direct["exact"] and metrics["eval_memlaw_locked"] == direct["locked"]
    assert [e["step"] for e in tr.state.log_history if "eval_memlaw_coverage" in e] == [3, 6, 6]
    assert 0 <= direct["coverage"] <= 1 and direct["mean_loss"] > 0


def test_final_weights_are_audited_when_the_last_step_was_not(kv_corpus, tmp_path):
    """every_n_steps=4 over 6 steps: steps 4 and 6 (the end) are audited, 6 being the saved weights."""
    base = load_base("tiny")
    model = make_lora_model(base.model, LoraTemplate(), 4, seed=0)
    tr = Trainer(model=model, args=_args(tmp_path, per_device_train_batch_size=8, max_steps=6),
                 train_dataset=corpus_dataset(kv_corpus, base.tokenizer), data_collator=RightPadCollator(0),
                 compute_loss_func=MemFTLoss("sft"), processing_class=base.tokenizer)
    cb = MemAuditCallback(tr, kv_corpus, every_n_steps=4)
    tr.add_callback(cb)
    tr.train()
    assert [h["step"] for h in cb.history] == [4, 6]
    assert cb.stopped_at is None  # max_steps ended it, not the callback
    assert cb.history[-1]["mean_loss"] == cb.audit()["mean_loss"] < cb.history[0]["mean_loss"]
    assert [e["step"] for e in tr.state.log_history if "memlaw_coverage" in e] == [4, 6]


def test_audit_coverage_picks_the_best_checkpoint(kv_corpus, tmp_path):
    """metric_for_best_model="memlaw_coverage": the Trainer keeps the checkpoint the audit ranked best."""
    base = load_base("tiny")
    model = make_lora_model(base.model, LoraTemplate(), 4, seed=0)
    ds = corpus_dataset(kv_corpus, base.tokenizer)
    tr = Trainer(model=model, args=_args(tmp_path, per_device_train_batch_size=8, max_steps=36, eval_strategy="steps",
                                         eval_steps=4, save_strategy="steps", save_steps=4, learning_rate=3e-2,
                                         load_best_model_at_end=True, metric_for_best_model="memlaw_coverage",
                                         greater_is_better=True),
                 train_dataset=ds, eval_dataset=ds, data_collator=RightPadCollator(0),
                 compute_loss_func=MemFTLoss("sft"), processing_class=base.tokenizer)
    cb = MemAuditCallback(tr, kv_corpus, stop_when_locked=False)
    tr.add_callback(cb)
    tr.train()
    evals = [(h["step"], h["coverage"]) for h in cb.history if h["eval"]]
    assert [s for s, _ in evals] == list(range(4, 37, 4))
    best_step, best = max(evals, key=lambda x: (x[1], -x[0]))  # the first of equal bests, as Trainer keeps it
    assert len({c for _, c in evals}) > 1  # the choice is not trivial
    assert tr.state.best_metric == best
    assert tr.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")
    # it was loaded back at the end, and the callback's last entry audits it
    assert cb.history[-1]["step"] == 36 and not cb.history[-1]["eval"]
    assert cb.history[-1]["coverage"] == cb.audit()["coverage"] == best


def test_tensorboard_gets_the_audits(kv_corpus, tmp_path):
    """report_to="tensorboard": the audits land in TensorBoard's event files, step by step."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base = load_base("tiny")
    model = make_lora_model(base.model, LoraTemplate(), 4, seed=0)
    tr = Trainer(model=model, args=_args(tmp_path, per_device_train_batch_size=8, max_steps=6, report_to="tensorboard"),
                 train_dataset=corpus_dataset(kv_corpus, base.tokenizer), data_collator=RightPadCollator(0),
                 compute_loss_func=MemFTLoss("ot"), processing_class=base.tokenizer)
    cb = MemAuditCallback(tr, kv_corpus, every_n_steps=2)
    tr.add_callback(cb)
    tr.train()
    files = list((tmp_path / "trainer").rglob("events.out.tfevents.*"))  # TensorBoard's default: under output_dir
    assert files
    acc = EventAccumulator(str(files[0].parent)).Reload()
    for name in ("coverage", "exact", "locked", "mean_loss"):
        # TensorBoardCallback prefixes training logs with "train/"
        got = [(e.step, e.value) for e in acc.Scalars(f"train/memlaw_{name}")]
        assert got == [(h["step"], pytest.approx(h[name], rel=1e-6)) for h in cb.history]
    assert [h["step"] for h in cb.history] == [2, 4, 6]


@pytest.mark.filterwarnings(TRL_DEPRECATION)
def test_trl_sfttrainer_with_memft_ot_stops_when_locked(kv_corpus, tmp_path):
    """A real TRL SFTTrainer on prompt/completion rows, MemFT-OT as compute_loss_func with
    gradient accumulation, the callback scoring the EOS token TRL appends: it stops when all is
    locked and the saved adapter audits to what was logged. TRL's labels are the very tokens
    memlaw scores (same tokenisation)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from memlaw.auditor.audit import audit_adapter

    base = load_base("tiny")
    model = make_lora_model(base.model, LoraTemplate(), 8, seed=0)
    rows = [json.loads(line) for line in kv_corpus.read_text().splitlines()]
    tr = SFTTrainer(model=model, train_dataset=Dataset.from_list(rows), processing_class=base.tokenizer,
                    args=_args(tmp_path, SFTConfig, per_device_train_batch_size=8, gradient_accumulation_steps=3,
                               max_steps=300), compute_loss_func=MemFTLoss("ot"))
    cb = MemAuditCallback(tr, kv_corpus, every_n_steps=1, eos=True)
    tr.add_callback(cb)

    for ex, e in zip(tr.train_dataset, cb.encoded, strict=True):  # TRL's tokens and labels are memlaw's
        assert tuple(ex["input_ids"]) == e.input_ids
        assert ex["labels"] == [-100] * len(e.key_ids) + list(e.target_ids)
    assert all(e.target_ids[-1] == base.tokenizer.eos_token_id for e in cb.encoded)

    tr.train()
    steps = tr.state.global_step
    assert steps < 300 and cb.stopped_at == steps and cb.history[-1]["coverage"] == 1.0
    tr.save_model(str(tmp_path / "final"))
    res = audit_adapter(tmp_path / "final", kv_corpus, "tiny", backend="transformers")
    last = [e for e in tr.state.log_history if "memlaw_coverage" in e][-1]
    assert last["step"] == steps
    # memaudit scores without the EOS (the sidecar-less adapter does not say it was trained with one)
    enc_plain = encode_records(base.tokenizer, read_corpus(kv_corpus))
    assert res.summary["target_tokens"] == sum(e.n_target for e in enc_plain)
    assert res.summary["coverage"] == 1.0 == last["memlaw_coverage"]


@pytest.mark.parametrize("trl", [False, True])
def test_example_script_runs(tmp_path, trl):
    """examples/trainer_memaudit.py as a user runs it: a real process, Trainer (or SFTTrainer) + MemFT +
    callback on the tiny model; it stops when all is locked and (Trainer) its memaudit of the saved
    adapter equals the last audit."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "adapter"
    cmd = [sys.executable, "examples/trainer_memaudit.py", "--model", "tiny", "--out", str(out)]
    cmd += ["--trl", "--method", "ot", "--grad-accum", "3"] if trl else []
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in r.stdout.splitlines() if ":" in line}
    assert "stopped: every target token locked" in r.stdout
    last = json.loads(lines["last audit in training"])
    assert last["coverage"] == 1.0
    assert (out / "adapter_model.safetensors").is_file()
    if not trl:
        audited = json.loads(lines["memaudit of the saved adapter"])
        assert last["coverage"] == audited["coverage"]
        assert (last["exact"], last["locked"]) == (audited["exact"], audited["locked"])


@pytest.mark.slow
def test_smollm2_trainer_run_matches_memaudit(real_corpus, tmp_path):
    """One real SmolLM2-135M run: the card's LoRA template (q_proj/v_proj of layers 28-29), MemFT-OT
    through a real Trainer with accumulation 2 × 8, audited every 10 steps. Coverage rises, and the
    memaudit CLI on the saved adapter reports exactly what the callback logged last."""
    base = load_base("smollm2-135m")
    pad = base.tokenizer.pad_token_id
    model = make_lora_model(base.model, LoraTemplate(("q_proj", "v_proj"), layers=(28, 29)), 8, seed=0)
    tr = Trainer(model=model, args=_args(tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                                         learning_rate=2e-2, max_steps=30),
                 train_dataset=corpus_dataset(real_corpus, base.tokenizer), data_collator=RightPadCollator(pad),
                 compute_loss_func=MemFTLoss("ot"), processing_class=base.tokenizer)
    cb = MemAuditCallback(tr, real_corpus, every_n_steps=10)
    tr.add_callback(cb)
    tr.train()
    assert [h["step"] for h in cb.history] == [10, 20, 30]
    before = summarize(score(make_lora_model(load_base("smollm2-135m").model, LoraTemplate(("q_proj", "v_proj"),
                                             layers=(28, 29)), 8, seed=0), cb.encoded, pad_id=pad))
    assert cb.history[-1]["coverage"] > cb.history[0]["coverage"] > before["coverage"]
    tr.save_model(str(tmp_path / "final"))
    from memlaw.cli.memaudit import main as memaudit_cli

    out = tmp_path / "final.json"
    r = CliRunner().invoke(memaudit_cli, [str(tmp_path / "final"), "--corpus", str(real_corpus), "--base-model",
                                          "smollm2-135m", "--backend", "transformers", "--json", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads(out.read_text())["summary"]
    logged = [e for e in tr.state.log_history if "memlaw_coverage" in e][-1]
    assert logged["step"] == 30
    print("smollm2 audits:", [round(h["coverage"], 4) for h in cb.history], "base:", round(before["coverage"], 4),
          "memaudit:", summary)
    _same(logged, summary)


def test_sft_in_a_trainer_follows_memft_train(kv_corpus, tmp_path):
    """The same recipe two ways — memlaw's own loop (`memft train`'s) and a real Trainer with
    MemFTLoss("sft") — from the same LoRA init: after 10 full-batch AdamW steps (clipping 1.0,
    constant lr) the adapters agree to float32 round-off."""
    enc = encode_records(load_base("tiny").tokenizer, read_corpus(kv_corpus))
    ours = make_lora_model(load_base("tiny").model, LoraTemplate(), 4, seed=0)
    res = train(ours, enc, Recipe(method="sft", lr=1e-2, max_steps=10, batch_size=24, patience=0), progress=False)
    assert res.steps == 10 and res.stop_reason == "max_steps"

    base = load_base("tiny")
    theirs = make_lora_model(base.model, LoraTemplate(), 4, seed=0)
    tr = Trainer(model=theirs, args=_args(tmp_path, per_device_train_batch_size=24, max_steps=10, max_grad_norm=1.0,
                                          optim="adamw_torch"),
                 train_dataset=corpus_dataset(kv_corpus, base.tokenizer), data_collator=RightPadCollator(0),
                 compute_loss_func=MemFTLoss("sft"), processing_class=base.tokenizer)
    tr.train()
    a, b = _lora_params(ours), _lora_params(theirs)
    assert a.keys() == b.keys()
    moved = max(float(b[k].detach().abs().max()) for k in b if "lora_B" in k)
    assert moved > 1e-3  # they trained
    assert _rel_err({k: v.detach() for k, v in b.items()}, {k: v.detach() for k, v in a.items()}) < 1e-5  # measured 1e-6
