"""Teacher-forced scoring of target tokens (transformers / PEFT backend).

For every target token: log p (so p and loss = −log p), the argmax of the distribution, and a
margin = log p(target) − max log p(any other token), which is > 0 exactly when the target is the
strict argmax (greedy-correct) and, when it is, equals the gap between the top two.

One forward pass decides everything DESIGN.md defines: locked (p > 0.5), greedy-correct,
exact record, locked record, anchor, coverage. No generation needed.

Efficiency: the LM head (vocab × hidden, the largest matmul for small models) is applied only at
the positions that predict a target token, not at every key/padding position. Records are sorted
by length and packed into batches under a token budget; right padding with an attention mask keeps
a record's numbers independent of its batch-mates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

LN2 = math.log(2.0)


@dataclass
class RecordScores:
    """Per-token results for one record, in target order."""

    index: int
    target_ids: np.ndarray  # int64 (n,)
    logprob: np.ndarray  # float64 (n,) log p(target token)
    argmax: np.ndarray  # int64 (n,)
    margin: np.ndarray  # float64 (n,)

    @property
    def p(self) -> np.ndarray:
        return np.exp(self.logprob)

    @property
    def loss(self) -> np.ndarray:
        return -self.logprob

    @property
    def locked_mask(self) -> np.ndarray:
        return self.logprob > -LN2

    @property
    def correct_mask(self) -> np.ndarray:
        return self.argmax == self.target_ids

    @property
    def exact(self) -> bool:
        return bool(self.correct_mask.all())

    @property
    def locked(self) -> bool:
        return bool(self.locked_mask.all())

    @property
    def anchor(self) -> int | None:
        """Index of the first non-greedy-correct target token, where greedy decoding derails."""
        wrong = np.flatnonzero(~self.correct_mask)
        return int(wrong[0]) if wrong.size else None

    @property
    def failing_spans(self) -> list[tuple[int, int]]:
        """Maximal runs of consecutive non-locked tokens, as half-open [start, end) intervals."""
        spans, start = [], None
        for i, ok in enumerate(self.locked_mask):
            if not ok and start is None:
                start = i
            elif ok and start is not None:
                spans.append((start, i))
                start = None
        if start is not None:
            spans.append((start, len(self.locked_mask)))
        return spans


def summarize(scores: Sequence[RecordScores]) -> dict:
    n_tokens = sum(len(s.target_ids) for s in scores)
    locked = sum(int(s.locked_mask.sum()) for s in scores)
    total_loss = sum(float(s.loss.sum()) for s in scores)
    return {
        "records": len(scores),
        "target_tokens": n_tokens,
        "coverage": locked / n_tokens if n_tokens else 0.0,
        "exact_records": sum(s.exact for s in scores),
        "locked_records": sum(s.locked for s in scores),
        "mean_loss": total_loss / n_tokens if n_tokens else 0.0,
    }


# --------------------------------------------------------------------------------------------
# the forward pass shared by scoring and training


def split_lm(model):
    """Return (backbone, head) so the head runs only where we need logits, or (None, None) when the
    model post-processes logits in ways we should not bypass (soft-capping, logit scales)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = lm.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None, None
    backbone = getattr(lm, getattr(lm, "base_model_prefix", "model"), None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if backbone is None or head is None or backbone is lm:
        return None, None
    return backbone, head


@dataclass
class Batch:
    input_ids: "torch.Tensor"  # (B, T)
    attention_mask: "torch.Tensor"  # (B, T)
    rows: "torch.Tensor"  # (N,) batch row of each target token
    cols: "torch.Tensor"  # (N,) position whose output predicts it
    targets: "torch.Tensor"  # (N,) target token id
    offsets: list[int]  # start of each record's tokens in the flat (N,) arrays, plus the end
    indices: list[int]  # record index of each row


def make_batch(encoded: Sequence, pad_id: int, device="cpu", trim: bool = False) -> Batch:
    """``trim``: leave out each record's last token, which is only ever an input whose output (the
    prediction after the last target) nobody reads: one position fewer per record, same numbers."""
    import torch

    cut = 1 if trim else 0
    width = max(len(e.key_ids) + len(e.target_ids) - cut for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    rows, cols, targets, offsets = [], [], [], [0]
    for b, e in enumerate(encoded):
        seq = (list(e.key_ids) + list(e.target_ids))[: len(e.key_ids) + len(e.target_ids) - cut]
        ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, : len(seq)] = 1
        k, n = len(e.key_ids), len(e.target_ids)
        rows.append(torch.full((n,), b, dtype=torch.long))
        cols.append(torch.arange(k - 1, k + n - 1, dtype=torch.long))
        targets.append(torch.tensor(e.target_ids, dtype=torch.long))
        offsets.append(offsets[-1] + n)
    return Batch(ids.to(device), mask.to(device), torch.cat(rows).to(device), torch.cat(cols).to(device),
                 torch.cat(targets).to(device), offsets, [e.index for e in encoded])


def target_log_softmax(model, batch: Batch):
    """Log-softmax (float32) over the vocabulary at every target-predicting position: (N, V)."""
    import torch

    backbone, head = split_lm(model)
    if backbone is not None:
        hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          use_cache=False).last_hidden_state
        logits = head(hidden[batch.rows, batch.cols])
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       use_cache=False).logits[batch.rows, batch.cols]
    return torch.log_softmax(logits.float(), dim=-1)


# --------------------------------------------------------------------------------------------
# the frozen prefix: decoder layers below an adapter's lowest one compute exactly what the base
# model computes, so their output (the input of layer k) is shared by the adapter pass and the
# base-model pass, and kept on disk for the next audit of an adapter on the same base and corpus

#: Decoder models whose backbone embeds tokens without rescaling and loops over ``self.layers``:
#: for them, feeding the layer-k input as ``inputs_embeds`` to a backbone holding only layers[k:]
#: is exactly the rest of the forward pass.
PREFIX_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
#: bumped when what a stored prefix file holds changes
PREFIX_STORE_VERSION = 1
#: the on-disk prefix store's size limit in MiB (all models together; least recently used files go
#: first); 0 keeps states in memory only
PREFIX_STORE_ENV = "MEMLAW_PREFIX_CACHE_MB"
PREFIX_STORE_DEFAULT_MB = 1024


def run_layers(backbone, layers, **kwargs):
    """Run ``backbone`` with only ``layers`` (a slice of its decoder layers); returns (the input of
    its final norm, its last_hidden_state)."""
    import torch

    full = backbone.layers
    captured = {}

    def grab(module, args, output):  # must return None: a hook's return value replaces the output
        captured["h"] = args[0]

    hook = backbone.norm.register_forward_hook(grab)
    try:
        backbone.layers = torch.nn.ModuleList(layers)
        out = backbone(use_cache=False, **kwargs)
    finally:
        backbone.layers = full
        hook.remove()
    return captured["h"], out.last_hidden_state


def prefix_layer(model, k: int | None) -> int | None:
    """``k`` when the layers below it can be run apart from the rest (a model type of
    :data:`PREFIX_MODEL_TYPES` whose head :func:`split_lm` splits off), else None."""
    backbone, _ = split_lm(model)
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if (not k or backbone is None or lm.config.model_type not in PREFIX_MODEL_TYPES
            or not hasattr(backbone, "layers") or not hasattr(backbone, "norm")):
        return None
    return k


#: parameter-name parts of what a PEFT adapter adds or replaces: LoRA weights (DoRA's magnitudes
#: too), modules it saves in full, trainable token rows
ADAPTER_PARAM_MARKS = ("lora_", "modules_to_save", "token_adapter", "trainable_tokens")


def first_adapted_layer(model) -> int | None:
    """Lowest decoder-layer index holding an adapter weight (:data:`ADAPTER_PARAM_MARKS`); None when
    there is none, or when one sits outside the decoder layers (an embedding or the LM head, LoRA or
    saved in full: then no layer computes what the base model does)."""
    import re

    found = []
    for name, _ in model.named_parameters():
        if not any(mark in name for mark in ADAPTER_PARAM_MARKS):
            continue
        m = re.search(r"\.layers\.(\d+)\.", name)
        if not m:
            return None
        found.append(int(m.group(1)))
    return min(found) if found else None


def _store_limit() -> int:
    import os

    raw = os.environ.get(PREFIX_STORE_ENV, "").strip()
    try:
        return max(0, int(float(raw) * 2**20)) if raw else PREFIX_STORE_DEFAULT_MB * 2**20
    except ValueError:
        return PREFIX_STORE_DEFAULT_MB * 2**20


class PrefixStates:
    """The hidden states entering decoder layer ``k`` for each scored batch: computed once (layers
    below ``k``, no adapter there), kept in memory for the next pass over the same batch (the
    no-effect check's base-model pass after the adapter's) up to ``memory_bytes``, and, when the
    model's ``identity`` names its weights, in a store under ``cache_dir()/prefix`` (float32, one
    safetensors file a batch, named by the model, torch's version, the device, ``k`` and the batch's
    token ids) that the next audit on the same base model and corpus reads instead of running those
    layers. The store holds at most ``$MEMLAW_PREFIX_CACHE_MB`` MiB (default 1024; 0: no store); past
    that, the least recently used files go first.

    A batch's numbers are the same bits either way: the split pass is the pass every batch takes
    (tests/test_scoring.py checks it against the unsplit one)."""

    def __init__(self, model, k: int, identity: dict | None = None, *, memory_bytes: int = 256 * 2**20,
                 store_dir=None):
        import hashlib
        import json

        import torch
        import transformers

        from memlaw.models import cache_dir

        self.backbone, self.head = split_lm(model)
        self.k, self.memory_bytes = k, memory_bytes
        self.memory: dict[str, "torch.Tensor"] = {}
        self._held = 0  # bytes of the states in memory
        self.computed = self.read = 0  # batches whose states were computed / read from the store
        param = next(self.head.parameters())
        ident = identity or {}
        self.store = None
        if ident.get("weights_sha256") and param.dtype == torch.float32 and _store_limit() > 0:
            key = json.dumps({"v": PREFIX_STORE_VERSION, "weights": ident["weights_sha256"],
                              "config": ident.get("config_sha256"), "k": k, "torch": torch.__version__,
                              "transformers": transformers.__version__, "device": param.device.type,
                              "probe": self._probe()}, sort_keys=True)
            self.store = (store_dir or cache_dir() / "prefix") / hashlib.sha256(key.encode()).hexdigest()[:32]
        self._stored_bytes = None
        self._used: set = set()  # files this object read or wrote: never evicted by it

    def _probe(self) -> str:
        """A digest of the weights below layer k as loaded: the first and last 4,096 values of every
        tensor (milliseconds). The identity hashes files, and a sharded model's identity only its
        index: this keeps states of other weights from being read."""
        import hashlib

        import torch

        h = hashlib.sha256()
        modules = [m for name, m in self.backbone.named_children() if name != "layers"]
        modules += list(self.backbone.layers[: self.k])
        with torch.no_grad():
            for m in modules:
                for name, p in m.named_parameters():
                    flat = p.detach().reshape(-1)
                    h.update(name.encode())
                    for part in (flat[:4096], flat[-4096:]):
                        h.update(part.float().cpu().numpy().tobytes())
        return h.hexdigest()[:32]

    def _digest(self, batch: "Batch") -> str:
        import hashlib

        ids = batch.input_ids.cpu().numpy()
        h = hashlib.sha256(repr(ids.shape).encode())
        h.update(ids.tobytes())
        h.update(batch.attention_mask.cpu().numpy().tobytes())
        return h.hexdigest()[:40]

    def _load(self, digest: str, batch: "Batch"):
        """The stored states of this batch, or None (absent, or not what this batch needs)."""
        import os

        if self.store is None:
            return None
        path = self.store / f"{digest}.safetensors"
        if not path.is_file():
            return None
        try:
            from safetensors.torch import load_file

            h = load_file(str(path), device=str(batch.input_ids.device)).get("h")
        except Exception:  # a torn or foreign file: compute instead
            return None
        want = (*batch.input_ids.shape, self.head.in_features)
        if h is None or tuple(h.shape) != want or h.dtype != next(self.head.parameters()).dtype:
            return None
        self._used.add(path)
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return h

    def _save(self, digest: str, h) -> None:
        """Write atomically, making room under the size limit by evicting; a full or read-only
        disk only costs the next audit its speed."""
        import os
        import tempfile

        limit = _store_limit()
        size = h.numel() * h.element_size()
        if size > limit:
            return
        try:
            if self._stored_bytes is None:
                self._stored_bytes = sum(f.stat().st_size for f in self._files())
            if self._stored_bytes + size > limit:
                self._evict(self._stored_bytes + size - limit)
            if self._stored_bytes + size > limit:
                return
            from safetensors.torch import save_file

            self.store.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.store, prefix=".tmp-", suffix=".safetensors")
            os.close(fd)
            try:
                save_file({"h": h.contiguous().cpu()}, tmp)
                os.replace(tmp, self.store / f"{digest}.safetensors")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            written = self.store / f"{digest}.safetensors"
            self._used.add(written)
            self._stored_bytes += written.stat().st_size
        except OSError:
            return

    def _files(self) -> list:
        root = self.store.parent
        return list(root.rglob("*.safetensors")) if root.is_dir() else []

    def _evict(self, need: int) -> None:
        """Delete the least recently used stored files (any model's, not this audit's) until
        ``need`` bytes are free."""
        def mtime(f):
            try:
                return f.stat().st_mtime_ns
            except OSError:
                return 0

        for f in sorted((f for f in self._files() if f not in self._used), key=mtime):
            if need <= 0:
                break
            try:
                size = f.stat().st_size
                f.unlink()
            except OSError:
                continue
            need -= size
            self._stored_bytes -= size

    def states(self, batch: "Batch"):
        """(B, T, hidden) float: the input of layer ``k`` for every position of ``batch``."""
        import torch

        digest = self._digest(batch)
        h = self.memory.get(digest)
        if h is not None:
            return h
        h = self._load(digest, batch)
        if h is not None:
            self.read += 1
        else:
            with torch.inference_mode():
                h, _ = run_layers(self.backbone, list(self.backbone.layers[: self.k]), input_ids=batch.input_ids,
                                  attention_mask=batch.attention_mask)
            self.computed += 1
            if self.store is not None:
                self._save(digest, h)
        size = h.numel() * h.element_size()
        while self.memory and self._held + size > self.memory_bytes:
            old = self.memory.pop(next(iter(self.memory)))  # the oldest batch
            self._held -= old.numel() * old.element_size()
        if size <= self.memory_bytes:
            self.memory[digest] = h
            self._held += size
        return h

    def forget(self) -> None:
        """Drop the states held in memory (the store keeps them): after the passes that share them."""
        self.memory.clear()
        self._held = 0

    def log_softmax(self, batch: "Batch"):
        """:func:`target_log_softmax` of the model (adapter enabled or not, as the caller set it)
        from the stored layer-k input: only layers k.. and the LM head run."""
        import torch

        _, hidden = run_layers(self.backbone, list(self.backbone.layers[self.k:]), inputs_embeds=self.states(batch),
                               attention_mask=batch.attention_mask)
        return torch.log_softmax(self.head(hidden[batch.rows, batch.cols]).float(), dim=-1)


def prefix_states(model, identity: dict | None = None, **kwargs) -> "PrefixStates | None":
    """A :class:`PrefixStates` for an adapted ``model`` whose LoRA weights all sit in decoder layers
    above the first, else None (score the whole model)."""
    k = prefix_layer(model, first_adapted_layer(model))
    return PrefixStates(model, k, identity, **kwargs) if k else None


def token_stats(logprobs, targets):
    """From (N, V) log-probs: log p(target), argmax, margin (see module docstring)."""
    import torch

    lp_target = logprobs.gather(1, targets[:, None]).squeeze(1)
    top2 = torch.topk(logprobs, k=2, dim=-1)
    argmax = top2.indices[:, 0]
    best_other = torch.where(argmax == targets, top2.values[:, 1], top2.values[:, 0])
    return lp_target, argmax, lp_target - best_other


def length_batches(encoded: Sequence, max_tokens: int = 8192, max_batch: int = 64) -> list[list]:
    """Sort by length (longest first: memory peaks early, not at the end) and pack under a budget
    of padded tokens, so short records are not padded to the longest one in the corpus."""
    lengths = [len(e.key_ids) + len(e.target_ids) for e in encoded]
    return [[encoded[i] for i in b] for b in batch_plan(lengths, max_tokens=max_tokens, max_batch=max_batch)]


def batch_plan(lengths: Sequence[int], max_tokens: int = 8192, max_batch: int = 64) -> list[list[int]]:
    """:func:`length_batches` on record lengths alone, as positions."""
    order, cuts = batch_cuts(lengths, max_tokens=max_tokens, max_batch=max_batch)
    return [order[a:b].tolist() for a, b in zip(cuts[:-1], cuts[1:])]


def batch_cuts(lengths: Sequence[int], max_tokens: int = 8192, max_batch: int = 64) -> tuple[np.ndarray, list[int]]:
    """The batches of :func:`length_batches`, compactly: the positions longest first (``order``)
    and where each batch starts in it (``cuts``, ending with ``len(order)``). The sliced audit
    plans the corpus's batches from its lengths and scores exactly these, since a record's float32
    numbers depend (in the last bits) on its batch-mates."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")  # longest first, ties in input order (as sorted(reverse=True))
    cuts, n, width = [0], 0, 0
    step = 1 << 16  # lengths as Python ints a block at a time: no list of the whole corpus
    for start in range(0, len(order), step):
        for pos, length in enumerate(lengths[order[start:start + step]].tolist(), start):
            grown = max(width, length)
            if n and (grown * (n + 1) > max_tokens or n >= max_batch):
                cuts.append(pos)
                n, grown = 0, length
            n += 1
            width = grown
    if len(order):
        cuts.append(len(order))
    return order, cuts


def check_context(model, encoded: Sequence) -> None:
    """A record longer than the model's context cannot be scored or trained: say which one."""
    from memlaw.errors import UserError

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    limit = getattr(lm.config, "max_position_embeddings", None)
    if not limit:
        return
    for e in encoded:
        n = len(e.key_ids) + len(e.target_ids)
        if n > limit:
            raise UserError(f"record {e.index + 1} of the corpus has {n} tokens, more than the model's "
                            f"context of {limit}", fix="split it into shorter records")


#: what ``precision`` may be: ``float32`` (the reference), ``bf16`` (a bfloat16 pass, float32
#: re-check of every record with a token near a verdict boundary), ``auto`` (bf16 where the device
#: has bfloat16 matmul instructions, else float32)
PRECISIONS = ("float32", "bf16", "auto")

#: bf16 scoring: a token's verdicts are taken from the bfloat16 pass only when each lies outside
#: its band, else its whole record is scored again in float32. Locked (p > 0.5): |log p + ln 2| ≥
#: ``BF16_LP_ABS + BF16_LP_REL·|log p|``; greedy-correct and which token is the argmax: the margin and
#: the top-two gap ≥ ``BF16_MARGIN``. Measured on SmolLM2-135M with a rank-8 adapter over 4,200 target
#: tokens (docs/performance.md), the bf16 pass (autocast backbone, float32 LM head) was off by at most
#: 0.2·|log p| + 0.006 in log p and 0.71 nats in a margin; the bands are twice that.
BF16_LP_ABS = 0.012
BF16_LP_REL = 0.4
BF16_MARGIN = 1.5
#: once more than this share of the records scored so far needs the float32 re-check (an adapter
#: with many tokens near p = 0.5 or near-ties), the rest is scored in float32 directly
BF16_GIVE_UP = 0.5


def bf16_fast(device) -> bool:
    """Does ``device`` multiply bfloat16 matrices natively (a CUDA GPU that supports bf16; a CPU
    with AVX512-BF16 or AMX), so that a bf16 pass is faster than float32?"""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device) -> str:
    """``float32`` or ``bf16`` for ``precision`` (one of :data:`PRECISIONS`) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_fast(device) else "float32"
    return precision


def _target_log_softmax_bf16(model, batch: Batch):
    """:func:`target_log_softmax` with the backbone under bfloat16 autocast and the LM head in
    float32 (bf16 logits of magnitude ~20 would be rounded by ~0.05 nats). Only for a model
    :func:`split_lm` splits (:func:`score` scores the others in float32)."""
    import torch

    backbone, head = split_lm(model)
    with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16):
        hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          use_cache=False).last_hidden_state[batch.rows, batch.cols]
    return torch.log_softmax(head(hidden.float()).float(), dim=-1)


def near_boundary(lp, mg, gap):
    """Tokens (bool tensor) whose bf16 verdicts could differ from float32's (see :data:`BF16_MARGIN`)."""
    return ((lp + LN2).abs() < BF16_LP_ABS + BF16_LP_REL * lp.abs()) | (mg.abs() < BF16_MARGIN) | (gap < BF16_MARGIN)


def score(model, encoded: Sequence, *, pad_id: int = 0, max_tokens: int = 8192, max_batch: int = 64,
          progress=False, description: str = "scoring", precision: str = "float32",
          info: dict | None = None, prefix: "PrefixStates | None" = None) -> list[RecordScores]:
    """Score every target token of every record; returns one RecordScores per record, input order.
    ``progress``: True for a progress bar, or a callback ``(stage, done, total, info)``.

    ``precision``: ``float32`` (default), ``bf16`` or ``auto`` (:data:`PRECISIONS`). bf16 scores in
    bfloat16 (about twice as fast on a CPU with AVX512-BF16), then scores again in float32 every
    record with a token whose verdict (locked, greedy-correct, which token is the argmax) lies within
    the bf16 error bound of its boundary (:func:`near_boundary`): the verdicts are float32's, the
    numbers of the other records bf16's (off by up to ~0.3 nats in log p). When more than
    :data:`BF16_GIVE_UP` of the records need the re-check, the rest of the corpus is scored in float32
    directly. ``info``: a dict that receives ``precision`` (as resolved), ``records``,
    ``rechecked_records`` and ``gave_up`` (switched to float32 part-way). ``prefix``: a
    :class:`PrefixStates` of ``model``: float32 batches run only the layers above the adapter's
    lowest one, from that layer's input computed once (same numbers)."""
    import torch

    check_context(model, encoded)
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    if precision == "bf16" and split_lm(model)[0] is None:
        precision = "float32"  # no float32 LM head to keep apart: the bands were measured with one
    # Results go into four corpus-wide arrays allocated up front, each record a view of its slice:
    # per-batch arrays kept alive between each batch's temporaries fragmented the heap (~90 MB of
    # resident memory at 1M target tokens on tiny).
    ends = np.cumsum([len(e.target_ids) for e in encoded])
    span = {e.index: (int(end) - len(e.target_ids), int(end)) for e, end in zip(encoded, ends)}
    total = int(ends[-1]) if len(ends) else 0
    flat = {"tg": np.empty(total, np.int64), "lp": np.empty(total, np.float64), "am": np.empty(total, np.int64),
            "mg": np.empty(total, np.float64)}
    batches = length_batches(encoded, max_tokens=max_tokens, max_batch=max_batch)
    recheck: set[int] = set()
    fast, seen, gave_up = precision == "bf16", 0, False
    with torch.inference_mode(), _progress(progress, description, sum(e.n_target for e in encoded)) as bar:
        for chunk in batches:
            if fast and seen and len(recheck) > BF16_GIVE_UP * seen:
                fast, gave_up = False, True
            batch = make_batch(chunk, pad_id, device, trim=True)
            if fast:
                logprobs = _target_log_softmax_bf16(model, batch)
            elif prefix is not None:
                logprobs = prefix.log_softmax(batch)
            else:
                logprobs = target_log_softmax(model, batch)
            lp, am, mg = token_stats(logprobs, batch.targets)
            seen += len(chunk) if fast else 0
            if fast:
                top2 = torch.topk(logprobs, k=2, dim=-1).values
                near = near_boundary(lp, mg, top2[:, 0] - top2[:, 1]).cpu().numpy()
            got = {k: (t.double().cpu().numpy() if t.is_floating_point() else t.cpu().numpy())
                   for k, t in (("lp", lp), ("am", am), ("mg", mg), ("tg", batch.targets))}
            for i, idx in enumerate(batch.indices):
                a, b = batch.offsets[i], batch.offsets[i + 1]
                s0, s1 = span[idx]
                for k, arr in flat.items():
                    arr[s0:s1] = got[k][a:b]
                if fast and near[a:b].any():
                    recheck.add(idx)
            bar(batch.offsets[-1])
    if recheck:
        again = score(model, [e for e in encoded if e.index in recheck], pad_id=pad_id, max_tokens=max_tokens,
                      max_batch=max_batch, progress=progress, description=f"{description} (float32 re-check)",
                      prefix=prefix)
        for s in again:
            s0, s1 = span[s.index]
            for k, arr in zip(("tg", "lp", "am", "mg"), (s.target_ids, s.logprob, s.argmax, s.margin)):
                flat[k][s0:s1] = arr
    if info is not None:
        info.update(precision=precision, rechecked_records=len(recheck), records=len(encoded), gave_up=gave_up)
    return [RecordScores(e.index, *(flat[k][span[e.index][0]:span[e.index][1]] for k in ("tg", "lp", "am", "mg")))
            for e in encoded]


class _progress:
    """Token progress: nothing (``enabled`` False), calls of a callback ``enabled(stage, done, total,
    info)`` with the tokens scored so far (the Python API), or with True the commands' bar
    (:class:`memlaw.cli.progress.TokenBar`)."""

    def __init__(self, enabled, description: str, total: int):
        self.enabled, self.description, self.total = enabled, description, total
        self.bar = None

    def __enter__(self):
        if callable(self.enabled):
            fn, done = self.enabled, [0]

            def advance(n):
                done[0] += int(n)
                fn(self.description, done[0], self.total, None)

            return advance
        if not self.enabled:
            return lambda n: None
        from memlaw.cli.progress import TokenBar

        self.bar = TokenBar(self.description, self.total)
        return self.bar.__enter__()

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def iter_tokens(scores: Iterable[RecordScores]):
    """(record index, position, RecordScores) for every target token: handy for reports."""
    for s in scores:
        for pos in range(len(s.target_ids)):
            yield s.index, pos, s
