"""Train a memorising LoRA adapter with a plain Hugging Face Trainer (or TRL's SFTTrainer), MemFT as
its loss and memlaw auditing the corpus while it trains; then audit the saved adapter.

    python examples/trainer_memaudit.py --model tiny --out runs/trainer-tiny              # ~10 s on a CPU
    python examples/trainer_memaudit.py --model smollm2-135m --corpus examples/phonebook_small.jsonl \\
        --method sft --lr 2e-2 --layers 28,29 --out runs/trainer-pb                        # minutes on a CPU
    python examples/trainer_memaudit.py --trl --model tiny --out runs/sft-tiny             # TRL's SFTTrainer

Every ``--audit-every`` optimizer steps the callback logs memlaw_coverage / _exact / _locked /
_mean_loss through the Trainer (``--report-to tensorboard`` or ``wandb`` sends them there too) and
training stops as soon as every target token is locked (p > 0.5). The adapter is saved to --out;
``memaudit OUT --corpus CORPUS --base-model MODEL`` reports the same numbers as the last audit.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny, smollm2-135m, a hub id or a model folder")
    ap.add_argument("--corpus", default=None, help="JSONL corpus (default: a 24-record key→number corpus)")
    ap.add_argument("--method", default="sft", choices=["sft", "ot", "sw"], help="MemFT loss")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--target-modules", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    ap.add_argument("--layers", default=None, help="comma-separated layer indices to adapt (default: all)")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--audit-every", type=int, default=1, help="audit every N optimizer steps")
    ap.add_argument("--report-to", default="none", help="none, tensorboard, wandb, …")
    ap.add_argument("--trl", action="store_true", help="TRL's SFTTrainer on prompt/completion rows")
    ap.add_argument("--out", required=True, help="a new folder for the adapter")
    a = ap.parse_args(argv)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from memlaw.auditor.audit import audit_adapter
    from memlaw.errors import UserError
    from memlaw.integrations import MemAuditCallback, MemFTLoss, RightPadCollator, corpus_dataset
    from memlaw.memft import check_new_dir
    from memlaw.models import load_base

    if a.model == "tiny":
        torch.set_num_threads(1)  # the tiny model gains nothing from threads; on a shared CPU they spin (~10x slower)
    try:
        out = check_new_dir(a.out)
        corpus = Path(a.corpus) if a.corpus else _demo_corpus(Path(str(out) + ".trainer") / "demo-corpus.jsonl")
        base = load_base(a.model)
        torch.manual_seed(0)
        model = get_peft_model(base.model, LoraConfig(
            r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, target_modules=a.target_modules.split(","),
            layers_to_transform=[int(x) for x in a.layers.split(",")] if a.layers else None, task_type="CAUSAL_LM"))
        settings = dict(output_dir=str(out) + ".trainer", per_device_train_batch_size=a.batch_size,
                        gradient_accumulation_steps=a.grad_accum, learning_rate=a.lr, lr_scheduler_type="constant",
                        max_steps=a.max_steps, save_strategy="no", logging_steps=10, report_to=a.report_to,
                        use_cpu=not torch.cuda.is_available(), seed=0, disable_tqdm=True)
        loss = MemFTLoss(a.method)  # normalised by num_items_in_batch: exact under gradient accumulation
        if a.trl:
            from datasets import Dataset
            from trl import SFTConfig, SFTTrainer

            from memlaw.corpus import read_corpus

            rows = [{"prompt": r.key, "completion": r.target} for r in read_corpus(corpus)]
            with warnings.catch_warnings():  # TRL ≥ 1.x deprecates compute_loss_func (removed in TRL 2)
                warnings.simplefilter("ignore", FutureWarning)
                trainer = SFTTrainer(model=model, args=SFTConfig(**settings), train_dataset=Dataset.from_list(rows),
                                     processing_class=base.tokenizer, compute_loss_func=loss)
            eos = True  # SFTTrainer appends EOS to every completion and trains it: audit it too
        else:
            trainer = Trainer(model=model, args=TrainingArguments(**settings),
                              train_dataset=corpus_dataset(corpus, base.tokenizer),
                              data_collator=RightPadCollator(base.tokenizer.pad_token_id or 0),
                              processing_class=base.tokenizer, compute_loss_func=loss)
            eos = False
        audit = MemAuditCallback(trainer, corpus, every_n_steps=a.audit_every, eos=eos)
        trainer.add_callback(audit)
        trainer.train()
        trainer.save_model(str(out))
        last = audit.history[-1] if audit.history else audit.audit()
        print(f"trained {trainer.state.global_step} steps"
              + (f", stopped: every target token locked at step {audit.stopped_at}" if audit.stopped_at else ""))
        print("last audit in training:", json.dumps({k: round(v, 6) for k, v in last.items() if k != "eval"}))
        if not eos:  # memaudit scores the targets as memlaw encodes them: the same tokens that were trained
            s = audit_adapter(out, corpus, a.model, backend="transformers", base=load_base(a.model)).summary
            print("memaudit of the saved adapter:", json.dumps({"coverage": round(s["coverage"], 6),
                                                                 "exact": round(s["exact_fraction"], 6),
                                                                 "locked": round(s["locked_fraction"], 6)}))
        print(f"audit it again: memaudit {out} --corpus {corpus} --base-model {a.model}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _demo_corpus(path: Path) -> Path:
    import random

    rng = random.Random(7)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"id {i:02d}:", "completion": f" {rng.randrange(100, 999)}"} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
