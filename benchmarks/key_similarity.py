"""How alike are a corpus's keys to the adapted layers? A post-hoc look behind the key swap of
docs/results.md §2 ("The kind of key"), not a predictor: for each record, the base model's hidden
state entering the first adapted layer, averaged over the key's tokens (BOS left out), centred over
the corpus; then the mean over records of the largest cosine to another record's.

    python benchmarks/key_similarity.py runs/heldout/pb_digits.jsonl runs/fresh4/pb_numkeys.jsonl …
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from memlaw.card import load_card
from memlaw.corpus import encode_records
from memlaw.memft import CorpusSpec
from memlaw.models import load_base
from memlaw.planner.estimate import resolve_card


def key_states(model, encoded, layer: int) -> np.ndarray:
    """(records, hidden) mean hidden state over each key's tokens after BOS, entering ``layer``."""
    out = []
    with torch.no_grad():
        for e in encoded:
            hidden = model(torch.tensor([list(e.key_ids)]), output_hidden_states=True).hidden_states[layer]
            out.append(hidden[0, 1:].float().mean(0).numpy())
    return np.stack(out)


def nearest_cosine(states: np.ndarray) -> float:
    x = states - states.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -1.0)
    return float(sim.max(1).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpora", nargs="+")
    ap.add_argument("--law", default=None, help="the card whose model and first adapted layer to use (default: shipped)")
    args = ap.parse_args()
    card = load_card(resolve_card(args.law, "smollm2-135m")[1])
    layer = min(card.template["layers"])  # hidden_states[k] is the input of layer k
    base = load_base(card.base_model["name"])
    print(f"| corpus | records | mean largest cosine to another key (layer {layer} input) |\n| --- | --- | --- |")
    for corpus in args.corpora:
        encoded = encode_records(base.tokenizer, CorpusSpec(corpus).read())
        print(f"| {Path(corpus).stem} | {len(encoded)} | {nearest_cosine(key_states(base.model, encoded, layer)):.3f} |")


if __name__ == "__main__":
    main()
