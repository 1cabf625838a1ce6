"""`memplan estimate`: the LoRA rank a corpus needs, from a calibrated law card.

For a corpus and a card (see DESIGN.md, "Planner output"):

1. ℓ (target tokens) and L_before (mean target-token loss of the base model) from one scoring pass
   of the card's base model, cached by model identity and corpus hash (:mod:`memlaw.planner.baseloss`).
2. The ΔL the coverage target needs, from this corpus's own per-token base losses (not a mean):
   :mod:`memlaw.planner.coverage` turns ΔL into coverage (by default the adapter's ℓ·ΔL nats lock
   the cheapest tokens first), capped by the structural ceiling (conflicting keys, first tokens that share one
   context: :func:`memlaw.corpus.coverage_ceiling`) — a target above the ceiling is planned at the
   ceiling, with a warning.
3. The smallest rank the law predicts reaches that ΔL, r = ((ΔL_needed − b) · ℓ^β / C)^(1/α)
   (:func:`memlaw.law.rank_for_delta`; the shipped cards' capacity form has β = 1, b = 0: the rank
   whose C·r^α nats cover ℓ·ΔL_needed), rounded up to a practical rank (the next power of two ≥ r,
   at least 1). Its interval: the same inversion for every bootstrap sample of the card, 5th and
   95th percentiles (``lower``/``higher`` order statistics). The predicted coverage and loss at
   each power-of-two rank around it are reported too.
4. Trainable parameters = rank × params_per_rank (Σ in + out over the modules the card's template
   adapts on this model) and the adapter file's size in fp32 and bf16.
5. The capacity floor: bits = Σ over target tokens of max(0, −log2 p_base − 1) (what each token lacks
   to reach p = 0.5), over 3.6 bits per parameter (Morris et al. 2025, "How much do language models
   memorize?") → parameters → a rank. A law answer below the floor is raised to it.
6. Conflicts, warnings, and a ready ``peft.LoraConfig`` plus the equivalent ``memft train`` line.

Torch is used only through the base-loss measurement; a cached estimate does not import it.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from memlaw.card import LawCard, load_card, named_rank_phrase, named_rank_record, validation_phrase
from memlaw.errors import ParameterError
from memlaw.io import json_safe
from memlaw.law import Law, rank_for_delta
from memlaw.memft import ALL_LINEAR, METHODS, CorpusSpec, LoraTemplate
from memlaw.planner.baseloss import BACKENDS, measure_or_load, same_model
from memlaw.planner.coverage import DEFAULT_PREDICTOR, PREDICTORS, delta_for_coverage, predict

BITS_PER_PARAM = 3.6  # Morris et al. 2025: GPT-style models store ≈3.6 bits per parameter
INTERVAL_PERCENTILES = (5, 95)
MAX_CONFLICTS_LISTED = 20

__all__ = ["Estimate", "estimate", "resolve_card", "shipped_card_path", "practical_rank",
           "adapter_file_bytes", "BACKENDS", "BITS_PER_PARAM"]


# --------------------------------------------------------------------------------------------
# cards


def shipped_card_path(model_name: str) -> Path | None:
    """The card packaged for a model at ``memlaw/cards/<name>.json``, or None."""
    import importlib.resources
    import re

    if not model_name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model_name):
        return None  # paths and hub ids (with '/') have no packaged card
    res = importlib.resources.files("memlaw") / "cards" / f"{model_name}.json"
    try:
        if res.is_file():
            return Path(str(res))
    except OSError:
        return None
    return None


def resolve_card(law_path: str | None, model: str | None) -> tuple[LawCard, str, bool]:
    """(card, its path, shipped?) from ``--law`` or, without it, the card shipped for ``--model``."""
    from memlaw.models import DEFAULT_MODEL

    if law_path is not None:
        return load_card(law_path), str(law_path), False
    name = model or DEFAULT_MODEL
    path = shipped_card_path(name)
    if path is None:
        raise ParameterError("law", f"no law card ships for model '{name}'",
                             fix=f"calibrate one with `memplan calibrate --model {name}` and pass it with "
                                 "{set}CARD.json")
    return load_card(path), str(path), True


# --------------------------------------------------------------------------------------------
# pieces (pure, unit-testable)


def far_from_calibration(card: LawCard, predictor: str, L_before: float, lo: float, hi: float) -> str:
    """The warning for a corpus far below the card's calibration losses, with what the card's own
    held-out record says of the predictor in use (none recorded: untested on such data)."""
    head = (f"the card was calibrated on {card.data_kind} data (L_before {lo:.1f}–{hi:.1f} nats/token), far "
            f"above this corpus's {L_before:.2f}: ")
    v = card.validation.get(predictor)
    if v:
        where = card.validation.get("source", "the card's validation record")
        return (head + f"on held-out corpora of other kinds the `{predictor}` predictor's coverage was "
                f"{validation_phrase(v)} ({where}); for a tighter plan calibrate on your kind of data "
                "(memplan calibrate --data)")
    if card.law_form != "capacity":
        return (head + "on such corpora a random-token law over-predicted coverage at low ranks in held-out "
                "tests (docs/results.md §2); prefer 2× the rank, or calibrate on your kind of data "
                "(memplan calibrate --data)")
    return (head + f"this card records no held-out test of the `{predictor}` predictor on other kinds of data, so "
            "its coverage predictions there are untested; calibrate on your kind of data (memplan calibrate "
            "--data) or check the named rank with memaudit")


def heldout_named_rank(card: LawCard, predictor: str, coverage: float) -> dict | None:
    """The card's record of the named rank on held-out corpora, for the recorded target nearest
    ``coverage`` (None: no record, or one made with another predictor)."""
    rec = card.validation.get("named_rank") or {}
    found = named_rank_record(card.validation, coverage) if rec.get("predictor") == predictor else None
    return None if found is None else {"target": float(found[0]), "seeds": rec.get("seeds"), **found[1]}


def practical_rank(r: float | None) -> int | None:
    """The next power of two ≥ r (at least 1); None for an unreachable (infinite) rank."""
    if r is None or not math.isfinite(r):
        return None
    n = max(1, math.ceil(r - 1e-9 * max(1.0, r)))  # 4.0000000001 from float noise is still 4
    return 1 << (n - 1).bit_length()


def _percentile_ranks(law_samples, length: float, delta: float) -> tuple[list[float], int]:
    raws = []
    for s in law_samples:
        try:
            raws.append(rank_for_delta(Law(*map(float, s)), length, delta))
        except (ValueError, OverflowError, ZeroDivisionError):
            raws.append(math.inf)
    return raws, sum(1 for r in raws if not math.isfinite(r))


def adapter_file_bytes(modules: list, rank: int, dtype: str = "F32", itemsize: int = 4) -> tuple[int, int]:
    """(file bytes, header bytes) of the ``adapter_model.safetensors`` PEFT writes for LoRA on
    ``modules`` ([name, in, out]) at ``rank``: tensor data (params × itemsize) plus the safetensors
    header (8-byte length + JSON naming every tensor with dtype, shape and offsets, padded to 8),
    built here the way safetensors writes it. adapter_config.json (≈1 kB) is not counted."""
    header: dict = {"__metadata__": {"format": "pt"}}
    tensors = []
    for name, i, o in modules:
        tensors.append((f"base_model.model.{name}.lora_A.weight", [rank, int(i)]))
        tensors.append((f"base_model.model.{name}.lora_B.weight", [int(o), rank]))
    off = 0
    for tname, shape in sorted(tensors):
        n = shape[0] * shape[1] * itemsize
        header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    h = len(json.dumps(header, separators=(",", ":")).encode())
    h += (-h) % 8
    return 8 + h + off, 8 + h


class _ModuleList:
    """Stands in for a model in :meth:`LoraTemplate.matched_modules`: cached (name, in, out)."""

    def __init__(self, modules):
        from types import SimpleNamespace

        self._mods = [(n, SimpleNamespace(in_features=i, out_features=o)) for n, i, o in modules]

    def named_modules(self):
        return iter(self._mods)


# --------------------------------------------------------------------------------------------
# the estimate


@dataclass
class Estimate:
    """Everything ``memplan estimate`` reports. ``rank`` is the law's answer (practical: a power of
    two); ``recommended_rank`` is it raised to the capacity floor when the floor is higher, and
    ``trainable_params``, ``adapter_bytes``, ``lora_config`` and ``memft_command`` are for
    ``recommended_rank``. Ranks are None when the law says no rank reaches the target."""

    corpus: dict  # path, sha256, fmt, key_field, target_field
    model: str  # the base model measured (name as passed to load_base)
    model_identity: dict
    card: dict  # path, model, shipped, data_kind, r2, coefficients, domain, heldout (the predictor's record)
    backend: str
    coverage: float
    records: int
    target_tokens: int  # ℓ
    loss_before: float  # L_before (nats/token)
    base_coverage: float  # share of target tokens the base model already locks
    max_coverage: float  # the structural ceiling: no rank can lock more
    ceiling: dict  # memlaw.corpus.Ceiling.to_dict()
    coverage_planned: float  # min(coverage, max_coverage)
    predictor: str  # how ΔL maps to coverage (memlaw.planner.coverage)
    loss_target: float  # the mean loss at which this corpus's tokens reach coverage_planned
    delta_needed: float  # L_before − loss_target
    any_rank: bool  # the base model alone already locks coverage_planned
    rank_raw: float | None  # continuous inversion of the law (None: unreachable)
    rank: int | None  # next power of two ≥ rank_raw, ≥ 1
    rank_interval: list | None  # [lo, hi] practical ranks at the 5th/95th percentiles
    rank_interval_raw: list | None  # [lo, hi] continuous (None inside: unreachable)
    bootstrap: dict  # samples, unreachable, percentiles
    recommended_rank: int | None
    predicted_loss_after: float | None  # mean loss predicted at recommended_rank (never negative)
    predicted_coverage: float | None  # coverage predicted at recommended_rank
    coverage_by_rank: list  # [{rank, delta, coverage, loss_after}] at powers of two around it
    extrapolation: dict  # how far rank / ℓ lie outside the calibrated domain (factor; 1 = inside)
    params_per_rank: int | None
    trainable_params: int | None
    adapter_bytes: dict | None  # fp32, bf16 (adapter_model.safetensors)
    adapter_header_bytes: int | None
    full_rank: dict | None  # min / max over adapted modules of min(in, out), modules
    capacity_floor_bits: float
    capacity_floor_params: float
    capacity_floor_rank: int | None
    information_bits: float  # Σ −log2 p_base over target tokens
    n_conflicts: int
    conflicts: list  # the first few: key, wheres, targets
    warnings: list
    notes: list
    lora_config: dict | None
    lora_config_python: str | None
    memft_command: str | None
    cached: bool
    seconds: float
    measure_seconds: float  # the (possibly cached) measuring pass's own time
    bits_per_param: float = BITS_PER_PARAM
    key_scale: float = 1.0  # the share of the law's nats counted for this corpus's keys (Card.key_scale)
    headroom: float = 1.0  # the rank gives headroom × delta_needed (÷ key_scale) of the law's nats (Card.headroom)

    def to_dict(self) -> dict:
        return json_safe(asdict(self))

    def peft_config(self):
        """``peft.LoraConfig`` for ``recommended_rank`` with the card's template (None when no rank
        reaches the target). Imports PEFT (and torch)."""
        if self.lora_config is None:
            return None
        from peft import LoraConfig

        return LoraConfig(**self.lora_config)


def estimate(corpus_spec: CorpusSpec, card: LawCard, coverage: float = 1.0, *, model: str | None = None,
             card_path: str | None = None, shipped: bool = False, use_cache: bool = True,
             backend: str = "auto", device: str = "cpu", progress: bool = False, base=None,
             predictor: str = DEFAULT_PREDICTOR, log: Callable[[str], None] | None = None) -> Estimate:
    """Plan the LoRA rank ``corpus_spec`` needs to reach ``coverage`` under ``card``'s law.

    ``model`` overrides the card's base model name (e.g. the same model at another path); its
    identity is still checked against the card's hashes. ``base`` is an already loaded
    :class:`memlaw.models.Base` to measure with (else loaded on a cache miss). ``backend``:
    ``auto`` (see :func:`memlaw.vllm_backend.choose_backend`), ``transformers`` or ``vllm``."""
    from memlaw.backends import get_backend

    start = time.perf_counter()
    warnings: list[str] = []
    notes: list[str] = []
    engine = get_backend(backend)
    backend = engine.name  # what the cache key and the estimate record
    if engine.note:
        notes.append(engine.note)

    # 1. everything the card and the options alone decide, before any model work
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not math.isfinite(coverage) \
            or not 0 < coverage <= 1:
        raise ParameterError("coverage", f"{{name}} must lie in (0, 1], got {coverage}",
                             fix="e.g. {set}0.99 (share of target tokens locked); 1.0 = every token")
    if predictor not in PREDICTORS:
        raise ParameterError("predictor", f"unknown coverage predictor '{predictor}'",
                             fix=f"use one of {', '.join(PREDICTORS)}")
    card_model = card.base_model.get("name") if isinstance(card.base_model, dict) else None
    model_name = model or card_model
    if not model_name:
        raise ParameterError("model", f"{card_path + ': ' if card_path else ''}the law card names no base model",
                             fix="pass {set}NAME (the model the card was calibrated on)")
    if model and card_model and model != card_model:
        notes.append(f"measuring with --model {model}; the card was calibrated on {card_model}")
    law = card.law()
    template, tmpl_warnings = _template_of(card)
    warnings += tmpl_warnings

    # 2. the corpus: records (validated), conflicts, hash
    from memlaw.corpus import corpus_sha256, digits_only_keys, find_conflicts

    records = corpus_spec.read()
    conflicts = find_conflicts(records)
    sha = corpus_sha256(corpus_spec.path)

    # 3. ℓ, L_before, floor bits: cached or measured
    bl, cached, bl_warnings = measure_or_load(corpus_spec, records, model_name, sha, use_cache=use_cache,
                                              backend=backend, device=device, progress=progress, base=base,
                                              log=log, context=predictor == "context")
    warnings += bl_warnings
    identity = dict(bl.model_identity)
    identity["name"] = model_name
    if isinstance(card.base_model, dict):
        same = same_model(identity, card.base_model)
        if same is False:
            warnings.append(f"the model measured ({model_name}) is not the one the card was calibrated on: its "
                            f"config/weight hashes differ from the card's, so the law may not apply")
        elif same is None:
            notes.append("the card or the model lacks config/weight hashes: could not check they match")
    ell = bl.target_tokens
    L_before = bl.loss_before

    # 4. the template on this model
    matched = template.matched_modules(_ModuleList(bl.modules)) if bl.modules else []
    card_ppr = card.template.get("params_per_rank")
    card_ppr = int(card_ppr) if isinstance(card_ppr, (int, float)) and not isinstance(card_ppr, bool) \
        and card_ppr > 0 else None
    if matched:
        ppr = sum(i + o for _, i, o in matched)
        if card_ppr is not None and card_ppr != ppr:
            warnings.append(f"the card's template has {card_ppr:,} parameters per rank but matches {ppr:,} on "
                            f"{model_name}: a different model or template, so the law's rank scale may not apply")
        full = {"min": min(min(i, o) for _, i, o in matched), "max": max(min(i, o) for _, i, o in matched),
                "modules": len(matched)}
    else:
        ppr = card_ppr
        full = None
        warnings.append(f"the card's LoRA template (modules {', '.join(template.target_modules)}) matches no "
                        f"linear module of {model_name}" + ("" if ppr else "; parameter counts unknown"))

    # 5. the coverage target → the ΔL this corpus needs (from its per-token base losses)
    profile = bl.loss_profile()
    max_cov = bl.max_coverage
    planned = float(coverage)
    if coverage > max_cov + 1e-12:
        planned = max_cov
        blocked = bl.ceiling.get("blocked_tokens", 0)
        warnings.append(f"coverage {coverage:g} is out of reach whatever the rank: {blocked:,} target token(s) "
                        f"share their context with a different continuation (conflicting keys, or first tokens "
                        f"predicted from the same key or from BOS alone), so at most {max_cov:.4f} can be locked; "
                        f"planning for {max_cov:.4f}")
    any_rank = bl.base_coverage >= planned
    delta_needed = 0.0 if any_rank else delta_for_coverage(profile, planned, predictor)
    # records told apart only by their key's digits get less of the law's nats (the card's key factor)
    digit_keyed, example_key = digits_only_keys(records)
    key_scale = card.key_scale(digit_keyed)
    # at high targets the rank must give spare nats: the last percent locks only with room to spare
    headroom = 1.0 if any_rank else card.headroom(planned, predictor)
    law_delta_needed = headroom * delta_needed / key_scale
    loss_target = max(0.0, profile.mean_loss(0.0) - delta_needed)
    if headroom > 1.0:
        notes.append(f"the rank is chosen for {headroom:.2f}× the ΔL the {predictor} predictor needs: on the card's "
                     f"held-out corpora the recipe locked the last tokens of a {planned:g} target only with nats "
                     "to spare (the card's target_headroom; docs/results.md §2, 'The last percent')")
    if any_rank:
        notes.append(f"the base model alone already locks {bl.base_coverage:.1%} of the target tokens ≥ "
                     f"{planned:g}: no adapter is needed for that (rank 1 shown)")

    # 5b. the law: the smallest rank whose ΔL reaches the need
    raw = 0.0 if any_rank else rank_for_delta(law, ell, law_delta_needed)
    if raw == 0.0 and not any_rank:
        notes.append(f"the law's offset b = {law.b:.4g} already covers ΔL_needed = {delta_needed:.4g}: the "
                     "smallest rank, 1, is predicted to suffice")
    reachable = math.isfinite(raw)
    rank = practical_rank(raw)
    if not reachable:
        warnings.append(f"the law says no rank reaches ΔL = {delta_needed:.4g} at ℓ = {ell:,} "
                        f"(α = {law.alpha:.4g}): the target coverage is out of reach for this template; "
                        "try a lower --coverage, a larger template, or split the corpus")

    samples = card.bootstrap_samples or []
    raws, n_unreach = _percentile_ranks(samples, ell, law_delta_needed) if not any_rank else ([0.0] * len(samples), 0)
    if raws:
        arr = np.array(raws, dtype=float)
        lo_raw = float(np.percentile(arr, INTERVAL_PERCENTILES[0], method="lower"))
        hi_raw = float(np.percentile(arr, INTERVAL_PERCENTILES[1], method="higher"))
        interval_raw = [lo_raw, hi_raw]
        interval = [practical_rank(lo_raw), practical_rank(hi_raw)]
        if n_unreach:
            warnings.append(f"{n_unreach} of {len(raws)} bootstrap fits of the law say no rank reaches the target"
                            + ("; the interval's upper end is unbounded" if not math.isfinite(hi_raw) else ""))
    else:
        interval_raw = interval = None
        warnings.append("the card has no bootstrap samples: no interval for the rank")

    # 6. capacity floor
    floor_params = bl.floor_bits / BITS_PER_PARAM
    floor_rank = math.ceil(floor_params / ppr - 1e-12) if ppr else None
    recommended = rank
    if rank is not None and floor_rank is not None and rank < floor_rank:
        recommended = practical_rank(floor_rank)
        warnings.append(f"the law's rank {rank} is below the capacity floor: the corpus carries "
                        f"{bl.floor_bits:,.0f} bits beyond what the base model already locks, which needs "
                        f"≥ {floor_params:,.0f} parameters at {BITS_PER_PARAM} bits each = rank {floor_rank}; "
                        f"recommending rank {recommended}")

    # 7. domain and template limits
    dom_l, dom_r = card.domain.get("length"), card.domain.get("rank")
    extrapolation = {"length": _outside(ell, dom_l), "rank": _outside(recommended, dom_r) if not any_rank else 1.0}
    if extrapolation["length"] > 1:
        warnings.append(f"ℓ = {ell:,} target tokens lies outside the card's calibrated lengths "
                        f"{dom_l[0]:,.0f}–{dom_l[1]:,.0f} (by a factor {extrapolation['length']:.3g}): the law is "
                        "extrapolated")
    if extrapolation["rank"] > 1:
        warnings.append(f"rank {recommended} lies outside the card's calibrated ranks {dom_r[0]:g}–{dom_r[1]:g} "
                        f"(by a factor {extrapolation['rank']:.3g}): the law is extrapolated")
    if recommended is not None and full is not None:
        if recommended > full["max"]:
            warnings.append(f"rank {recommended} exceeds the full rank of every adapted module (≤ {full['max']}): "
                            "LoRA cannot hold more than full fine-tuning of these modules; adapt more modules or "
                            "layers, or split the corpus")
        elif recommended > full["min"]:
            small = sorted({n.split(".")[-1] for n, i, o in matched if min(i, o) < recommended})
            warnings.append(f"rank {recommended} exceeds the full rank {full['min']} of some adapted modules "
                            f"({', '.join(small)}): beyond it they gain nothing, though their parameters still count")
    card_lb = [float(p["loss_before"]) for p in card.points if isinstance(p, dict)
               and isinstance(p.get("loss_before"), (int, float))]
    if card_lb and not any_rank and L_before < 0.5 * min(card_lb):
        warnings.append(far_from_calibration(card, predictor, L_before, min(card_lb), max(card_lb)))
    if conflicts:
        warnings.append(f"{len(conflicts)} key(s) have conflicting targets: no adapter can lock all of them, "
                        "so coverage 1.0 is out of reach for those records")
    if digit_keyed >= 0.5 and key_scale == 1.0:
        warnings.append(f"{digit_keyed:.0%} of the records are told apart only by the digits of their key "
                        f"(e.g. {example_key!r}) and their targets are digits: the coverage predicted here counts "
                        "the targets only, and on held-out corpora of this kind the recipe reached far less than "
                        "predicted (docs/results.md §2, 'The kind of key'); train R and 2R and audit both, or "
                        "give the records distinct non-numeric keys")
    elif digit_keyed > 0 and key_scale != 1.0:
        warnings.append(f"{digit_keyed:.0%} of the records are told apart only by the digits of their key "
                        f"(e.g. {example_key!r}) and their targets are digits: a rank is counted at "
                        f"{key_scale:.0%} of the law's nats (the card's key factor "
                        f"{card.key_factor['digits_only_keys']:.2f}, measured on content-free points; "
                        "docs/results.md §2, 'The key factor'); distinct non-numeric keys would need less rank")
    heldout_rank = heldout_named_rank(card, predictor, coverage)
    if recommended is not None and heldout_rank is not None:
        notes.append(f"held out ({card.validation.get('source', 'the card')}): "
                     f"{named_rank_phrase(card.validation, coverage)}")

    # 8. sizes and configs
    trainable = recommended * ppr if (recommended is not None and ppr) else None
    adapter_bytes = header = None
    if trainable is not None:
        if matched:
            fp32, header = adapter_file_bytes(matched, recommended, "F32", 4)
            bf16, _ = adapter_file_bytes(matched, recommended, "BF16", 2)
        else:
            fp32, bf16 = trainable * 4, trainable * 2
        adapter_bytes = {"fp32": fp32, "bf16": bf16}
        notes.append("adapter size: adapter_model.safetensors = parameters × 4 (fp32) or × 2 (bf16) bytes"
                     + (f" plus a {header:,}-byte header (tensor names, shapes, offsets)" if header else "")
                     + "; adapter_config.json (≈1 kB) not counted")
    def at_rank(r: int) -> dict:
        delta = key_scale * max(0.0, float(law.predict(r, ell)))
        cov, after = predict(profile, delta, predictor, ceiling=max_cov)
        return {"rank": int(r), "delta": delta, "coverage": max(cov, bl.base_coverage), "loss_after": after}

    predicted_after = predicted_cov = None
    by_rank: list[dict] = []
    if recommended is not None:
        top = at_rank(recommended)
        predicted_after, predicted_cov = top["loss_after"], top["coverage"]
        by_rank = [at_rank(r) for r in sorted({max(1, recommended // 4), max(1, recommended // 2), recommended,
                                               2 * recommended})]
    lora_cfg = _lora_config(template, recommended) if recommended is not None else None
    snippet = _lora_python(lora_cfg) if lora_cfg else None
    command = _memft_command(corpus_spec, model_name, recommended, template, card.recipe) \
        if recommended is not None else None

    card_info = {"path": card_path, "model": card_model, "shipped": shipped, "data_kind": card.data_kind,
                 "r2": card.r2, "coefficients": dict(card.coefficients), "domain": dict(card.domain),
                 "delta_definition": card.delta_definition, "n_not_converged": card.n_not_converged,
                 # how this predictor's coverage fared on the card's held-out corpora (None: untested)
                 "heldout": card.validation.get(predictor),
                 # how often the rank this card and predictor named reached a target near this one
                 "heldout_named_rank": heldout_rank,
                 "key_factor": dict(card.key_factor), "target_headroom": dict(card.target_headroom)}
    return Estimate(
        corpus={"path": str(corpus_spec.path), "sha256": sha, "fmt": corpus_spec.fmt,
                "key_field": corpus_spec.key_field, "target_field": corpus_spec.target_field},
        model=model_name, model_identity=identity, card=card_info, backend=backend, coverage=float(coverage),
        records=bl.records, target_tokens=ell, loss_before=L_before, base_coverage=bl.base_coverage,
        max_coverage=max_cov, ceiling=dict(bl.ceiling), coverage_planned=planned, predictor=predictor,
        loss_target=float(loss_target), delta_needed=float(delta_needed), any_rank=bool(any_rank),
        rank_raw=float(raw) if reachable else None, rank=rank if reachable else None,
        rank_interval=interval, rank_interval_raw=interval_raw,
        bootstrap={"samples": len(raws), "unreachable": n_unreach, "percentiles": list(INTERVAL_PERCENTILES)},
        recommended_rank=recommended, predicted_loss_after=predicted_after, predicted_coverage=predicted_cov,
        coverage_by_rank=by_rank, extrapolation=extrapolation, params_per_rank=ppr,
        trainable_params=trainable, adapter_bytes=adapter_bytes, adapter_header_bytes=header, full_rank=full,
        capacity_floor_bits=bl.floor_bits, capacity_floor_params=floor_params, capacity_floor_rank=floor_rank,
        information_bits=bl.info_bits, n_conflicts=len(conflicts),
        conflicts=[{"key": c.key, "wheres": c.wheres, "targets": c.targets} for c in conflicts[:MAX_CONFLICTS_LISTED]],
        warnings=warnings, notes=notes, lora_config=lora_cfg, lora_config_python=snippet, memft_command=command,
        cached=cached, seconds=round(time.perf_counter() - start, 3), measure_seconds=bl.measure_seconds,
        key_scale=float(key_scale), headroom=float(headroom),
    )


def _outside(value, domain) -> float:
    """How far ``value`` lies outside [lo, hi], as a factor (1.0 inside; 2.0 = twice the max or half
    the min)."""
    if value is None or not domain:
        return 1.0
    lo, hi = float(domain[0]), float(domain[1])
    v = float(value)
    if v > hi > 0:
        return v / hi
    if 0 < v < lo:
        return lo / v
    return 1.0


# --------------------------------------------------------------------------------------------
# template, LoraConfig, memft command


def _template_of(card: LawCard) -> tuple[LoraTemplate, list[str]]:
    t = card.template if isinstance(card.template, dict) else {}
    warnings = []
    mods = t.get("target_modules")
    if not mods:
        warnings.append("the card does not record its LoRA target modules: assuming all linear layers")
        mods = list(ALL_LINEAR)
    alpha = t.get("alpha")
    if alpha is None:
        warnings.append("the card does not record its LoRA alpha: assuming 2*rank")
        alpha = "2*rank"
    template = LoraTemplate.from_dict({"target_modules": mods, "layers": t.get("layers"), "alpha": alpha,
                                       "dropout": t.get("dropout", 0.0) or 0.0})
    try:
        template.alpha_for(1)
    except (ValueError, TypeError):
        warnings.append(f"the card's LoRA alpha {alpha!r} is not a number or k*rank: assuming 2*rank")
        template.alpha = "2*rank"
    return template, warnings


def _lora_config(template: LoraTemplate, rank: int) -> dict:
    return {"r": int(rank), "lora_alpha": template.alpha_for(rank), "target_modules": list(template.target_modules),
            "layers_to_transform": list(template.layers) if template.layers is not None else None,
            "lora_dropout": float(template.dropout), "bias": "none", "task_type": "CAUSAL_LM"}


def _lora_python(cfg: dict) -> str:
    args = "".join(f"    {k}={v!r},\n" for k, v in cfg.items())
    return f"from peft import LoraConfig, get_peft_model\n\nconfig = LoraConfig(\n{args})\n" \
           "model = get_peft_model(base_model, config)\n"


def _memft_command(spec: CorpusSpec, model: str, rank: int, template: LoraTemplate, recipe: dict) -> str:
    q = shlex.quote
    alpha = template.alpha if isinstance(template.alpha, str) else f"{float(template.alpha):g}"
    parts = ["memft", "train", q(str(spec.path)), "--model", q(model), "--rank", str(rank)]
    recipe = recipe if isinstance(recipe, dict) else {}
    method = recipe.get("method", recipe.get("objective"))
    if method in METHODS:
        parts += ["--method", method]
    for key, flag in (("lr", "--lr"), ("batch_size", "--batch-size"), ("max_steps", "--max-steps"),
                      ("patience", "--patience"), ("seed", "--seed"), ("cycles", "--cycles")):
        v = recipe.get(key)
        if key == "batch_size" and v == "all":
            v = 10**6  # calibrated with every record in one batch
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
    for key, flag in (("schedule", "--schedule"), ("train_dtype", "--train-dtype")):
        if isinstance(recipe.get(key), str):
            parts += [flag, q(recipe[key])]
    if recipe.get("until_converged") is True:
        parts.append("--until-converged")
        # the test decides when training stops: the card's tolerances, stated
        for key in ("converge_rel_tol", "converge_abs_tol", "converge_cov_tol"):
            v = recipe.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                parts += [f"--{key.replace('_', '-')}", f"{float(v):g}"]
    if recipe.get("eos") is True:
        parts.append("--eos")
    parts += ["--target-modules", q(",".join(template.target_modules))]
    if template.layers is not None:
        parts += ["--layers", q(",".join(str(x) for x in template.layers))]
    parts += ["--alpha", q(alpha)]
    if spec.target_field is not None:
        if spec.key_field is not None:
            parts += ["--key-field", q(spec.key_field)]
        parts += ["--target-field", q(spec.target_field)]
    elif spec.fmt != "auto":
        parts += ["--format", q(spec.fmt)]
    parts += ["--out", q(f"adapters/{Path(spec.path).stem}-r{rank}")]
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# the human table
