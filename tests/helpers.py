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


def train_plain_peft(base, encoded, *, rank: int, alpha: int, lr: float, max_steps: int, pad_id: int, stop,
                     target_modules=("q_proj", "v_proj"), modules_to_save=None):
    """What another trainer would do: plain PEFT (default on q_proj/v_proj) with HF-style masked
    labels. Stops as soon as ``stop(summary of a scoring pass)`` holds; returns the PeftModel, or
    None when it never did within ``max_steps``."""
    from peft import LoraConfig, get_peft_model

    from memlaw.scoring import score, summarize

    torch.manual_seed(0)
    model = get_peft_model(base.model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                                                  modules_to_save=modules_to_save, lora_dropout=0.0,
                                                  task_type="CAUSAL_LM"))
    ids, mask, labels = masked_label_batch(encoded, pad_id=pad_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(max_steps):
        model.train()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        if stop(summarize(score(model, encoded, pad_id=pad_id))):
            return model
    return None
