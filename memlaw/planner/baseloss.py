"""What the planner needs to know about a corpus under a base model, measured once and cached.

One teacher-forced scoring pass of the base model over the corpus gives, over its target tokens:

* ℓ — the number of target tokens (with this model's tokenizer);
* L_before — the mean target-token loss (nats);
* the capacity-floor bits Σ max(0, −log2 p − 1): the information a token still lacks before it is
  locked (p > 0.5 ⇔ −log2 p < 1), summed over the corpus;
* the base model's linear modules (name, in, out), so a LoRA template's parameters per rank and full
  rank can be computed later without loading the model again.

The result is cached as JSON under ``cache_dir()/baseloss/<key>.json`` (atomic write), keyed by the
model identity (config and weight hashes), the corpus file's sha256, the corpus format options, the
backend and the dtype. A cached estimate reads the corpus (for conflicts) and that file, and loads
neither the model weights nor the tokenizer: the model identity comes from a small memo keyed by
cheap fingerprints (see :func:`model_identity`).

Backends (:mod:`memlaw.backends`): ``transformers`` (teacher-forced scoring with
:func:`memlaw.scoring.score`) and ``vllm`` (``prompt_logprobs``, :mod:`memlaw.vllm_backend`); both
plug in at :func:`base_losses`. The cache keeps their results apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from memlaw.backends import NAMES, ScoringBackend, get_backend
from memlaw.errors import ParameterError
from memlaw.io import atomic_write_json
from memlaw.planner.coverage import LossProfile

CACHE_VERSION = 3  # 2: the per-token loss profile and the structural ceiling; 3: its unigram code
# (an entry's profile may also carry the ``context`` predictor's histogram: added when first asked for)
BACKENDS = NAMES
DTYPE = "float32"
LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# the measurement


@dataclass
class TokenLossSums:
    """Sums over the target tokens of a corpus under one model (one scoring pass)."""

    records: int
    target_tokens: int
    key_tokens: int
    loss_sum: float  # Σ −ln p (nats)
    info_bits: float  # Σ −log2 p
    floor_bits: float  # Σ max(0, −log2 p − 1)
    locked_tokens: int  # tokens with p > 0.5 under the base model already
    profile: dict  # memlaw.planner.coverage.LossProfile.to_dict(): the per-token loss distribution
    per_token: dict | None = field(default=None, repr=False)  # index, lengths, ids, logprob arrays


def base_losses(model, encoded: Sequence, backend: str | ScoringBackend = "transformers", *, pad_id: int = 0,
                progress: bool = False, model_name: str | None = None, context: dict | None = None) -> TokenLossSums:
    """Score every target token of ``encoded`` with ``model`` and return the sums the planner needs.

    The one place a scoring backend plugs in (:meth:`memlaw.backends.ScoringBackend.score_base`):
    it must return the same sums (per-token log p under teacher forcing, target tokens only).
    ``vllm`` serves ``model_name`` itself. ``context`` (``bos_id``, ``separator``, ``max_tokens``):
    also score each record after other records of the corpus, for the ``context`` predictor
    (:mod:`memlaw.planner.context`); a second pass of about twice the tokens."""
    import numpy as np

    scorer = get_backend(backend, allow_auto=False)
    scores = scorer.score_base(model, encoded, pad_id=pad_id, progress=progress, model_name=model_name)
    if scores:
        lp = np.concatenate([s.logprob for s in scores]).astype(np.float64)
    else:
        lp = np.zeros(0)
    in_context = None
    if context is not None and scores:
        # a call of its own (batched with the records, the windows' padding would move L_before's last
        # digits), without progress: the stage callers follow (L_before) has ended with the records
        from memlaw.planner.context import context_losses

        in_context = np.concatenate(context_losses(scorer, model, encoded, [-s.logprob for s in scores],
                                                   pad_id=pad_id, model_name=model_name, **context))
    bits = -lp / LN2
    sums = TokenLossSums(
        records=len(encoded),
        target_tokens=int(lp.size),
        key_tokens=int(sum(len(e.key_ids) for e in encoded)),
        loss_sum=float(-lp.sum()),
        info_bits=float(bits.sum()),
        floor_bits=float(np.maximum(0.0, bits - 1.0).sum()),
        locked_tokens=int((lp > -LN2).sum()),
        profile=LossProfile.from_losses(-lp, np.concatenate([s.target_ids for s in scores]) if scores else None,
                                        in_context).to_dict(),
    )
    # per token, for the auditor's no-effect check (an adapter is compared with these scores)
    sums.per_token = {
        "index": np.asarray([e.index for e in encoded], dtype=np.int64),
        "lengths": np.asarray([len(s.target_ids) for s in scores], dtype=np.int64),
        "ids": (np.concatenate([s.target_ids for s in scores]) if scores else np.zeros(0)).astype(np.int64),
        "logprob": lp.astype(np.float32),
    }
    return sums


def linear_modules(model) -> list[list]:
    """[name, in_features, out_features] of every module that has both (what LoRA can adapt)."""
    out = []
    for name, mod in model.named_modules():
        i, o = getattr(mod, "in_features", None), getattr(mod, "out_features", None)
        if isinstance(i, int) and isinstance(o, int) and name:
            out.append([name, i, o])
    return out


@dataclass
class BaseLoss:
    """A corpus measured under a base model: the cache entry's content."""

    records: int
    target_tokens: int
    key_tokens: int
    loss_sum: float
    info_bits: float
    floor_bits: float
    locked_tokens: int
    modules: list  # [[name, in, out], ...] every linear module of the base model
    model_identity: dict
    backend: str
    dtype: str
    measure_seconds: float  # how long the measuring pass took (load + encode + score)
    profile: dict  # LossProfile.to_dict(): per-token base losses as a histogram
    ceiling: dict  # memlaw.corpus.Ceiling.to_dict(): what no rank can exceed
    corpus: dict = field(default_factory=dict)  # path, sha256, fmt, key_field, target_field
    created: str = ""

    @property
    def loss_before(self) -> float:
        return self.loss_sum / self.target_tokens if self.target_tokens else 0.0

    @property
    def base_coverage(self) -> float:
        return self.locked_tokens / self.target_tokens if self.target_tokens else 0.0

    def loss_profile(self) -> LossProfile:
        return LossProfile.from_dict(self.profile)

    @property
    def max_coverage(self) -> float:
        return float(self.ceiling.get("max_coverage", 1.0))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BaseLoss":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# --------------------------------------------------------------------------------------------
# model identity without loading the weights


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _model_dir(name: str) -> Path | None:
    """The local folder a model name loads from, if it is one and already exists (no download)."""
    from memlaw.models import BUILTIN_MODELS, smollm2_dir

    if name in BUILTIN_MODELS:
        return smollm2_dir() if name == "smollm2-135m" else None
    p = Path(name)
    return p if p.is_dir() else None


def _fingerprint(name: str) -> dict | None:
    """Cheap facts that change whenever the model's identity can: for ``tiny`` the source that
    builds it and the library versions; for a model folder its config bytes and the size and mtime
    of its weight files. None when only loading the model can tell (a hub id, a GGUF file)."""
    if name == "tiny":
        import memlaw.models

        return {"kind": "tiny", "models_py": _sha256_bytes(Path(memlaw.models.__file__).read_bytes()),
                "torch": _dist_version("torch"), "transformers": _dist_version("transformers")}
    d = _model_dir(name)
    if d is None or not (d / "config.json").is_file():
        return None
    weights = None
    for fname in ("model.safetensors.index.json", "model.safetensors"):
        f = d / fname
        if f.is_file():
            st = f.stat()
            weights = [fname, st.st_size, st.st_mtime_ns]
            break
    if weights is None:  # e.g. only pytorch_model.bin: the loaded model's identity decides
        return None
    return {"kind": "dir", "path": str(d.resolve()), "config_sha256": _sha256_bytes((d / "config.json").read_bytes()),
            "weights": weights}


def _identity_from_fingerprint(name: str, fp: dict) -> dict:
    """Compute the identity ``load_base(name).identity`` would give, without the weights when possible."""
    if fp["kind"] == "tiny":
        from memlaw.models import load_base

        return dict(load_base("tiny").identity)
    from memlaw.io import sha256_file

    d = Path(fp["path"])
    fname = fp["weights"][0]
    if fname.endswith(".json"):
        weights = _sha256_bytes((d / fname).read_bytes())
    else:
        weights = sha256_file(d / fname)
    return {"name": name, "config_sha256": fp["config_sha256"], "weights_sha256": weights}


def _memo_path(fp: dict) -> Path:
    from memlaw.models import cache_dir

    key = _sha256_bytes(json.dumps(fp, sort_keys=True).encode())
    return cache_dir() / "baseloss" / f"identity-{key[:32]}.json"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _write_json_quietly(path: Path, obj) -> bool:
    try:
        atomic_write_json(path, obj)
        return True
    except (OSError, ValueError):
        return False


def model_identity(name: str) -> dict | None:
    """The model's identity (name, config_sha256, weights_sha256) without loading its weights, via a
    memo keyed by its fingerprint; None when the model must be loaded to know it."""
    fp = _fingerprint(name)
    if fp is None:
        return None
    memo = _memo_path(fp)
    entry = _read_json(memo)
    if isinstance(entry, dict) and entry.get("fingerprint") == fp and isinstance(entry.get("identity"), dict):
        ident = dict(entry["identity"])
    else:
        ident = _identity_from_fingerprint(name, fp)
        _write_json_quietly(memo, {"fingerprint": fp, "identity": ident})
    ident["name"] = name
    return ident


def remember_identity(name: str, identity: dict) -> None:
    """Store a loaded model's identity under its fingerprint (heals a stale memo)."""
    fp = _fingerprint(name)
    if fp is not None:
        _write_json_quietly(_memo_path(fp), {"fingerprint": fp, "identity": dict(identity)})


def same_model(a: dict, b: dict) -> bool | None:
    """Do two identities name the same weights? (:func:`memlaw.models.identity_difference`)"""
    from memlaw.models import identity_difference

    return identity_difference(a, b)[0]


# --------------------------------------------------------------------------------------------
# the cache


def cache_key(identity: dict, corpus_sha256: str, spec, backend: str) -> str:
    model = {"config_sha256": identity.get("config_sha256"), "weights_sha256": identity.get("weights_sha256")}
    if not model["weights_sha256"]:  # the hashes alone do not pin the model: add its name
        model["name"] = identity.get("name")
    payload = {"v": CACHE_VERSION, "model": model, "corpus_sha256": corpus_sha256, "fmt": spec.fmt,
               "key_field": spec.key_field, "target_field": spec.target_field, "backend": backend,
               "dtype": DTYPE}
    return _sha256_bytes(json.dumps(payload, sort_keys=True).encode())


def cache_path(key: str) -> Path:
    from memlaw.models import cache_dir

    return cache_dir() / "baseloss" / f"{key}.json"


_REQUIRED = ("records", "target_tokens", "key_tokens", "loss_sum", "info_bits", "floor_bits", "locked_tokens",
             "modules", "model_identity", "backend", "dtype", "measure_seconds", "profile", "ceiling")


def read_cached(key: str) -> BaseLoss | None:
    """The cache entry for ``key``, or None when it is missing or unreadable (then we measure again)."""
    entry = _read_json(cache_path(key))
    if not isinstance(entry, dict) or entry.get("version") != CACHE_VERSION or entry.get("key") != key:
        return None
    data = entry.get("data")
    if not isinstance(data, dict) or any(k not in data for k in _REQUIRED):
        return None
    try:
        bl = BaseLoss.from_dict(data)
    except TypeError:
        return None
    if not isinstance(bl.target_tokens, int) or bl.target_tokens <= 0:
        return None
    return bl


def write_cached(key: str, bl: BaseLoss) -> bool:
    return _write_json_quietly(cache_path(key), {"version": CACHE_VERSION, "key": key, "data": bl.to_dict()})


def tokens_path(key: str) -> Path:
    return cache_path(key).with_suffix(".tokens.npz")


def write_cached_tokens(key: str, per_token: dict) -> bool:
    """The per-token base log-probs beside the entry (float32, ~12 bytes a target token), written
    atomically; optional: the planner needs only the entry, the auditor's no-effect check reads these."""
    import os
    import tempfile

    import numpy as np

    path = tokens_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tokens-", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **per_token)
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def read_cached_tokens(key: str) -> dict | None:
    """What :func:`write_cached_tokens` wrote for ``key`` (index, lengths, ids, logprob), or None."""
    import numpy as np

    path = tokens_path(key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in ("index", "lengths", "ids", "logprob")}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if d["lengths"].sum() != d["ids"].size or d["ids"].size != d["logprob"].size or d["index"].size != d["lengths"].size:
        return None
    return d


# --------------------------------------------------------------------------------------------
# one call: cached or measured


def resolve_device(device: str) -> str:
    """``auto`` → cuda when a GPU is visible, else cpu; a device this machine lacks is a user error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ParameterError("device", f"{{name}} {device!r} is not a device name",
                             fix="use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ParameterError("device", f"{{name}} {device}: no such CUDA device on this machine "
                             f"({torch.cuda.device_count()} visible)", fix="use {set}cpu or auto")
    return device


def add_context(bl: BaseLoss, key: str, tokens: dict, records, model_name: str, backend: str, device: str,
                base, say) -> BaseLoss | None:
    """``bl`` with the ``context`` predictor's histogram: the in-context pass alone, against the base
    losses of the token cache; the cache entry is rewritten with it. None where the token cache
    does not match the records' encoding (then measure anew)."""
    import numpy as np

    from memlaw.corpus import encode_records
    from memlaw.models import load_base
    from memlaw.planner.context import context_losses

    if base is None:
        say(f"loading base model {model_name}…")
        base = load_base(model_name, device=resolve_device(device))
    encoded = encode_records(base.tokenizer, records)
    lengths = [e.n_target for e in encoded]
    if [int(n) for n in tokens["lengths"]] != lengths:
        return None
    say("scoring the target tokens again after other records of the corpus (the context predictor)…")
    losses = -tokens["logprob"].astype(np.float64)
    alone = np.split(losses, np.cumsum(lengths)[:-1])
    pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    in_context = context_losses(get_backend(backend, allow_auto=False), base.model, encoded, alone, pad_id=pad_id,
                                model_name=model_name, **context_settings(base))
    bl.profile = LossProfile.from_losses(losses, tokens["ids"], np.concatenate(in_context)).to_dict()
    write_cached(key, bl)
    return bl


def context_settings(base) -> dict:
    """How :mod:`memlaw.planner.context` joins records for ``base``: a newline between records, one
    BOS at the start where the tokenizer puts one before text (a chat template's own opening token
    stays on every record), windows of at most 2,048 tokens or the model's own limit."""
    tok = base.tokenizer
    adds_bos = tok.bos_token_id is not None and tok("x")["input_ids"][:1] == [tok.bos_token_id]
    limit = getattr(getattr(base.model, "config", None), "max_position_embeddings", None) or 2048
    return {"bos_id": tok.bos_token_id if adds_bos else None,
            "separator": tuple(tok("\n", add_special_tokens=False)["input_ids"]), "max_tokens": int(min(2048, limit))}


def measure_or_load(spec, records, model_name: str, corpus_sha256: str, *, use_cache: bool = True,
                    backend: str = "transformers", device: str = "cpu", progress: bool = False,
                    base=None, log: Callable[[str], None] | None = None,
                    context: bool = False) -> tuple[BaseLoss, bool, list[str]]:
    """(BaseLoss, cached?, warnings) for a read corpus under ``model_name``.

    With ``use_cache`` a cached entry is returned as is; otherwise (or on a miss) the base model is
    loaded (unless ``base`` is given), the records encoded and scored, and the entry (re)written.
    ``context``: the profile must carry the in-context prices (the ``context`` predictor); a cached
    entry without them gets them from a second pass, its base losses read from the token cache."""
    from datetime import datetime, timezone

    get_backend(backend, allow_auto=False).require()
    warnings: list[str] = []
    say = log or (lambda msg: None)
    identity = dict(base.identity) if base is not None else model_identity(model_name)
    if identity is not None:
        key = cache_key(identity, corpus_sha256, spec, backend)
        if use_cache:
            hit = read_cached(key)
            if hit is not None and (not context or "context_bins" in hit.profile):
                return hit, True, warnings
            if hit is not None:  # cached without the in-context prices: add them, or measure anew below
                tokens = read_cached_tokens(key)
                with_context = add_context(hit, key, tokens, records, model_name, backend, device, base, say) \
                    if tokens is not None else None
                if with_context is not None:
                    return with_context, True, warnings

    from memlaw.corpus import coverage_ceiling, encode_records
    from memlaw.models import load_base

    start = time.perf_counter()
    if base is None:
        say(f"loading base model {model_name}…")
        base = load_base(model_name, device=resolve_device(device))
    if identity is None or same_model(identity, base.identity) is False:
        identity = dict(base.identity)  # what was loaded is the truth; heal the memo
        remember_identity(model_name, identity)
        key = cache_key(identity, corpus_sha256, spec, backend)
        if use_cache:
            hit = read_cached(key)
            if hit is not None and (not context or "context_bins" in hit.profile):
                return hit, True, warnings
    encoded = encode_records(base.tokenizer, records)
    n_target = sum(e.n_target for e in encoded)
    say(f"measuring L_before: one scoring pass over {n_target:,} target tokens…")
    pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    if context:
        say("… and again after other records of the corpus (the context predictor)…")
    sums = base_losses(base.model, encoded, backend, pad_id=pad_id, progress=progress, model_name=model_name,
                       context=context_settings(base) if context else None)
    bl = BaseLoss(
        records=sums.records, target_tokens=sums.target_tokens, key_tokens=sums.key_tokens,
        loss_sum=sums.loss_sum, info_bits=sums.info_bits, floor_bits=sums.floor_bits,
        locked_tokens=sums.locked_tokens, modules=linear_modules(base.model), model_identity=identity,
        backend=backend, dtype=DTYPE, measure_seconds=round(time.perf_counter() - start, 3),
        profile=sums.profile, ceiling=coverage_ceiling(encoded).to_dict(),
        corpus={"path": str(Path(spec.path).resolve()), "sha256": corpus_sha256, "fmt": spec.fmt,
                "key_field": spec.key_field, "target_field": spec.target_field},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if not all(math.isfinite(v) for v in (bl.loss_sum, bl.info_bits, bl.floor_bits)):
        warnings.append("the base model gave some target token probability 0 (infinite loss); "
                        "L_before and the capacity floor are infinite and were not cached")
    elif not write_cached(key, bl):
        warnings.append(f"could not write the base-loss cache under {cache_path(key).parent} "
                        "(the next estimate will measure again)")
    else:
        write_cached_tokens(key, sums.per_token)
    return bl, False, warnings
