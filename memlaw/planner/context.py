"""The base model's loss on each target token with other records of the corpus in its context.

The ``context`` coverage predictor (:mod:`memlaw.planner.coverage`) prices a token at what a
learner of the corpus's *kind* already predicts — its format, its word list, the rest of a word
it has seen start — without the record's own fact. The base model, shown other records of the
corpus before the one scored, is that learner.

At about twice the cost of the base pass: the records, in a fixed shuffled order, are scored K at
a time after the K records before them in that order, so each sees K … 2K−1 other records (fewer
where the model's context window is short) and never itself. The scoring goes through the same
backend seam as the base pass (:meth:`memlaw.backends.ScoringBackend.score_base`).
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

CONTEXT_RECORDS = 8  # K: records scored together, and records before them
CONTEXT_SEED = 0


def context_windows(lengths: Sequence[int], k: int = CONTEXT_RECORDS, seed: int = CONTEXT_SEED,
                    max_tokens: int = 2048) -> list[tuple[list[int], list[int]]]:
    """[(context records, scored records)] over records of ``lengths`` tokens each (in the order
    they go into the sequence). Every record that fits in ``max_tokens`` − 1 (one token for BOS)
    is scored exactly once; a record is never in its own window's context; a window's records
    fit ``max_tokens``. Records too long to fit are in no window."""
    n = len(lengths)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    fits = [i for i in order if lengths[i] + 1 <= max_tokens]
    windows = []
    pos = 0
    while pos < len(fits):
        scored, size = [], 1
        while pos < len(fits) and len(scored) < k:
            length = lengths[fits[pos]]
            if scored and size + length > max_tokens // 2:
                break
            scored.append(fits[pos])
            size += length
            pos += 1
        context, room = [], max_tokens - size
        start = pos - len(scored)
        for step in range(1, min(k, len(fits) - len(scored)) + 1):
            j = fits[(start - step) % len(fits)]
            if lengths[j] > room:
                break
            context.insert(0, j)
            room -= lengths[j]
        windows.append((context, scored))
    return windows


def context_chunks(encoded: Sequence, *, bos_id: int | None, separator: Sequence[int], max_tokens: int = 2048,
                   first_index: int = 0) -> tuple[list, list]:
    """(chunks, spans): one record per window for a scoring backend — everything before the scored
    records as its key, they themselves as its target — and where each scored record's target
    tokens sit in it. ``bos_id``: the tokenizer's BOS where it opens every record (taken off each
    record, put once before the window), else None. Chunk indices start at ``first_index``."""
    from memlaw.corpus import Encoded

    def body(e) -> list[int]:
        key = list(e.key_ids)
        if bos_id is not None and key[:1] == [bos_id]:
            key = key[1:]  # one BOS opens the whole window
        return key + list(e.target_ids) + list(separator)

    bodies = [body(e) for e in encoded]
    prefix = [bos_id] if bos_id is not None else []
    chunks, spans = [], []
    for w, (context, scored) in enumerate(context_windows([len(b) for b in bodies], max_tokens=max_tokens)):
        seq = list(prefix)
        for j in context:
            seq += bodies[j]
        first = max(1, len(seq))  # everything before the scored records is context only
        where = []
        for i in scored:
            where.append((i, len(seq) + len(bodies[i]) - len(separator) - encoded[i].n_target))
            seq += bodies[i]
        chunks.append(Encoded(key_ids=tuple(seq[:first]), target_ids=tuple(seq[first:]), index=first_index + w))
        spans.append((first, where))
    return chunks, spans


def read_context_losses(chunk_scores: Sequence, spans: Sequence, encoded: Sequence,
                        base_losses: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per record, its target tokens' −ln p from the chunks' scores (corpus order). A record no
    window holds keeps its ``base_losses``; so does a token with nothing before it."""
    out = [np.asarray(b, dtype=np.float64).copy() for b in base_losses]
    for s, (first, where) in zip(chunk_scores, spans):
        logprob = np.asarray(s.logprob, dtype=np.float64)  # logprob[t − first] is token t's
        for i, start in where:
            n = encoded[i].n_target
            lo = max(start, first)
            out[i][lo - start:] = -logprob[lo - first:start + n - first]
    return out


def context_losses(backend, model, encoded: Sequence, base_losses: Sequence[np.ndarray], *, bos_id: int | None,
                   separator: Sequence[int], max_tokens: int = 2048, pad_id: int = 0, progress=False,
                   model_name: str | None = None) -> list[np.ndarray]:
    """:func:`context_chunks` scored by ``backend`` (:meth:`~memlaw.backends.ScoringBackend.score_base`)
    and read back per record."""
    chunks, spans = context_chunks(encoded, bos_id=bos_id, separator=separator, max_tokens=max_tokens)
    if not chunks:
        return [np.asarray(b, dtype=np.float64).copy() for b in base_losses]
    scores = backend.score_base(model, chunks, pad_id=pad_id, progress=progress, model_name=model_name)
    return read_context_losses(scores, spans, encoded, base_losses)
