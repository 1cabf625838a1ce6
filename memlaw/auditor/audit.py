"""The audit: does this adapter really hold its corpus?

Every target token of every record is scored under teacher forcing (:func:`memlaw.scoring.score`),
once; from that single pass come the per-record verdicts DESIGN.md defines (exact, locked, anchor,
failing spans, the stubborn tokens below p = 0.5) and the summary (records, target tokens,
coverage, exact and locked records, mean loss). A :class:`Gate` turns the summary into pass/fail.

Two entry points, scikit-learn style:

* :func:`audit` — a model you already hold (a PeftModel, or any causal LM), its tokenizer's
  :class:`~memlaw.models.Base`, and encoded records;
* :func:`audit_adapter` — an adapter folder written by any PEFT-based trainer: the base model comes
  from ``adapter_config.json`` (``base_model_name_or_path``) or ``base_model``, the corpus from
  ``corpus`` or from the memlaw sidecar (``memlaw.json`` → ``corpus``).

A wrong base model is a clear :class:`UserError`: tensor shapes are checked before PEFT loads the
adapter (:func:`memlaw.models.attach_adapter`); when the sidecar records the base model's identity
(a hash of its weights, or of its config), a base model with another identity is refused unless
``force_base``; a tokenizer saved next to the adapter must have the base tokenizer's vocabulary;
and no token id may fall outside the model's vocabulary.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

from memlaw.backends import CHOICES, NAMES, ScoringBackend, get_backend
from memlaw.errors import ParameterError, UserError
from memlaw.sidecar import FILENAME as SIDECAR
from memlaw.sidecar import Sidecar

SCHEMA = "memlaw.audit/1"
#: the HTML heat map shows at most this many target tokens (~100 bytes of HTML each), worst records first
DISPLAY_MAX_TOKENS = 50_000


# --------------------------------------------------------------------------------------------
# results


class TokenDetail(SequenceABC):
    """A record's per-token detail as a read-only sequence of dicts (see :class:`RecordAudit`),
    built on demand from the scoring pass's arrays: a dict per token would cost ~0.5 GB per million
    target tokens, the arrays cost ~32 bytes a token. ``texts`` maps token id → text, shared by all
    records (bounded by the vocabulary)."""

    __slots__ = ("ids", "p", "argmax", "margin", "texts")

    def __init__(self, ids, p, argmax, margin, texts: dict):
        self.ids, self.p, self.argmax, self.margin, self.texts = ids, p, argmax, margin, texts

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        n = len(self.ids)
        if not -n <= j < n:
            raise IndexError(j)
        j %= n
        i, a = int(self.ids[j]), int(self.argmax[j])
        return {"id": i, "text": self.texts[i], "p": _finite(self.p[j]), "argmax": a,
                "argmax_text": self.texts[a], "margin": _finite(self.margin[j])}

    def __eq__(self, other):
        return isinstance(other, SequenceABC) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"TokenDetail({len(self)} tokens)"


@dataclass
class RecordAudit:
    """One record's verdict and its per-token detail.

    ``tokens``: one dict per target token, in order: ``id``, ``text``, ``p``, ``argmax`` (the
    greedy choice), ``argmax_text``, ``margin`` (log p(target) − max log p(other); > 0 exactly
    when the token is greedy-correct). ``spans``: failing spans (maximal runs of non-locked
    tokens), half-open ``[start, end)`` token positions with their ``text``. ``stubborn``: the
    positions of every token with p ≤ 0.5 (what MemFT-OT trains on). ``anchor``: the first
    non-greedy-correct position (where greedy decoding derails), or None when the record is exact.
    """

    index: int
    where: str
    key: str
    target: str
    exact: bool
    locked: bool
    log_likelihood: float
    mean_loss: float
    coverage: float
    anchor: int | None
    tokens: Sequence[dict]  # a list, or a TokenDetail built on demand
    spans: list[dict]
    stubborn: list[int]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def to_dict(self, tokens: bool = True) -> dict:
        """As JSON-ready data; ``tokens=False`` leaves the per-token list out (spans, stubborn
        positions and the anchor stay)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if tokens or f.name != "tokens"}
        if tokens:
            d["tokens"] = list(self.tokens)
        d["spans"] = [dict(s) for s in self.spans]
        d["stubborn"] = list(self.stubborn)
        return d


def _badness(r: RecordAudit):
    """Sort key, worst first: not exact, then not locked, then lowest coverage, lowest likelihood."""
    ll = r.log_likelihood if r.log_likelihood is not None else -math.inf
    return (r.exact, r.locked, r.coverage, ll / max(1, r.n_tokens), r.index)


class DisplaySelection:
    """The worst records (:func:`_badness` order) whose target tokens fit in ``cap``, kept while
    records arrive in any order: what :meth:`AuditResult.for_display` shows. The rule: take records
    worst first until the next one would overflow the cap (the worst one always). A record is out
    once the records worse than it plus itself exceed the cap, and only more (worse) records can
    arrive, so evicting the least bad while the kept ones overflow keeps exactly that prefix."""

    def __init__(self, cap: int):
        self.cap, self.heap, self.tokens = cap, [], 0

    def add(self, r: RecordAudit) -> None:
        import heapq

        heapq.heappush(self.heap, _LeastBadFirst(_badness(r), r))
        self.tokens += r.n_tokens
        while len(self.heap) > 1 and self.tokens > self.cap:
            self.tokens -= heapq.heappop(self.heap).record.n_tokens

    def records(self) -> list[RecordAudit]:
        return [e.record for e in self.heap]


class _LeastBadFirst:
    """Heap entry that puts the least bad record on top (heapq is a min-heap)."""

    __slots__ = ("key", "record")

    def __init__(self, key, record):
        self.key, self.record = key, record

    def __lt__(self, other) -> bool:
        return self.key > other.key


@dataclass
class AuditResult:
    """What an audit found: the summary (see :func:`memlaw.scoring.summarize`, plus
    ``locked_tokens``, ``exact_fraction`` and ``locked_fraction``), one :class:`RecordAudit` per
    record in corpus order, and where it all came from."""

    summary: dict
    records: list[RecordAudit]
    adapter: str | None = None
    base_model: dict = field(default_factory=dict)
    corpus: dict | None = None
    conflicts: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = "transformers"
    backend_note: str | None = None  # why --backend auto chose what it chose
    repair: dict | None = None  # set on the audit of a repaired adapter: where from, how, the before summary

    def for_display(self, max_tokens: int = None) -> "AuditResult":
        """This result, or when its records hold more than ``max_tokens`` target tokens (default
        :data:`DISPLAY_MAX_TOKENS`) a copy with only the worst records that fit and a warning
        saying what was left out. The summary still counts every record."""
        cap = DISPLAY_MAX_TOKENS if max_tokens is None else max_tokens
        total = sum(r.n_tokens for r in self.records)
        if total <= cap:
            return self
        keep = DisplaySelection(cap)
        for r in self.records:
            keep.add(r)
        return self._displayed(keep.records(), total)

    def _displayed(self, keep: list[RecordAudit], total: int) -> "AuditResult":
        """A plain copy holding only ``keep`` (corpus order), with the note saying so."""
        n = sum(r.n_tokens for r in keep)
        note = (f"showing the {len(keep):,} worst of {len(self.records):,} records ({n:,} of {total:,} target "
                f"tokens): a page with every token would be too large to open; the JSON report (--json) has them all")
        head = {f.name: getattr(self, f.name) for f in fields(AuditResult)}
        return AuditResult(**{**head, "records": sorted(keep, key=lambda r: r.index),
                              "warnings": [*self.warnings, note]})

    def close(self) -> None:
        """Free what the result holds outside memory (a streamed result's spool file); idempotent."""

    def passed(self, gate: "Gate") -> bool:
        """Does this audit meet every threshold of ``gate``?"""
        return gate.passed(self.summary)

    def failures(self, gate: "Gate") -> list[str]:
        """One line per threshold of ``gate`` this audit misses, naming the Gate field
        (``coverage 0.9 < 0.99 (min_coverage)``); empty when it passes."""
        return gate.check(self.summary, names={k: k for k in gate.to_dict()})

    @property
    def coverage(self) -> float:
        return float(self.summary["coverage"])

    def not_locked_records(self) -> int:
        """How many records are not locked (a streamed result knows without reading them back)."""
        return sum(1 for r in self.records if not r.locked)

    def not_exact_records(self) -> int:
        return sum(1 for r in self.records if not r.exact)

    def worst(self, n: int = 5, failing_only: bool = True) -> list[RecordAudit]:
        """The ``n`` worst records (not exact first, then not locked, then lowest coverage); with
        ``failing_only`` only records that are not locked."""
        import heapq

        pool = (r for r in self.records if not r.locked or not failing_only)
        return heapq.nsmallest(max(0, n), pool, key=_badness)  # = sorted(pool)[:n], holding n records

    def to_dict(self, tokens: bool = True) -> dict:
        """Everything, as JSON-ready data (``tokens=False``: without the per-token lists)."""
        return {**self.head_dict(), "records": [r.to_dict(tokens) for r in self.records]}

    def head_dict(self) -> dict:
        """:meth:`to_dict` without the records (a streamed report writes those one at a time)."""
        return {
            "schema": SCHEMA,
            "adapter": self.adapter,
            "base_model": self.base_model,
            "corpus": self.corpus,
            "summary": dict(self.summary),
            "conflicts": list(self.conflicts),
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
            "backend": self.backend,
            "backend_note": self.backend_note,
            "repair": self.repair,
        }


# --------------------------------------------------------------------------------------------
# the gate


@dataclass
class Gate:
    """CI thresholds on an audit summary. ``None`` leaves a threshold out.

    ``min_coverage``: locked target tokens / all target tokens; ``min_exact`` / ``min_locked``: the
    fraction of exact / locked records; these three lie in [0, 1]. ``max_mean_loss``: mean target
    token loss in nats, ≥ 0. A gate with no threshold always passes."""

    min_coverage: float | None = None
    min_exact: float | None = None
    min_locked: float | None = None
    max_mean_loss: float | None = None
    fail_on_no_effect: bool = False  # an adapter that scores like its base model fails the gate

    _OPTIONS = {"min_coverage": "--min-coverage", "min_exact": "--min-exact", "min_locked": "--min-locked",
                "max_mean_loss": "--max-mean-loss"}

    def __post_init__(self):
        for name in ("min_coverage", "min_exact", "min_locked"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
                raise ParameterError(name, f"{{name}} must be a fraction in [0, 1], got {v}",
                                     fix="e.g. 0.99 for 99%")
            setattr(self, name, float(v))
        v = self.max_mean_loss
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ParameterError("max_mean_loss", f"{{name}} must be a loss in nats ≥ 0, got {v}",
                                     fix="e.g. 0.05; ln 2 ≈ 0.693 is the lock threshold of a single token")
            self.max_mean_loss = float(v)

    @property
    def active(self) -> bool:
        return self.fail_on_no_effect or any(getattr(self, k) is not None for k in self._OPTIONS)

    def values(self, summary: dict) -> dict:
        """The measured quantity each threshold applies to."""
        n = summary.get("records") or 0
        return {
            "min_coverage": float(summary["coverage"]),
            "min_exact": summary["exact_records"] / n if n else 0.0,
            "min_locked": summary["locked_records"] / n if n else 0.0,
            "max_mean_loss": float(summary["mean_loss"]),
        }

    def check(self, summary, names: dict | None = None) -> list[str]:
        """One line per threshold that fails; empty when the gate passes. ``summary``: an audit
        summary dict, or anything with a ``summary`` (an :class:`AuditResult`, a trained adapter).
        ``names``: what each line calls its threshold (default: the memaudit options)."""
        names = names or self._OPTIONS
        got = self.values(getattr(summary, "summary", summary))
        out = []
        labels = {"min_coverage": "coverage", "min_exact": "exact records", "min_locked": "locked records"}
        for k, label in labels.items():
            want = getattr(self, k)
            if want is not None and got[k] < want:
                out.append(f"{label} {got[k]:.4f} < {want:g} ({names[k]})")
        if self.max_mean_loss is not None and got["max_mean_loss"] > self.max_mean_loss:
            out.append(f"mean loss {got['max_mean_loss']:.4f} > {self.max_mean_loss:g} ({names['max_mean_loss']})")
        if self.fail_on_no_effect:
            eff = getattr(summary, "summary", summary).get("effect")
            flag = names.get("fail_on_no_effect", "--fail-on-no-effect")
            if not isinstance(eff, dict):
                out.append(f"no base-model comparison was made ({flag} needs the effect check)")
            elif eff.get("no_effect"):
                out.append(f"adapter has no measurable effect: max |Δ log p| {eff['max_abs_dlogp']:.1e} ≤ "
                           f"{eff['tolerance']:g} over {eff['tokens']} target tokens ({flag})")
        return out

    def passed(self, summary) -> bool:
        """Does ``summary`` (a dict, or a result with a ``summary``) meet every threshold?"""
        return not self.check(summary)

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self._OPTIONS}, "fail_on_no_effect": self.fail_on_no_effect}

    def describe(self) -> str:
        parts = [f"{self._OPTIONS[k]} {getattr(self, k):g}" for k in self._OPTIONS if getattr(self, k) is not None]
        if self.fail_on_no_effect:
            parts.append("--fail-on-no-effect")
        return ", ".join(parts) if parts else "no thresholds"


# --------------------------------------------------------------------------------------------
# auditing a model in hand


def _finite(x: float, digits: int = 6):
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _display_key(record) -> str:
    if getattr(record, "messages", None):
        return record.messages[-1][1]
    return record.key


class TokenTexts(dict):
    """Token id → text, decoded once per id for the whole audit (bounded by the vocabulary)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def add(self, ids) -> None:
        new = sorted({int(i) for i in ids} - self.keys())
        if new:
            self.update(zip(new, self.tokenizer.batch_decode([[i] for i in new])))


def record_audit(s, e, rec, tok, texts: TokenTexts) -> RecordAudit:
    """One record's verdict from its scores ``s`` (a :class:`memlaw.scoring.RecordScores`), its
    encoding ``e`` and its corpus record ``rec``."""
    texts.add(s.target_ids)
    texts.add(s.argmax)
    ids = s.target_ids
    locked = s.locked_mask
    tokens = TokenDetail(ids, s.p, s.argmax, s.margin, texts)
    spans = [{"start": a, "end": b, "text": tok.decode([int(i) for i in ids[a:b]])} for a, b in s.failing_spans]
    ll = float(s.logprob.sum())
    return RecordAudit(
        index=e.index, where=rec.where, key=_display_key(rec), target=rec.target,
        exact=s.exact, locked=s.locked, log_likelihood=_finite(ll, 10),
        mean_loss=_finite(-ll / len(ids)) if len(ids) else 0.0,
        coverage=float(locked.sum()) / len(ids) if len(ids) else 1.0,
        anchor=s.anchor, tokens=tokens, spans=spans,
        stubborn=[int(j) for j in (~locked).nonzero()[0]],
    )


def audit(model, base, encoded: Sequence, records: Sequence, *, pad_id: int | None = None,
          progress: bool = False, max_tokens: int = 8192, scorer=None) -> AuditResult:
    """Score every target token of ``encoded`` (from :func:`memlaw.corpus.encode_records` over
    ``records``) under ``model`` and build the per-record verdicts and the summary. ``base``
    supplies the tokenizer (token texts) and the base model's name and identity. ``scorer``
    (``encoded -> list[RecordScores]``) replaces the transformers pass, e.g. with vLLM's."""
    from memlaw.corpus import find_conflicts
    from memlaw.scoring import score, summarize

    if not encoded:
        raise UserError("the corpus has no records to audit")
    tok = base.tokenizer
    if pad_id is None:
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    start = time.perf_counter()
    if scorer is None:
        scores = score(model, encoded, pad_id=pad_id, max_tokens=max_tokens, progress=progress,
                       description="auditing")
    else:
        scores = scorer(encoded)
    seconds = time.perf_counter() - start

    texts = TokenTexts(tok)
    out = [record_audit(s, e, records[e.index], tok, texts) for s, e in zip(scores, encoded)]
    summary = summarize(scores)
    summary["locked_tokens"] = sum(int(s.locked_mask.sum()) for s in scores)
    n = summary["records"]
    summary["exact_fraction"] = summary["exact_records"] / n if n else 0.0
    summary["locked_fraction"] = summary["locked_records"] / n if n else 0.0
    conflicts = [{"key": c.key, "wheres": c.wheres, "targets": c.targets}
                 for c in find_conflicts([records[e.index] for e in encoded])]
    warnings = []
    if conflicts:
        warnings.append(f"{len(conflicts)} key(s) have several different targets: no adapter can lock all "
                        "of them (see 'conflicts')")
    ident = dict(getattr(base, "identity", {}) or {})
    ident.setdefault("name", getattr(base, "name", None))
    return AuditResult(summary=summary, records=sorted(out, key=lambda r: r.index), base_model=ident,
                       conflicts=conflicts, warnings=warnings, seconds=seconds)


# --------------------------------------------------------------------------------------------
# auditing an adapter folder


@dataclass
class AdapterInputs:
    """Everything :func:`audit_adapter` (and repair) loads: base model, adapter attached, corpus."""

    adapter_dir: Path
    adapter_config: dict
    sidecar: Sidecar | None
    corpus: "object"  # memlaw.memft.CorpusSpec
    base_name: str
    base: "object"  # memlaw.models.Base
    model: "object"  # peft.PeftModel
    records: list
    encoded: list
    weights_file: Path
    warnings: list[str] = field(default_factory=list)
    files: "object" = None  # memlaw.modelfiles.ModelFiles when loaded from files alone (model is None)
    prefix: "object" = None  # memlaw.scoring.PrefixStates once scoring asked (False: none applies)

    @property
    def pad_id(self) -> int:
        t = self.base.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else 0


def resolve_corpus(adapter_dir: Path, corpus, sidecar: Sidecar | None, sidecar_problem: str | None):
    """``corpus`` if given, else the corpus the sidecar records; a UserError when neither exists."""
    from memlaw.memft import CorpusSpec

    if corpus is not None:
        return corpus if isinstance(corpus, CorpusSpec) else CorpusSpec(str(corpus)), []
    info = sidecar.corpus if sidecar else None
    if not isinstance(info, dict) or not info.get("path"):
        # an empty {} file is reported like a missing one
        why = sidecar_problem or (f"{adapter_dir / SIDECAR} records no corpus" if sidecar and sidecar.to_dict()
                                  else f"{adapter_dir} has no {SIDECAR} naming its corpus")
        raise ParameterError("corpus", f"no corpus to audit against: {why}", fix="pass {set}FILE.jsonl")
    path = Path(info["path"])
    if not path.is_file():
        raise ParameterError("corpus", f"the corpus recorded in {adapter_dir / SIDECAR} ({path}) does not exist",
                             fix="pass {set}FILE.jsonl")
    spec = CorpusSpec(str(path), fmt=info.get("fmt") or "auto", key_field=info.get("key_field"),
                      target_field=info.get("target_field"))
    warnings = []
    if info.get("sha256"):
        from memlaw.corpus import corpus_sha256

        if corpus_sha256(path) != info["sha256"]:
            warnings.append(f"the corpus {path} changed since the adapter was trained (sha256 differs); "
                            "auditing against its current content")
    return spec, warnings


def _check_identity(base, sidecar: Sidecar | None, adapter_dir: Path, force_base: bool) -> list[str]:
    """Refuse a base model whose identity differs from the one the sidecar records
    (:func:`memlaw.models.identity_difference`: weights hashes first, else config hashes)."""
    from memlaw.models import identity_difference

    rec = sidecar.base_model if sidecar else None
    if not isinstance(rec, dict):
        return []
    have = getattr(base, "identity", {}) or {}
    same, key = identity_difference(rec, have)
    if same is not False:
        return []
    msg = (f"base model '{base.name}' is not the one {adapter_dir} was trained on: {SIDECAR} records "
           f"'{rec.get('name')}' with {key.replace('_sha256', '')} sha256 {str(rec[key])[:12]}…, this one has "
           f"{str(have[key])[:12]}…")
    if force_base:
        return [msg + " (--force-base: auditing anyway)"]
    raise ParameterError("base_model", msg, fix="pass the right {name}, or {flag:force_base} to audit anyway")


def _check_tokenizer(base, adapter_dir: Path, trust_remote_code: bool, force_base: bool) -> list[str]:
    """A tokenizer saved beside the adapter (many trainers save one) must match the base's vocabulary."""
    if not any((adapter_dir / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                     "tokenizer.model")):
        return []
    try:
        from transformers import AutoTokenizer

        saved = AutoTokenizer.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code)
    except Exception as e:  # a broken or exotic tokenizer file: say so, compare nothing
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return [f"the tokenizer saved in {adapter_dir} could not be loaded ({first}); not compared"]
    a, b = saved.get_vocab(), base.tokenizer.get_vocab()
    if a == b:
        return []
    diff = len(set(a.items()) ^ set(b.items()))
    msg = (f"the tokenizer saved in {adapter_dir} ({len(a)} tokens) differs from base model '{base.name}''s "
           f"({len(b)} tokens; {diff} entries differ)")
    if force_base:
        return [msg + " (--force-base: auditing with the base model's tokenizer)"]
    raise ParameterError("base_model", msg, fix="pass the base model the adapter was trained with ({name}), "
                                                "or {flag:force_base} to audit anyway")


def _check_vocab(model, encoded, base) -> None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is None or not hasattr(emb, "weight"):
        return
    v = emb.weight.shape[0]
    top = getattr(encoded, "top_id", None)  # an EncodedSpool counted it while writing
    if top is None:
        top = max(max(e.input_ids) for e in encoded)
    if top >= v:
        raise UserError(f"the tokenizer of '{base.name}' produces token id {top}, but the model's vocabulary "
                        f"has {v} entries: tokenizer and model do not match",
                        fix="pass a base model folder whose tokenizer belongs to it ({name:base_model})")


def _check_config_base_name(name: str, adapter_dir: Path) -> None:
    """An adapter is untrusted data: the base model its config names may be a built-in name or a
    hub id, but not a filesystem path, or the adapter could make us read any folder on disk."""
    from memlaw.models import BUILTIN_MODELS

    looks_like_path = (name.startswith(("/", ".", "~", "\\")) or ".." in name.split("/")
                       or name.count("/") > 1 or ":" in name or Path(name).exists())
    if name not in BUILTIN_MODELS and looks_like_path:
        raise ParameterError("base_model", f"{adapter_dir / 'adapter_config.json'} names a local path as its base "
                                           f"model ({name}); memlaw does not follow paths from an adapter's config",
                             fix="pass {name} with the model you trust")


def _sidecar_base_name(sidecar: Sidecar | None, cfg: dict) -> str | None:
    """memlaw's built-in name for the base model (``tiny``, ``smollm2-135m``) from the sidecar, when
    adapter_config.json names that model's folder (``…/models/<name>`` in some memlaw cache: what
    memft records, for plain PEFT) or the name itself. memlaw loads the built-in model and never
    follows the config's path; a config naming any other path is refused as before."""
    from memlaw.models import BUILTIN_MODELS

    name = sidecar.base_model_name if sidecar else None
    named = cfg.get("base_model_name_or_path")
    if not isinstance(name, str) or name not in BUILTIN_MODELS or not isinstance(named, str):
        return None
    return name if named == name or Path(named).parts[-2:] == ("models", name) else None


def _base_name(base_model: str | None, sidecar: Sidecar | None, cfg: dict, adapter_dir: Path) -> str:
    """The base model to audit against: ``base_model`` as given, else memlaw's name from the sidecar
    (memft's adapter_config.json names the model's cache folder, for plain PEFT), else the config's
    name, which must not be a local path."""
    name = base_model or _sidecar_base_name(sidecar, cfg) or cfg.get("base_model_name_or_path")
    if not name or not isinstance(name, str):
        raise ParameterError("base_model", f"{adapter_dir / 'adapter_config.json'} names no base model "
                                           "(base_model_name_or_path)", fix="pass {name}")
    if not base_model:
        _check_config_base_name(name, adapter_dir)
    return name


def load_adapter_inputs(adapter_dir: str | os.PathLike, corpus=None, base_model: str | None = None, *,
                        allow_pickle: bool = False, trust_remote_code: bool = False,
                        force_base: bool = False, trainable: bool = False, device: str = "cpu",
                        base=None, stream_corpus: bool = False) -> AdapterInputs:
    """Check and load everything an audit of ``adapter_dir`` needs, cheapest checks first (the
    folder, its config, pickle refusal, the corpus) so bad input fails before a model loads.
    ``stream_corpus``: read and check the corpus as a stream and encode it into a spool file
    (:class:`memlaw.auditor.sliced.EncodedSpool` as ``encoded``; ``records`` None), for the sliced audit."""
    from memlaw.corpus import encode_records
    from memlaw.models import attach_adapter, check_adapter_files, load_base, read_adapter_config

    adapter_dir = Path(adapter_dir)
    cfg = read_adapter_config(adapter_dir)
    weights = check_adapter_files(adapter_dir, allow_pickle=allow_pickle)
    sidecar, problem = Sidecar.read(adapter_dir)
    warnings = [problem] if problem else []
    spec, w = resolve_corpus(adapter_dir, corpus, sidecar, problem)
    warnings += w
    if stream_corpus:
        from memlaw.auditor.sliced import check_corpus

        check_corpus(spec)
        records = None
    else:
        records = spec.read()

    if base is not None:
        name = base.name
    else:
        name = _base_name(base_model, sidecar, cfg, adapter_dir)
        try:
            base = load_base(name, trust_remote_code=trust_remote_code, device=device)
        except UserError as e:
            if base_model:
                raise
            raise ParameterError("base_model", f"the base model named in {adapter_dir / 'adapter_config.json'} "
                                               f"cannot be loaded: {e}", fix="pass {name}") from None
    warnings += _check_identity(base, sidecar, adapter_dir, force_base)
    warnings += _check_tokenizer(base, adapter_dir, trust_remote_code, force_base)
    # an adapter trained with --eos learnt to stop after each target: score that token too
    eos = bool(sidecar and sidecar.eos)
    if stream_corpus:
        from memlaw.auditor.sliced import EncodedSpool

        encoded = EncodedSpool.build(spec, base.tokenizer, eos=eos)
    else:
        encoded = encode_records(base.tokenizer, records, eos=eos)
    try:
        _check_vocab(base.model, encoded, base)
        model = attach_adapter(base, adapter_dir, allow_pickle=allow_pickle, trainable=trainable)
    except BaseException:
        if stream_corpus:
            encoded.close()  # its spool file
        raise
    return AdapterInputs(adapter_dir=adapter_dir, adapter_config=cfg, sidecar=sidecar, corpus=spec,
                         base_name=name, base=base, model=model, records=records, encoded=encoded,
                         weights_file=weights, warnings=warnings)


def load_adapter_files(adapter_dir: str | os.PathLike, corpus=None, base_model: str | None = None, *,
                       allow_pickle: bool = False, trust_remote_code: bool = False,
                       force_base: bool = False) -> AdapterInputs:
    """What :func:`load_adapter_inputs` checks and loads, for the vLLM backend, without
    instantiating the base model: its config.json, safetensors headers and tokenizer give the
    identity, shapes, dtypes, vocabulary and context checks; vLLM loads the weights itself (and
    ``merged`` mode merges from the files, :func:`memlaw.modelfiles.stream_merge`). The returned
    inputs have ``model`` None and ``base.model`` None, and ``files`` set."""
    from memlaw.corpus import encode_records
    from memlaw.modelfiles import check_adapter_against, read_model_files
    from memlaw.models import Base, _check_finite, _safetensors_tensors, check_adapter_files, read_adapter_config

    adapter_dir = Path(adapter_dir)
    cfg = read_adapter_config(adapter_dir)
    weights = check_adapter_files(adapter_dir, allow_pickle=allow_pickle)
    if weights.suffix != ".safetensors":
        raise UserError(f"the vLLM backend reads safetensors adapters only ({weights})",
                        fix="convert the adapter to adapter_model.safetensors, or use --backend transformers")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{adapter_dir}: adapter type {cfg.get('peft_type')} is not LoRA",
                        fix="memlaw audits LoRA adapters")
    sidecar, problem = Sidecar.read(adapter_dir)
    warnings = [problem] if problem else []
    spec, w = resolve_corpus(adapter_dir, corpus, sidecar, problem)
    warnings += w
    records = spec.read()
    name = _base_name(base_model, sidecar, cfg, adapter_dir)
    try:
        files = read_model_files(name)
        tok = files.tokenizer(trust_remote_code=trust_remote_code)
    except UserError as e:
        if base_model:
            raise
        raise ParameterError("base_model", f"the base model named in {adapter_dir / 'adapter_config.json'} "
                                           f"cannot be loaded: {e}", fix="pass {name}") from None
    base = Base(name, None, tok, identity=dict(files.identity))
    warnings += _check_identity(base, sidecar, adapter_dir, force_base)
    warnings += _check_tokenizer(base, adapter_dir, trust_remote_code, force_base)
    encoded = encode_records(tok, records, eos=bool(sidecar and sidecar.eos))
    vocab = files.vocab_rows()
    top = max((max(e.input_ids) for e in encoded if e.input_ids), default=0)
    if vocab is not None and top >= vocab:
        raise UserError(f"the tokenizer of '{name}' produces token id {top}, but the model's vocabulary "
                        f"has {vocab} entries: tokenizer and model do not match",
                        fix="pass a base model folder whose tokenizer belongs to it (--base-model)")
    check_adapter_against(files, weights, adapter_dir)  # dtypes, sizes, shapes: before a tensor is read
    _check_finite(weights, _safetensors_tensors(weights))
    return AdapterInputs(adapter_dir=adapter_dir, adapter_config=cfg, sidecar=sidecar, corpus=spec,
                         base_name=name, base=base, model=None, records=records, encoded=encoded,
                         weights_file=weights, warnings=warnings, files=files)


# --------------------------------------------------------------------------------------------
# does the adapter change anything?

#: an adapter whose every target token scores within this many nats of the base model's has no
#: measurable effect: the same bound as the agreement of two engines (tests/test_vllm.py), so a
#: smaller difference cannot be told from numerical noise
NO_EFFECT_TOL = 1e-3


def cached_base_logprobs(inputs: AdapterInputs) -> tuple[dict, str] | None:
    """The base model's per-token log p for the audited records from the planner's base-loss cache
    (``memplan estimate`` on this corpus and model wrote them), or None when it lacks them. A record
    is taken when its cached target ids are the audited ones (or their start: an adapter trained
    with ``--eos`` scores one more token, which is then left out of the comparison)."""
    import numpy as np

    from memlaw.corpus import corpus_sha256
    from memlaw.planner.baseloss import cache_key, read_cached_tokens

    ident = getattr(inputs.base, "identity", None) or {}
    if not (ident.get("weights_sha256") or ident.get("config_sha256")):
        return None
    try:
        sha = corpus_sha256(inputs.corpus.path)
    except (OSError, UserError):
        return None
    for backend in NAMES:
        got = read_cached_tokens(cache_key(ident, sha, inputs.corpus, backend))
        if got is None:
            continue
        ends = np.cumsum(got["lengths"])
        where = {int(i): (int(e - n), int(e)) for i, n, e in zip(got["index"], got["lengths"], ends)}
        out = {}
        for e in inputs.encoded:
            if e.index not in where:
                break
            a, b = where[e.index]
            ids = got["ids"][a:b]
            if len(ids) > len(e.target_ids) or list(ids) != list(e.target_ids[: len(ids)]):
                break
            out[e.index] = got["logprob"][a:b].astype(np.float64)
        else:
            return out, f"the base-loss cache ({backend})"
    return None


def adapter_effect(scores: Sequence, base_logprobs: dict, source: str) -> dict:
    """How far the adapter's per-token log p lie from the base model's, over the target tokens both
    scored: ``max_abs_dlogp``, ``mean_dloss`` (base loss − adapter loss, nats a token; > 0 when
    the adapter helps), ``changed_locks`` (tokens whose p > 0.5 verdict differs), ``no_effect``."""
    tally = EffectTally()
    for s in scores:
        tally.add(s, base_logprobs.get(s.index))
    return tally.result(source)


class EffectTally:
    """:func:`adapter_effect` one record at a time. The mean is summed per record, then over the
    records in corpus order (:meth:`result`), so a sliced audit that meets the records in another
    order gets the same float as a whole-corpus one."""

    def __init__(self, n_records: int | None = None):
        import numpy as np

        self.tokens, self.biggest, self.flips = 0, 0.0, 0
        # per record: the sum of its finite Δ and their count (arrays when the corpus size is known:
        # 16 bytes a record)
        self.sums = {} if n_records is None else np.zeros(n_records, np.float64)
        self.counts = {} if n_records is None else np.zeros(n_records, np.int64)
        self.seen = set() if n_records is None else np.zeros(n_records, bool)

    def add(self, s, base) -> None:
        import numpy as np

        if base is None:
            return
        a = np.asarray(s.logprob[: len(base)], dtype=np.float64)
        b = np.asarray(base[: len(a)], dtype=np.float64)
        both = np.isfinite(a) & np.isfinite(b)
        # a token p = 0 under one and not the other is an effect; under both, none
        diff = np.where(both, a - b, np.where(np.isfinite(a) == np.isfinite(b), 0.0, np.inf))
        self.tokens += int(diff.size)
        if diff.size:
            self.biggest = max(self.biggest, float(np.abs(diff).max()))
        finite = diff[np.isfinite(diff)]
        self.sums[s.index], self.counts[s.index] = float(finite.sum()), int(finite.size)
        if isinstance(self.seen, set):
            self.seen.add(s.index)
        else:
            self.seen[s.index] = True
        self.flips += int(((a > -math.log(2)) != (b > -math.log(2))).sum())

    def result(self, source: str) -> dict:
        import numpy as np

        done = sorted(self.seen) if isinstance(self.seen, set) else np.flatnonzero(self.seen)
        total = n = 0
        for i in done:
            total, n = total + float(self.sums[i]), n + int(self.counts[i])
        mean = total / n if n else (math.nan if self.tokens else 0.0)
        return {"tokens": self.tokens, "max_abs_dlogp": self.biggest, "mean_dloss": float(mean),
                "changed_locks": self.flips, "tolerance": NO_EFFECT_TOL, "source": source,
                "no_effect": bool(self.tokens) and self.biggest <= NO_EFFECT_TOL}


def no_effect_warning(effect: dict) -> str:
    return (f"adapter has no measurable effect: all {effect['tokens']:,} target tokens score within "
            f"{effect['tolerance']:g} nats of the base model (max |Δ log p| {effect['max_abs_dlogp']:.1e}; base "
            f"scores from {effect['source']}). Untrained (all-zero B)? Target modules the engine did not match? "
            "A silent fallback to the base model? --fail-on-no-effect fails the gate on this")


BACKENDS = CHOICES


def audit_inputs(inputs: AdapterInputs, *, progress: bool = False, backend: str | ScoringBackend = "transformers",
                 vllm_mode: str = "auto", effect_check: bool = True, tensor_parallel_size: int = 1) -> AuditResult:
    """Audit what :func:`load_adapter_inputs` (or :func:`load_adapter_files`, vLLM only) loaded.
    ``backend``: a name (:func:`memlaw.backends.get_backend`: ``vllm`` scores with vLLM, in
    ``vllm_mode`` ``auto``, ``lora`` or ``merged``, see :func:`memlaw.vllm_backend.choose_vllm_mode`;
    ``auto`` picks one and records why in ``backend_note``) or a :class:`~memlaw.backends.ScoringBackend`
    (which carries its own vLLM options).

    ``effect_check``: compare the adapter's scores with the base model's (from the base-loss cache
    when it has this corpus, else one more scoring pass) into ``summary["effect"]``, with a warning
    when the adapter has no measurable effect (:data:`NO_EFFECT_TOL`)."""
    engine = get_backend(backend, vllm_mode=vllm_mode, tensor_parallel_size=tensor_parallel_size)
    engine.check_inputs(inputs)
    cached = cached_base_logprobs(inputs) if effect_check else None
    need_base = effect_check and cached is None
    run = {}

    def scorer(encoded):
        run["run"] = engine.score_adapter(inputs, progress=progress, base_too=need_base)
        return run["run"].scores

    result = audit(inputs.model, inputs.base, inputs.encoded, inputs.records, pad_id=inputs.pad_id,
                   progress=progress, scorer=scorer)
    scored = run["run"]
    result.backend = scored.engine
    notes = [n for n in (engine.note, scored.note) if n]
    result.backend_note = "; ".join(notes) if notes else None
    if effect_check:
        if cached is not None:
            base_lp, source = cached
        else:
            base_scores, source = engine.base_scores_for(inputs, scored, progress=progress)
            base_lp = {s.index: s.logprob for s in base_scores}
        effect = adapter_effect(scored.scores, base_lp, source)
        result.summary["effect"] = effect
        if effect["no_effect"]:
            result.warnings.append(no_effect_warning(effect))
    if inputs.prefix:
        inputs.prefix.forget()  # its passes are done; the store keeps the states
    label_with_inputs(result, inputs)
    result.warnings = list(inputs.warnings) + result.warnings
    return result


def label_with_inputs(result: AuditResult, inputs: AdapterInputs) -> None:
    """What an audit result says about its inputs: the adapter folder, the corpus, the base name asked for."""
    result.adapter = str(inputs.adapter_dir)
    try:
        result.corpus = inputs.corpus.to_dict()
    except UserError:
        result.corpus = {"path": str(inputs.corpus.path)}
    result.base_model["requested"] = inputs.base_name


def audit_adapter(adapter_dir: str | os.PathLike, corpus=None, base_model: str | None = None, *,
                  allow_pickle: bool = False, trust_remote_code: bool = False, force_base: bool = False,
                  device: str = "cpu", progress: bool = False, base=None, backend: str | ScoringBackend = "auto",
                  vllm_mode: str = "auto", effect_check: bool = True,
                  tensor_parallel_size: int = 1, keep_records: bool = True,
                  slice_tokens: int | None = None) -> AuditResult:
    """Audit the PEFT LoRA adapter in ``adapter_dir``.

    ``corpus``: a :class:`~memlaw.memft.CorpusSpec` (or a path); default: the corpus recorded in the
    adapter's ``memlaw.json``. ``base_model``: default ``base_model_name_or_path`` from
    ``adapter_config.json``. ``base``: an already loaded :class:`~memlaw.models.Base` to use instead
    (its model gets the adapter injected). ``backend``: ``auto``, ``transformers``, ``vllm`` or a
    :class:`~memlaw.backends.ScoringBackend`; with vLLM the base model is not instantiated here
    (:func:`load_adapter_files`). ``effect_check``: see :func:`audit_inputs`. ``keep_records`` False
    (a backend that scores the loaded model: transformers): score the corpus in slices of
    ``slice_tokens`` target tokens in bounded memory, the records kept in a spool file
    (:mod:`memlaw.auditor.sliced`; same result and reports). Raises :class:`UserError` on any bad input."""
    engine = get_backend(backend, vllm_mode=vllm_mode, tensor_parallel_size=tensor_parallel_size)
    engine.require()  # before loading anything
    if not keep_records and not engine.scores_from_files:
        from memlaw.auditor.sliced import audit_adapter_sliced

        return audit_adapter_sliced(adapter_dir, corpus, base_model, allow_pickle=allow_pickle,
                                    trust_remote_code=trust_remote_code, force_base=force_base, device=device,
                                    progress=progress, base=base, backend_note=engine.note,
                                    effect_check=effect_check, precision=getattr(engine, "precision", "float32"),
                                    **({"slice_tokens": slice_tokens} if slice_tokens else {}))
    if engine.scores_from_files and base is None:
        inputs = load_adapter_files(adapter_dir, corpus, base_model, allow_pickle=allow_pickle,
                                    trust_remote_code=trust_remote_code, force_base=force_base)
    else:
        inputs = load_adapter_inputs(adapter_dir, corpus, base_model, allow_pickle=allow_pickle,
                                     trust_remote_code=trust_remote_code, force_base=force_base,
                                     device=device, base=base)
    return audit_inputs(inputs, progress=progress, backend=engine, effect_check=effect_check)
