"""memlaw inside a Hugging Face training loop (``transformers.Trainer``, TRL's ``SFTTrainer``).

* :class:`MemAuditCallback` — audits a corpus every N steps and/or at evaluation, logs coverage,
  exact and locked shares through the Trainer (so ``report_to`` gets them), and stops training
  once every target token is locked.
* :class:`MemFTLoss` — MemFT (``sft``, ``ot``, ``sw``) as a ``compute_loss_func``, normalised by the
  Trainer's ``num_items_in_batch`` so gradient accumulation gives the gradient of the full batch;
  :func:`memft_trainer_class` / :class:`MemFTLossMixin` — the same loss as a ``compute_loss``
  override, for TRL's ``SFTTrainer``, which deprecates ``compute_loss_func``.
* :func:`corpus_dataset`, :class:`RightPadCollator` — a memlaw corpus as a Trainer dataset,
  tokenised as ``memaudit`` scores it.

Needs ``transformers`` (a memlaw dependency); TRL only if you use ``SFTTrainer``.
"""

from memlaw.integrations.callback import MemAuditCallback
from memlaw.integrations.data import RightPadCollator, corpus_dataset
from memlaw.integrations.loss import MemFTLoss, MemFTLossMixin, memft_loss, memft_trainer_class

__all__ = ["MemAuditCallback", "MemFTLoss", "MemFTLossMixin", "memft_loss", "memft_trainer_class", "corpus_dataset",
           "RightPadCollator"]
