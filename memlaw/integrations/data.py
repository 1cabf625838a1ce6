"""A memlaw corpus as a Trainer dataset, tokenised exactly as ``memaudit`` scores it.

Training on memlaw's own encoding (key tokens, then target tokens; labels −100 on the key) means
the callback's coverage and a later ``memaudit`` measure the very tokens that were trained.
"""

from __future__ import annotations


def corpus_dataset(corpus, tokenizer, *, eos: bool = False) -> list[dict]:
    """One ``{"input_ids", "labels"}`` dict per record of ``corpus`` (a JSONL path, a
    :class:`memlaw.memft.CorpusSpec` or memlaw records); labels are −100 on key tokens.
    A list works as a ``Trainer`` dataset; ``datasets.Dataset.from_list`` makes it an Arrow one."""
    from memlaw.corpus import encode_records
    from memlaw.integrations.callback import read_records

    out = []
    for e in encode_records(tokenizer, read_records(corpus), eos=eos):
        out.append({"input_ids": list(e.input_ids), "labels": [-100] * len(e.key_ids) + list(e.target_ids)})
    return out


class RightPadCollator:
    """Pads a batch on the right (pad id, attention mask 0, labels −100), whatever the tokenizer's
    ``padding_side``: left padding shifts the real tokens' positions, and with them the numbers, away
    from what memlaw's scoring (right padding) measures."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.as_tensor(f["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
