"""A ``transformers.TrainerCallback`` that audits a corpus while a Trainer trains.

Every ``every_n_steps`` optimizer steps and/or at each evaluation it scores every target token of
the corpus under the model being trained (memlaw's own teacher-forced scoring, the same numbers
``memaudit`` reports for the saved adapter) and logs

    memlaw_coverage    locked target tokens / all target tokens (p > 0.5)
    memlaw_exact       share of records greedy decoding reproduces exactly
    memlaw_locked      share of records whose every target token is locked
    memlaw_mean_loss   mean target-token loss (nats)

through the Trainer's own ``log`` — so ``report_to`` (W&B, TensorBoard, …) gets them, and they are in
``trainer.state.log_history``. At evaluation they are also added to the evaluation metrics as
``eval_memlaw_*`` (usable as ``metric_for_best_model="memlaw_coverage"``). With
``stop_when_locked`` (default) training stops once every target token is locked. At the end of
training the final weights are audited too, unless the last audit already was of them, so the
last ``memlaw_*`` entry always describes the adapter ``trainer.save_model`` writes.

Every process audits the whole corpus with its full copy of the model (single process or DDP);
sharded models (FSDP, DeepSpeed ZeRO-3) are not supported.
"""

from __future__ import annotations

from transformers import Trainer, TrainerCallback

from memlaw.errors import UserError

PREFIX = "memlaw_"


def _tokenizer_of(processing_class):
    tok = getattr(processing_class, "tokenizer", processing_class)  # a multimodal processor holds one
    return tok if hasattr(tok, "convert_tokens_to_ids") else None


def read_records(corpus):
    """A corpus as memlaw records: a path or CorpusSpec (read with memlaw's reader), or records."""
    from memlaw.memft import CorpusSpec

    if isinstance(corpus, (list, tuple)):
        return list(corpus)
    spec = corpus if isinstance(corpus, CorpusSpec) else CorpusSpec(str(corpus))
    return spec.read()


class MemAuditCallback(TrainerCallback):
    """Audit ``corpus`` (JSONL path, :class:`memlaw.memft.CorpusSpec` or memlaw records) while
    ``trainer`` trains::

        trainer = Trainer(model=peft_model, args=args, ...)
        trainer.add_callback(MemAuditCallback(trainer, "corpus.jsonl", every_n_steps=20))

    The trainer is needed to log through it (a callback gets no handle on it). ``tokenizer``:
    default the trainer's ``processing_class``. ``eos``: score the EOS token after every target
    too (when training teaches it). ``history`` holds every audit: step, eval, and the metrics.
    One audit costs one teacher-forced scoring pass over the corpus; in training, a step audited
    twice (every_n_steps and an evaluation) is scored once."""

    def __init__(self, trainer: Trainer, corpus, *, tokenizer=None, every_n_steps: int | None = None,
                 on_evaluate: bool = True, stop_when_locked: bool = True, at_end: bool = True,
                 eos: bool = False, max_tokens: int = 8192):
        from memlaw.corpus import encode_records

        if every_n_steps is not None and (isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int)
                                          or every_n_steps < 1):
            raise UserError(f"every_n_steps must be a whole number ≥ 1 or None, got {every_n_steps!r}")
        if every_n_steps is None and not on_evaluate:
            raise UserError("MemAuditCallback would never audit", fix="set every_n_steps, or on_evaluate=True")
        tok = tokenizer if tokenizer is not None else _tokenizer_of(getattr(trainer, "processing_class", None))
        if tok is None:
            raise UserError("MemAuditCallback needs the tokenizer the model was trained with",
                            fix="pass tokenizer=..., or give the Trainer processing_class=tokenizer")
        self.trainer = trainer
        self.every_n_steps = every_n_steps
        self.audit_on_evaluate = on_evaluate
        self.stop_when_locked = stop_when_locked
        self.at_end = at_end
        self.max_tokens = max_tokens
        self.records = read_records(corpus)
        # encoded once, up front: a bad corpus fails before training starts
        self.encoded = encode_records(tok, self.records, eos=eos)
        if not self.encoded:
            raise UserError("the corpus to audit has no records")
        self.pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        self.history: list[dict] = []
        self.stopped_at: int | None = None
        self._last: tuple[int, dict] | None = None  # (global step, metrics) of the latest audit in training
        self._training = False

    # ------------------------------------------------------------------------------------------

    def audit(self, model=None) -> dict:
        """Score the corpus under ``model`` (default: the trainer's) and return the metrics."""
        from memlaw.scoring import score, summarize

        model = model if model is not None else self.trainer.model
        was_training = model.training
        model.eval()  # no dropout: the numbers memaudit gives the saved adapter
        try:
            s = summarize(score(model, self.encoded, pad_id=self.pad_id, max_tokens=self.max_tokens))
        finally:
            model.train(was_training)
        n = s["records"]
        return {"coverage": s["coverage"], "exact": s["exact_records"] / n, "locked": s["locked_records"] / n,
                "mean_loss": s["mean_loss"]}

    def _measure(self, state) -> dict:
        # In training the weights change only at optimizer steps: an audit at the same global step is
        # reused. Outside it (evaluate() by hand, a best checkpoint loaded back) every call scores.
        if not self._training:
            return self.audit()
        if self._last is None or self._last[0] != state.global_step:
            self._last = (state.global_step, self.audit())
        return self._last[1]

    def _report(self, state, control, metrics: dict, eval_prefix: str = "") -> dict:
        logs = {f"{eval_prefix}{PREFIX}{k}": float(v) for k, v in metrics.items()}
        self.history.append({"step": state.global_step, "eval": bool(eval_prefix), **metrics})
        # Trainer.log itself, not a subclass's override: TRL's SFTTrainer.log would fold its running
        # training metrics (entropy, token accuracy) into this entry and reset them.
        Trainer.log(self.trainer, logs)
        # stop only a run in progress (not an evaluate() by hand, nor the audit after the last step)
        if self.stop_when_locked and self._training and metrics["coverage"] >= 1.0 and state.global_step > 0:
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return logs

    # ------------------------------------------------------------------------------------------
    # TrainerCallback events

    def on_train_begin(self, args, state, control, **kwargs):
        self._last, self._training = None, True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        last, self._last, self._training = self._last, None, False  # weights may now change without a step
        reloaded = args.load_best_model_at_end and state.best_model_checkpoint is not None
        if self.at_end and (last is None or last[0] != state.global_step or reloaded):
            self._report(state, control, self.audit())
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self._report(state, control, self._measure(state))
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.audit_on_evaluate:
            logs = self._report(state, control, self._measure(state), eval_prefix="eval_")
            if metrics is not None:
                metrics.update(logs)  # what trainer.evaluate() returns and metric_for_best_model reads
        return control
