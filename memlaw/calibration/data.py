"""Calibration data: random-token records (content-free) or slices of a user's corpus."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from memlaw.errors import ParameterError, UserError
from memlaw.calibration.spec import SweepSpec

FRESH_SEED_OFFSET = 1_000_003  # held-out random records: a data seed no sweep uses for training

# ---------------------------------------------------------------------------------------------
# data


def special_ids(tokenizer) -> set[int]:
    ids = set(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []))
    ids |= set(int(i) for i in (getattr(tokenizer, "added_tokens_decoder", None) or {}))
    return ids


def token_pool(tokenizer, model) -> np.ndarray:
    """The token ids random data is drawn from: the tokenizer's vocabulary minus special and added
    tokens, within the model's embedding size."""
    vocab = len(tokenizer)
    cfg_vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if cfg_vocab:
        vocab = min(vocab, int(cfg_vocab))
    skip = special_ids(tokenizer)
    pool = np.array([i for i in range(vocab) if i not in skip], dtype=np.int64)
    if len(pool) < 2:
        raise UserError("the tokenizer has fewer than 2 non-special tokens to draw random data from")
    return pool


def random_records(tokenizer, pool: np.ndarray, length: int, chunk: int, seed: int) -> list:
    """Content-free records: ``length`` target tokens drawn uniformly from ``pool`` (seeded by
    (seed, length)), ⌈length/chunk⌉ records, key = [bos or eos] + a distinct tag (see module doc)."""
    from memlaw.corpus import Encoded

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise UserError("the tokenizer has neither a BOS nor an EOS token to start random records from")
    rng = np.random.default_rng([int(seed), int(length)])
    ids = pool[rng.integers(0, len(pool), size=length)]
    n_rec = math.ceil(length / chunk)
    perm = pool[rng.permutation(len(pool))]
    digits = max(1, math.ceil(math.log(n_rec) / math.log(len(pool)))) if n_rec > 1 else 1
    out = []
    for j in range(n_rec):
        tag, x = [], j
        for _ in range(digits):
            tag.append(int(perm[x % len(pool)]))
            x //= len(pool)
        target = tuple(int(t) for t in ids[j * chunk:(j + 1) * chunk])
        out.append(Encoded(key_ids=(int(start), *tag), target_ids=target, index=j))
    return out


def corpus_slice(encoded: Sequence, length: int) -> list:
    """Records in file order until ``length`` target tokens, the last one truncated."""
    from memlaw.corpus import Encoded

    out, need = [], length
    for e in encoded:
        if need <= 0:
            break
        t = e.target_ids[:need]
        out.append(Encoded(key_ids=e.key_ids, target_ids=t, index=len(out)))
        need -= len(t)
    return out


class SweepData:
    """The records of each length, built once."""

    def __init__(self, spec: SweepSpec, base):
        self.spec, self.base = spec, base
        self._pool = None
        self._encoded = None
        if spec.data is not None:
            from memlaw.corpus import encode_records

            self._encoded = encode_records(base.tokenizer, spec.data.read())
            total = sum(e.n_target for e in self._encoded)
            if total < max(spec.lengths):
                raise ParameterError("lengths", f"{spec.data.path}: the corpus holds {total} target tokens, fewer "
                                                f"than the longest {{name}} ({max(spec.lengths)})",
                                     fix=f"pass {{name}} up to {total}, or a larger corpus")
        else:
            self._pool = token_pool(base.tokenizer, base.model)

    def describe(self) -> dict:
        s = self.spec
        if s.data is None:
            return {"kind": "random", "chunk": s.chunk, "seed": s.data_seed, "pool_size": int(len(self._pool))}
        d = s.data.to_dict()
        return {"kind": "corpus", "name": Path(s.data.path).name, "sha256": d["sha256"], "fmt": d["fmt"],
                "key_field": d["key_field"], "target_field": d["target_field"]}

    def kind(self) -> str:
        return "random" if self.spec.data is None else f"corpus:{Path(self.spec.data.path).name}"

    def loss_source(self) -> float | None:
        """The entropy of the data source (nats/token) when known: ln N for N equally likely tokens."""
        return math.log(len(self._pool)) if self._pool is not None else None

    def records(self, length: int) -> list:
        if self._encoded is not None:
            return corpus_slice(self._encoded, length)
        return random_records(self.base.tokenizer, self._pool, length, self.spec.chunk, self.spec.data_seed)

    def fresh_records(self, length: int) -> list | None:
        """Held-out records of the same kind (random data: another seed); None for a corpus."""
        if self._encoded is not None:
            return None
        return random_records(self.base.tokenizer, self._pool, length, self.spec.chunk,
                              self.spec.data_seed + FRESH_SEED_OFFSET)
