"""Small helpers shared by test modules (importable: pyproject puts tests/ on the path)."""

import torch


def masked_label_batch(encoded, pad_id: int):
    """What an ordinary HF/PEFT trainer feeds the model: right-padded ids, attention mask, and
    labels that are -100 everywhere but the target tokens."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[i, :n], mask[i, :n] = torch.tensor(e.input_ids), 1
        labels[i, len(e.key_ids):n] = torch.tensor(e.target_ids)
    return ids, mask, labels
