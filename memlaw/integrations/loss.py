"""MemFT as a ``compute_loss_func`` for ``transformers.Trainer`` and TRL's ``SFTTrainer``.

``Trainer`` calls ``compute_loss_func(outputs, labels, num_items_in_batch=N)`` once per micro-batch,
where ``N`` is the number of target tokens (labels ≠ −100, counted after the causal shift) in the
*whole* accumulated batch — every micro-batch of one optimizer step — and it does not divide the
returned loss by the accumulation steps again (transformers ≥ 4.46; checked in 5.24's
``Trainer.training_step``). So the loss here is

    Σ_micro-batch w · loss_token / N

and the micro-batches of one step sum to Σ_batch w · loss / N: the gradient of 4 × 2 records
accumulated equals that of one batch of 8, whatever the number of target tokens per micro-batch.

What is exact under gradient accumulation, and what is not:

* ``sft``: w = 1, the plain mean token loss (the same number as the model's own loss); exact.
* ``ot``: w = memlaw's ``weights_ot`` (1 where the token is not locked); each weight depends only on
  that token's loss under the parameters of this step, which accumulation does not change: exact.
  It differs from ``memft train`` in the normaliser: ``memft train`` divides by Σ w (the unlocked
  tokens of the batch), which one micro-batch cannot know; here it is N, so the gradient is
  ``memft train``'s times the batch's unlocked share Σ w / N (same direction, smaller steps as
  tokens lock). The paper's SFT fallback for a batch with nothing above the threshold is off by
  default (``sft_fallback=True``: decided per micro-batch, so exact only without accumulation).
* ``sw``: memlaw's ``token_weights`` (sigmoid × window from each record's anchor). The anchor is
  per record (one row of labels), so it does not depend on batch-mates: exact. The window's
  growth needs per-record visit counts (``AnchorTracker``); ``compute_loss_func`` never sees record
  ids, so records are told apart by their target tokens (two records with the same target share
  one count), visits are counted in training only (not in evaluation), and the count is exact as
  long as each record is visited once per optimizer step — true of an ordinary epoch-wise sampler.
  A packed row (TRL ``packing=True``) is several records but one row here: use ``sft`` or ``ot``.
* ``curriculum`` is a data order (which records are active when), not a loss: refused.
"""

from __future__ import annotations

from memlaw.errors import UserError

LOSS_METHODS = ("sft", "ot", "sw")


def _logits(outputs):
    """The logits of a model output (ModelOutput, dict or tuple)."""
    if hasattr(outputs, "get"):  # ModelOutput is a dict
        logits = outputs.get("logits")
    elif isinstance(outputs, (tuple, list)) and outputs:
        logits = outputs[0]  # labels went to us, not to the model: no loss in front
    else:
        logits = getattr(outputs, "logits", None)
    if logits is None:
        raise UserError("MemFTLoss got model outputs without logits",
                        fix="pass it as compute_loss_func to a Trainer whose model returns logits")
    return logits


class MemFTLoss:
    """``compute_loss_func`` for ``Trainer(compute_loss_func=MemFTLoss("ot"))`` or ``SFTTrainer``.

    ``method``: ``sft``, ``ot`` or ``sw``; ``recipe``: a :class:`memlaw.memft.Recipe` whose ``tau``
    and ``sw_*`` settings are used (its method is overridden by ``method`` when both are given).
    See the module docstring for what stays exact under gradient accumulation."""

    def __init__(self, method: str | None = None, *, recipe=None, sft_fallback: bool = False):
        from dataclasses import replace

        from memlaw.memft import AnchorTracker, Recipe

        recipe = recipe or Recipe()
        method = method or recipe.method
        if method == "curriculum":
            raise UserError("method 'curriculum' is a data schedule (which records train when), not a loss, "
                            "and cannot be a compute_loss_func",
                            fix="use method 'ot' with your own sampler, or `memft train --method curriculum`")
        if method not in LOSS_METHODS:
            raise UserError(f"unknown MemFT loss method '{method}'", fix=f"use one of {', '.join(LOSS_METHODS)}")
        self.recipe = replace(recipe, method=method)
        self.method = method
        self.sft_fallback = sft_fallback
        self.tracker = AnchorTracker(self.recipe.sw_window, self.recipe.sw_stuck_visits)

    def __repr__(self) -> str:
        return f"MemFTLoss({self.method!r})"

    def __call__(self, outputs, labels, num_items_in_batch=None):
        import torch

        from memlaw.scoring import token_stats

        if labels is None:
            raise UserError("MemFTLoss needs labels (−100 on tokens not to train) and got none",
                            fix="give the Trainer a dataset/collator that returns 'labels'")
        logits = _logits(outputs)
        # a causal LM's output at position t predicts token t+1 (what the model's own loss shifts)
        shift = labels[..., 1:]
        rows, cols = (shift != -100).nonzero(as_tuple=True)  # row-major: each record's targets in order
        if rows.numel() == 0:
            return logits.sum() * 0.0  # nothing to train here, but keep the graph for backward()
        targets = shift[rows, cols]
        # as memlaw's scoring: float32 log-softmax only where a target token is predicted
        logprobs = torch.log_softmax(logits[..., :-1, :][rows, cols].float(), dim=-1)
        lp, argmax, _ = token_stats(logprobs, targets)
        loss_tok = -lp
        # Trainer's evaluation (prediction_step) runs under no_grad: not a training visit for SW
        training = torch.is_grad_enabled()
        with torch.no_grad():
            w = self._weights(loss_tok.detach(), argmax, rows, targets, training)
        n = num_items_in_batch if num_items_in_batch is not None else rows.numel()
        n = torch.as_tensor(n, device=loss_tok.device, dtype=loss_tok.dtype).clamp_min(1)
        return (w * loss_tok).sum() / n

    def _weights(self, loss_tok, argmax, rows, targets, training: bool):
        """memlaw's own token_weights over this micro-batch, one labels row = one record."""
        from types import SimpleNamespace

        import torch

        from memlaw.memft import AnchorTracker, token_weights

        counts = torch.bincount(rows).tolist()
        offsets = [0]
        for c in counts:
            if c:
                offsets.append(offsets[-1] + c)
        keys = [tuple(targets[a:b].tolist()) for a, b in zip(offsets, offsets[1:])] if self.method == "sw" else \
            list(range(len(offsets) - 1))
        batch = SimpleNamespace(offsets=offsets, indices=keys, targets=targets)
        tracker = self.tracker
        if not training:  # score with the visit counts so far, leave them as they are
            tracker = AnchorTracker(tracker.base, tracker.stuck_visits, dict(tracker.state))
        return token_weights(self.recipe, loss_tok, argmax, batch, tracker, fallback=self.sft_fallback)


def memft_loss(method: str = "ot", **kwargs) -> MemFTLoss:
    """Shorthand: ``Trainer(..., compute_loss_func=memft_loss("ot"))``."""
    return MemFTLoss(method, **kwargs)


class MemFTLossMixin:
    """MemFT as a ``compute_loss`` override, for trainers that deprecate ``compute_loss_func``:
    TRL's ``SFTTrainer`` warns that it goes in TRL 2.0 ("subclass SFTTrainer and override
    compute_loss"). This is that override, with the same loss as :class:`MemFTLoss`::

        class MemFTSFTTrainer(MemFTLossMixin, SFTTrainer): pass
        trainer = MemFTSFTTrainer(model=..., args=..., train_dataset=..., memft_loss=MemFTLoss("ot"))

    (or :func:`memft_trainer_class`). The loss is normalised by the Trainer's ``num_items_in_batch``
    (target tokens of the whole accumulated batch), so ``loss_is_scaled_for_ga`` tells the Trainer
    not to divide it by the accumulation steps again; across devices it is multiplied by their
    number when ``average_tokens_across_devices`` is on, as ``Trainer.compute_loss`` does. It
    replaces the trainer's own loss and its extra metrics (TRL's entropy and token accuracy)."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args, memft_loss: "MemFTLoss | str" = "sft", **kwargs):
        self.memft_loss = memft_loss if isinstance(memft_loss, MemFTLoss) else MemFTLoss(memft_loss)
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        loss = self.memft_loss(outputs, labels, num_items_in_batch=num_items_in_batch)
        if num_items_in_batch is not None and getattr(self.args, "average_tokens_across_devices", False):
            loss = loss * self.accelerator.num_processes  # DDP averages over processes; N counts all of them
        return (loss, outputs) if return_outputs else loss


def memft_trainer_class(trainer_cls: type) -> type:
    """``trainer_cls`` (``transformers.Trainer``, TRL's ``SFTTrainer`` …) with MemFT's loss as its
    ``compute_loss``; it takes one more keyword, ``memft_loss`` (a :class:`MemFTLoss` or a method name)."""
    return type(f"MemFT{trainer_cls.__name__}", (MemFTLossMixin, trainer_cls), {})
