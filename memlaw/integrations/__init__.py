"""memlaw inside a Hugging Face training loop (``transformers.Trainer``, TRL's ``SFTTrainer``).

* :class:`MemAuditCallback` — audits a corpus every N steps and/or at evaluation, logs coverage,
  exact and locked shares through the Trainer (so ``report_to`` gets them), and stops training
  once every target token is locked.
* :class:`MemFTLoss` — MemFT (``sft``, ``ot``, ``sw``) as a ``compute_loss_func``, normalised by the
  Trainer's ``num_items_in_batch`` so gradient accumulation gives the gradient of the full batch.
* :func:`corpus_dataset`, :class:`RightPadCollator` — a memlaw corpus as a Trainer dataset,
  tokenised as ``memaudit`` scores it.

Needs ``transformers`` (a memlaw dependency); TRL only if you use ``SFTTrainer``.
"""

from memlaw.integrations.callback import MemAuditCallback
from memlaw.integrations.data import RightPadCollator, corpus_dataset
from memlaw.integrations.loss import MemFTLoss, memft_loss

__all__ = ["MemAuditCallback", "MemFTLoss", "memft_loss", "corpus_dataset", "RightPadCollator"]
