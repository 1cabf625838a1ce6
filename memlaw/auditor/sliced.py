"""The sliced audit: a corpus of any size in bounded memory (issue #18).

The whole-corpus audit (:func:`memlaw.auditor.audit.audit`) holds every record, its token ids, its
scores and its :class:`RecordAudit` at once: ~0.15 kB a target token. This one holds a slice:

1. the corpus is read and checked as a stream before the model loads (:func:`check_corpus`);
2. every record is encoded once into a spool (:class:`EncodedSpool`: in memory up to 4 MiB, then an
   anonymous temporary file), which keeps in memory only each record's lengths and byte offset and
   what the conflict check needs (tens of bytes a record);
3. the batches are planned from the lengths exactly as :func:`memlaw.scoring.score` plans them for
   the whole corpus (:func:`memlaw.scoring.batch_plan`): a record's float32 numbers depend in the
   last bits on its batch-mates, and the same batches make the reports byte for byte the same;
4. the batches are scored a slice at a time (about ``slice_tokens`` target tokens; with the
   base-model pass for the no-effect check on the same slice), each record's verdict is written to
   a second spool (:class:`SpooledRecords`: one JSON line, what the JSON report writes), the heap
   is trimmed (glibc's malloc_trim), and only running tallies stay: the
   summary's counts and per-record sums, the effect check's, the worst records for the terminal
   and the Markdown report, the records the capped HTML page shows.

The result (:class:`StreamedAuditResult`) is an :class:`AuditResult` whose ``records`` read the
spool back one at a time, in corpus order, so every report streams from it with the code the
whole-corpus result uses. What still grows with the corpus: ~40 bytes a record (lengths, offsets,
one digest per key for conflicts, the per-record sums), and, when the planner's base-loss cache
supplies the base model's scores, those scores (8 bytes a token).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import tempfile
import time
import weakref
from array import array
from contextlib import contextmanager
from collections.abc import Sequence as SequenceABC
from dataclasses import replace

import numpy as np

from memlaw.auditor.audit import (DISPLAY_MAX_TOKENS, AuditResult, DisplaySelection, EffectTally, RecordAudit,
                                  TokenDetail, TokenTexts, _badness, cached_base_logprobs, no_effect_warning,
                                  label_with_inputs, record_audit)
from memlaw.errors import UserError

#: target tokens scored per slice (~150 bytes each while in hand: ids, scores, verdicts); the batches are
#: the whole corpus's whatever the slice, so a smaller slice costs little speed
DEFAULT_SLICE_TOKENS = 16_384
#: worst records kept for the terminal and the Markdown report (memaudit shows 5 and 10 by default)
DEFAULT_KEEP_WORST = 64
_ENCODE_CHUNK = 1024  # records per tokenizer call, as encode_records batches them


def check_corpus(spec) -> None:
    """Read every record of ``spec`` (a :class:`~memlaw.memft.CorpusSpec`) and keep none: the same
    errors as reading it whole, before any model is loaded."""
    from memlaw.corpus import iter_corpus

    for _ in iter_corpus(spec.path, fmt=spec.fmt, key_field=spec.key_field, target_field=spec.target_field):
        pass


def _digest(value) -> int:
    return int.from_bytes(hashlib.blake2b(repr(value).encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little")


class _ConflictTally:
    """:func:`memlaw.corpus.find_conflicts` in two steps: while the records stream by, one digest per
    key and of its first target (a key whose later target differs is a candidate); then only the
    candidates' records are grouped, exactly as find_conflicts groups them."""

    def __init__(self):
        self.first: dict[int, int] = {}
        self.candidates: set[int] = set()

    def add(self, rec) -> None:
        from memlaw.corpus import _compare_key, _is_empty_key

        if _is_empty_key(rec):
            return
        k, t = _digest(_compare_key(rec)), _digest(rec.target)
        if self.first.setdefault(k, t) != t:
            self.candidates.add(k)

    def conflicts(self, records) -> list:
        from memlaw.corpus import _compare_key, _is_empty_key, find_conflicts

        if not self.candidates:
            return []
        keep = [r for r in records if not _is_empty_key(r) and _digest(_compare_key(r)) in self.candidates]
        return find_conflicts(keep)


#: tokenizers' default BPE word-cache capacity, restored after encoding
_WORD_CACHE_DEFAULT = 10_000
_WORD_CACHE_WHILE_SPOOLING = 1_024


@contextmanager
def _small_word_cache(tokenizer):
    """Encode with a small fast-tokenizer word cache. Its memory grew with the corpus (measured on
    tiny, whose byte-level tokenizer has no split regex and caches whole records: +55 MiB at a
    million target tokens, flat with this), and emptying it (``_clear_cache``) did not help. The
    cache changes no token id."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    resize = getattr(model, "_resize_cache", None)
    if callable(resize):
        resize(_WORD_CACHE_WHILE_SPOOLING)
    try:
        yield
    finally:
        if callable(resize):
            resize(_WORD_CACHE_DEFAULT)


#: a spool stays in memory up to this size, then moves to an anonymous file in the temporary folder
SPOOL_IN_MEMORY = 4 << 20


def _spool_file(in_memory: int = SPOOL_IN_MEMORY):
    """A binary file in memory until it outgrows ``in_memory`` bytes (≥ 1), then on disk (anonymous:
    gone when closed, or when the process ends however it ends)."""
    return tempfile.SpooledTemporaryFile(max_size=max(1, in_memory), mode="w+b", prefix="memlaw-audit-")


@contextmanager
def _writing_spool():
    """A full temporary folder is the user's to fix, not a traceback."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write the audit's temporary spool file in {tempfile.gettempdir()}: "
                        f"{e.strerror or type(e).__name__}",
                        fix="free space there, or set TMPDIR to a folder with room (~110 bytes a target token)") from None


class EncodedSpool(SequenceABC):
    """Every record of a corpus with its encoding (:class:`memlaw.corpus.Encoded`), in a spool file;
    in memory only each record's byte offset, total and target lengths, the largest token id and
    the conflict tally. Iterating yields the encodings in corpus order; :meth:`load` reads chosen
    records back."""

    def __init__(self):
        self.file = _spool_file()
        self.offsets = array("q")
        self.lengths = array("i")  # key + target tokens
        self.n_target = array("i")
        self.top_id = 0
        self.conflict_tally = _ConflictTally()
        self._cleanup = weakref.finalize(self, self.file.close)

    @classmethod
    def build(cls, spec, tokenizer, *, eos: bool = False) -> "EncodedSpool":
        """Read ``spec`` and encode it (:func:`memlaw.corpus.encode_records`, same rule and errors)
        ``_ENCODE_CHUNK`` records at a time into a new spool."""
        from memlaw.corpus import encode_records, iter_corpus

        spool = cls()
        f = spool.file
        try:
            with _small_word_cache(tokenizer):
                chunk: list = []

                def flush():
                    for e in encode_records(tokenizer, chunk, eos=eos):  # e.index: its place in the chunk
                        rec = chunk[e.index]
                        spool.offsets.append(f.tell())
                        with _writing_spool():
                            pickle.dump((rec, np.asarray(e.key_ids, np.int64), np.asarray(e.target_ids, np.int64)),
                                        f, protocol=pickle.HIGHEST_PROTOCOL)
                        spool.lengths.append(len(e.key_ids) + len(e.target_ids))
                        spool.n_target.append(len(e.target_ids))
                        spool.top_id = max(spool.top_id, max(e.input_ids))
                        spool.conflict_tally.add(rec)
                    chunk.clear()

                for rec in iter_corpus(spec.path, fmt=spec.fmt, key_field=spec.key_field,
                                       target_field=spec.target_field):
                    chunk.append(rec)
                    if len(chunk) == _ENCODE_CHUNK:
                        flush()
                if chunk:
                    flush()
                with _writing_spool():
                    f.flush()
        except BaseException:
            spool.close()
            raise
        return spool

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def target_tokens(self) -> int:
        return int(sum(self.n_target))

    def _read(self, i: int):
        from memlaw.corpus import Encoded

        self.file.seek(self.offsets[i])
        rec, key_ids, target_ids = pickle.load(self.file)  # our own spool, written by build()
        return rec, Encoded(key_ids=tuple(key_ids.tolist()), target_ids=tuple(target_ids.tolist()), index=i)

    def load(self, indices) -> list:
        """(record, encoding) of each index, in the order given."""
        return [self._read(i) for i in indices]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [e for _, e in self.load(range(*i.indices(len(self))))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._read(i % len(self))[1]

    def __iter__(self):
        for i in range(len(self)):
            yield self._read(i)[1]

    def records(self):
        """The corpus records, in order, one at a time."""
        for i in range(len(self)):
            yield self._read(i)[0]

    def close(self) -> None:
        self._cleanup()


class SpooledRecords(SequenceABC):
    """An audit's :class:`RecordAudit` list kept in a spool file: one JSON line per record (exactly
    the line the JSON report writes for it), read back on demand in corpus order."""

    def __init__(self, n: int, in_memory: int = SPOOL_IN_MEMORY):
        self.file = _spool_file(in_memory)
        self.offsets = np.full(n, -1, np.int64)  # record index → byte offset of its line
        self._cleanup = weakref.finalize(self, self.file.close)

    def write(self, r: RecordAudit) -> None:
        self.offsets[r.index] = self.file.tell()
        line = json.dumps(r.to_dict(True), ensure_ascii=False, allow_nan=False) + "\n"
        with _writing_spool():
            self.file.write(line.encode("utf-8", "surrogatepass"))

    def finish(self) -> None:
        with _writing_spool():
            self.file.flush()
        if (self.offsets < 0).any():
            raise RuntimeError("a record was never written to the audit spool")

    def __len__(self) -> int:
        return len(self.offsets)

    def _line(self, i: int) -> str:
        self.file.seek(int(self.offsets[i]))
        return self.file.readline()[:-1].decode("utf-8", "surrogatepass")

    def lines(self):
        """Each record's JSON line (without the newline), in corpus order."""
        for i in range(len(self)):
            yield self._line(i)

    def __iter__(self):
        for line in self.lines():
            yield RecordAudit(**json.loads(line))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return RecordAudit(**json.loads(self._line(i % len(self))))

    def close(self) -> None:
        self._cleanup()

    def __repr__(self) -> str:
        return f"SpooledRecords({len(self)} records)"


class StreamedAuditResult(AuditResult):
    """An :class:`AuditResult` whose records live in a spool file (:class:`SpooledRecords`); it
    answers the worst records, the not-locked counts and the HTML selection from tallies kept while
    the records were written, the rest by reading the spool. :meth:`close` frees the spool (also
    done when the result is garbage collected)."""

    def setup(self, worst: list[RecordAudit], keep_worst: int, display: list[RecordAudit],
              display_cap: int, not_exact: int) -> "StreamedAuditResult":
        self._worst, self._keep_worst = sorted(worst, key=_badness), keep_worst
        self._display, self._display_cap = display, display_cap
        self._not_exact = not_exact
        return self

    def not_locked_records(self) -> int:
        return self.summary["records"] - self.summary["locked_records"]

    def not_exact_records(self) -> int:
        return self._not_exact

    def worst(self, n: int = 5, failing_only: bool = True) -> list[RecordAudit]:
        if failing_only and n <= self._keep_worst:
            return self._worst[: max(0, n)]
        return super().worst(n, failing_only)

    def for_display(self, max_tokens: int = None) -> AuditResult:
        cap = DISPLAY_MAX_TOKENS if max_tokens is None else max_tokens
        if cap != self._display_cap:
            return super().for_display(max_tokens)
        total = self.summary["target_tokens"]
        return self if total <= cap else self._displayed(list(self._display), total)

    def close(self) -> None:
        self.records.close()


def _detached(r: RecordAudit) -> RecordAudit:
    """``r`` with its token arrays copied: a kept record must not pin its whole slice's arrays."""
    t = r.tokens
    if not isinstance(t, TokenDetail):
        return r
    return replace(r, tokens=TokenDetail(np.array(t.ids), np.array(t.p), np.array(t.argmax), np.array(t.margin),
                                         t.texts))


class _WorstTally:
    """The ``k`` worst records that are not locked (:meth:`AuditResult.worst`), records arriving in
    any order; trimmed whenever it holds 2k."""

    def __init__(self, k: int):
        self.k, self.items, self.cut = k, [], None

    def add(self, r: RecordAudit) -> None:
        if r.locked or self.k <= 0:
            return
        key = _badness(r)
        if self.cut is not None and key > self.cut:
            return
        self.items.append((key, _detached(r)))
        if len(self.items) >= 2 * self.k:
            self.items.sort(key=lambda kr: kr[0])
            del self.items[self.k:]
            self.cut = self.items[-1][0]

    def records(self) -> list[RecordAudit]:
        return [r for _, r in sorted(self.items, key=lambda kr: kr[0])[: self.k]]


def _slices(order, cuts: list[int], n_target, slice_tokens: int):
    """The positions of consecutive batches (``order[cuts[k]:cuts[k+1]]``, from
    :func:`memlaw.scoring.batch_cuts`) holding about ``slice_tokens`` target tokens, at least one
    batch. Each slice starts and ends on a batch boundary, so scoring a slice (which re-plans its
    records by length) makes exactly these batches."""
    n_target = np.asarray(n_target, dtype=np.int64)
    first, tokens = 0, 0
    for k in range(1, len(cuts)):
        tokens += int(n_target[order[cuts[k - 1]:cuts[k]]].sum())
        if tokens >= slice_tokens or k == len(cuts) - 1:
            yield order[cuts[first]:cuts[k]].tolist()
            first, tokens = k, 0


def audit_inputs_sliced(inputs, *, progress=False, effect_check: bool = True,
                        slice_tokens: int = DEFAULT_SLICE_TOKENS, keep_worst: int = DEFAULT_KEEP_WORST,
                        backend_note: str | None = None, display_cap: int = DISPLAY_MAX_TOKENS,
                        spool_in_memory: int = SPOOL_IN_MEMORY, precision: str = "float32") -> StreamedAuditResult:
    """Audit what :func:`memlaw.auditor.audit.load_adapter_inputs` loaded with ``stream_corpus``
    (``inputs.encoded`` an :class:`EncodedSpool`), with the transformers backend, a slice at a time.
    Same summary, warnings, effect check and records as :func:`memlaw.auditor.audit.audit_inputs`.
    ``keep_worst``: worst records kept for :meth:`~AuditResult.worst`; ``display_cap``: the target
    tokens of the records kept for :meth:`~AuditResult.for_display` (beyond these, a call reads
    the spool); ``spool_in_memory``: bytes of records held in memory before the spool goes to disk;
    ``precision``: the adapter pass's (:func:`memlaw.scoring.score`; each slice decides its own
    float32 re-checks), the base-model pass is float32."""
    from memlaw.backends import audit_prefix, precision_note
    from memlaw.scoring import _progress, batch_cuts, check_context, score

    spool: EncodedSpool = inputs.encoded
    n = len(spool)
    if not n:
        raise UserError("the corpus has no records to audit")
    if slice_tokens < 1:
        raise ValueError("slice_tokens must be ≥ 1")
    model, tok, pad_id = inputs.model, inputs.base.tokenizer, inputs.pad_id
    check_context(model, spool)  # the first record too long, in corpus order, as score() would name it
    cached = cached_base_logprobs(inputs) if effect_check else None
    need_base = effect_check and cached is None
    base_lp = cached[0] if cached is not None else {}
    prefix = audit_prefix(inputs)  # the slice's two passes share it; dropped from memory after each slice

    out = SpooledRecords(n, spool_in_memory)
    try:
        texts = TokenTexts(tok)
        worst, display = _WorstTally(keep_worst), DisplaySelection(display_cap)
        effect = EffectTally(n if effect_check else 0)
        loss_sums = np.zeros(n, np.float64)  # per record, summed in corpus order at the end (as summarize)
        n_tokens = locked_tokens = exact_records = locked_records = 0
        seconds = 0.0
        passes = {"precision": "float32", "records": 0, "rechecked_records": 0, "gave_up": False}
        order, cuts = batch_cuts(spool.lengths)  # score()'s defaults: the whole-corpus audit's batches
        total = spool.target_tokens * (2 if need_base else 1)
        with _progress(progress, "auditing", total) as advance:
            for positions in _slices(order, cuts, spool.n_target, slice_tokens):
                pairs = spool.load(positions)
                encoded = [e for _, e in pairs]
                start = time.perf_counter()
                info: dict = {}
                # once a slice gave up on bf16 (most records near a boundary), the rest goes straight to float32
                scores = score(model, encoded, pad_id=pad_id, progress=_advancing(advance), info=info,
                               precision="float32" if passes["gave_up"] else precision, prefix=prefix)
                seconds += time.perf_counter() - start
                for k in ("records", "rechecked_records"):
                    passes[k] += info[k]
                passes["gave_up"] = passes["gave_up"] or info["gave_up"]
                if info["precision"] == "bf16":  # as resolved ("auto"), by any slice
                    passes["precision"] = "bf16"
                if need_base:
                    with model.disable_adapter():
                        for s in score(model, encoded, pad_id=pad_id, progress=_advancing(advance),
                                       prefix=prefix):
                            base_lp[s.index] = s.logprob
                for (rec, e), s in zip(pairs, scores):
                    r = record_audit(s, e, rec, tok, texts)
                    out.write(r)
                    worst.add(r)
                    display.add(r)
                    loss_sums[e.index] = float(s.loss.sum())
                    n_tokens += len(s.target_ids)
                    locked_tokens += int(s.locked_mask.sum())
                    exact_records += s.exact
                    locked_records += s.locked
                    if effect_check:
                        effect.add(s, base_lp.pop(e.index, None) if need_base else base_lp.get(e.index))
                # records still kept from this slice get their own arrays, so the slice's can go
                display.heap = [type(h)(h.key, _detached(h.record)) for h in display.heap]
                del pairs, encoded, scores
                if prefix is not None:
                    prefix.forget()
                _release_freed_memory()
        out.finish()
        total_loss = sum(float(x) for x in loss_sums)  # summarize's sum, in corpus order
        summary = {
            "records": n, "target_tokens": n_tokens,
            "coverage": locked_tokens / n_tokens if n_tokens else 0.0,
            "exact_records": exact_records, "locked_records": locked_records,
            "mean_loss": total_loss / n_tokens if n_tokens else 0.0,
            "locked_tokens": locked_tokens,
            "exact_fraction": exact_records / n, "locked_fraction": locked_records / n,
        }
        conflicts = [{"key": c.key, "wheres": c.wheres, "targets": c.targets}
                     for c in spool.conflict_tally.conflicts(spool.records())]
        warnings = []
        if conflicts:
            warnings.append(f"{len(conflicts)} key(s) have several different targets: no adapter can lock all "
                            "of them (see 'conflicts')")
        if effect_check:
            source = cached[1] if cached is not None else "a base-model scoring pass (transformers)"
            summary["effect"] = effect.result(source)
            if summary["effect"]["no_effect"]:
                warnings.append(no_effect_warning(summary["effect"]))
        ident = dict(getattr(inputs.base, "identity", {}) or {})
        ident.setdefault("name", getattr(inputs.base, "name", None))
        result = StreamedAuditResult(summary=summary, records=out, base_model=ident, conflicts=conflicts,
                                     warnings=list(inputs.warnings) + warnings, seconds=seconds,
                                     backend="transformers",
                                     backend_note="; ".join(n for n in (backend_note, precision_note(passes)) if n)
                                     or None)
        result.setup(worst.records(), keep_worst, display.records(), display_cap,
                     n - exact_records)
    except BaseException:
        out.close()
        raise
    label_with_inputs(result, inputs)
    return result


def _release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS between slices (glibc's malloc_trim): each slice
    frees what it allocated, but in a heap fragmented by what stays (the kept records, the spools'
    offsets) resident memory crept up with the corpus. Elsewhere, nothing."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _advancing(advance):
    """A score() progress callback that moves the audit's one bar by what each slice scored."""
    last = [0]

    def callback(stage, done, total, info):
        advance(done - last[0])
        last[0] = done

    return callback


def audit_adapter_sliced(adapter_dir, corpus=None, base_model: str | None = None, *, allow_pickle: bool = False,
                         trust_remote_code: bool = False, force_base: bool = False, device: str = "cpu",
                         progress=False, base=None, backend_note: str | None = None, effect_check: bool = True,
                         slice_tokens: int = DEFAULT_SLICE_TOKENS, keep_worst: int = DEFAULT_KEEP_WORST,
                         display_cap: int = DISPLAY_MAX_TOKENS, precision: str = "float32") -> StreamedAuditResult:
    """:func:`memlaw.auditor.audit.audit_adapter` with the transformers backend, in slices: the
    same checks, result and reports, whatever the corpus size, in bounded memory."""
    from memlaw.auditor.audit import load_adapter_inputs

    inputs = load_adapter_inputs(adapter_dir, corpus, base_model, allow_pickle=allow_pickle,
                                 trust_remote_code=trust_remote_code, force_base=force_base, device=device,
                                 base=base, stream_corpus=True)
    try:
        return audit_inputs_sliced(inputs, progress=progress, effect_check=effect_check, slice_tokens=slice_tokens,
                                   keep_worst=keep_worst, backend_note=backend_note, display_cap=display_cap,
                                   precision=precision)
    finally:
        inputs.encoded.close()
