"""memlaw from Python: plan a rank, train an adapter, audit it, calibrate a law.

    import memlaw

    est = memlaw.plan("faq.jsonl", coverage=0.99)                    # → Estimate (no torch when cached)
    ad = memlaw.train("faq.jsonl", "runs/faq", rank=est.recommended_rank)   # → TrainedAdapter
    res = memlaw.audit(ad.path)                                       # → AuditResult (a folder or a hub id)
    res.passed(memlaw.Gate(min_coverage=0.99))

Each function takes typed objects (:class:`Recipe`, :class:`LoraTemplate`, :class:`Gate`,
:class:`Runtime`, :class:`Corpus`) and returns one; the CLIs (``memlaw/cli/``) are translators from
flags to these calls. Errors are :class:`memlaw.errors.UserError` with one line; a bad argument
raises :class:`memlaw.errors.ParameterError`, which names the Python parameter (``min_coverage``),
never a command-line flag. Progress goes to a callback (``progress=print`` shows it all).

This module imports nothing heavy at import time: ``memlaw.plan`` on a cached corpus never
imports torch.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from memlaw.auditor.audit import AuditResult, Gate
from memlaw.backends import CHOICES as BACKEND_CHOICES
from memlaw.errors import ParameterError
from memlaw.memft import CorpusSpec, LoraTemplate, Recipe
from memlaw.sidecar import Sidecar

# PEFT calls a transformers property that warns about its own deprecation: noise for our users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

#: A corpus file and how to read it: ``Corpus("faq.jsonl", fmt="messages")``.
Corpus = CorpusSpec

__all__ = ["Runtime", "Progress", "Corpus", "Gate", "Recipe", "LoraTemplate", "TrainedAdapter", "plan", "audit",
           "train", "repair", "calibrate", "card_defaults"]

# --------------------------------------------------------------------------------------------
# settings and progress

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_BACKENDS = BACKEND_CHOICES
_VLLM_MODES = ("auto", "lora", "merged")
_DTYPES = ("float32", "bfloat16", "float16")
_PRECISIONS = ("float32", "bf16", "auto")  # memlaw.scoring.PRECISIONS, without importing numpy here


@dataclass(frozen=True)
class Runtime:
    """Where and how models run, shared by every call; frozen, so one object can be reused safely.

    ``device``: ``auto`` (a CUDA GPU when visible, else the CPU), ``cpu``, ``cuda``, ``cuda:1`` ….
    ``backend``: the scoring engine for audits and L_before: ``auto`` (vLLM where it is installed
    and a GPU is visible), ``transformers`` or ``vllm``; ``vllm_mode``: ``auto``, ``lora`` or ``merged``
    (see :func:`memlaw.vllm_backend.choose_vllm_mode`); ``tensor_parallel_size``: GPUs vLLM splits the
    model over.
    ``dtype``: the base model's weights. Audits and plans score in ``float32`` only (p > 0.5 near
    the threshold needs it); calibration may load ``bfloat16``. Training precision is the
    :class:`Recipe`'s ``train_dtype``. ``precision``: how an audit's transformers pass computes:
    ``float32`` (default), ``bf16`` (a bfloat16 pass, then float32 again for every record with a token
    near a verdict boundary: float32's verdicts, other numbers within ~0.3 nats; needs
    ``effect_check=False``) or ``auto`` (bf16 on a device with bfloat16 matmul instructions when the
    effect check is off, else float32); see :func:`memlaw.scoring.score`.
    ``trust_remote_code``: let a hub model run its own code.
    ``allow_pickle``: accept a pickle adapter file (``.bin``/``.pt``), which can run code."""

    device: str = "auto"
    backend: str = "auto"
    vllm_mode: str = "auto"
    tensor_parallel_size: int = 1
    dtype: str = "float32"
    precision: str = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def __post_init__(self):
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ParameterError("device", f"unknown device {self.device!r}",
                                 fix="use auto, cpu, cuda, cuda:N or mps")
        for name, allowed in (("backend", _BACKENDS), ("vllm_mode", _VLLM_MODES), ("dtype", _DTYPES),
                              ("precision", _PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ParameterError(name, f"unknown {{name}} {getattr(self, name)!r}",
                                     fix=f"use one of {', '.join(allowed)}")
        tp = self.tensor_parallel_size
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ParameterError("tensor_parallel_size", f"{{name}} must be an integer ≥ 1, got {tp!r}")
        for name in ("trust_remote_code", "allow_pickle"):
            if not isinstance(getattr(self, name), bool):
                raise ParameterError(name, f"{{name}} must be True or False, got {getattr(self, name)!r}")

    def resolved_device(self) -> str:
        """``device`` with ``auto`` resolved (imports torch)."""
        from memlaw.planner.baseloss import resolve_device

        return resolve_device(self.device)

    def _scoring(self) -> "Runtime":
        if self.dtype != "float32":
            raise ParameterError("dtype", f"audits and plans score in float32, got runtime {{name}} {self.dtype!r}",
                                 fix="use Runtime(dtype='float32'); bfloat16 training is Recipe(train_dtype=...)")
        return self


@dataclass(frozen=True)
class Progress:
    """One progress report. ``stage``: ``L_before`` / ``auditing`` (target tokens scored),
    ``train`` (steps; ``info`` holds the epoch's loss and coverage at the end of an epoch),
    ``calibrate`` (sweep points; ``info`` is the finished point), or ``note`` (``message`` only:
    a one-line remark such as "loading base model …"). ``total`` may be None."""

    stage: str
    done: int = 0
    total: int | None = None
    info: dict | None = None
    message: str | None = None

    def __str__(self) -> str:
        if self.message is not None:
            return f"[memlaw] {self.message}"
        return f"{self.stage} {self.done}/{self.total if self.total is not None else '?'}"


ProgressCallback = Callable[[Progress], Any]


def _internal(progress) -> Any:
    """The API's ``progress`` as the internals take it: False (silent), True (progress bars and
    notes on the terminal, as the CLIs show them) or ``fn(stage, done, total, info)``."""
    if progress is None or progress is False:
        return False
    if progress is True:
        return True
    if not callable(progress):
        raise ParameterError("progress", f"{{name}} must be a callable taking a memlaw.Progress, True or None, "
                                         f"got {type(progress).__name__}")
    return lambda stage, done, total, info: progress(Progress(stage, done, total, info))


def _note(progress) -> Callable[[str], None] | None:
    """Where one-line notes go: the callback, or with ``progress=True`` stderr (as the CLIs print them)."""
    if progress is True:
        from rich.console import Console

        err = Console(stderr=True, highlight=False)
        return lambda msg: err.print(f"[memlaw] {msg}", markup=False)
    if callable(progress):
        return lambda msg: progress(Progress("note", message=msg))
    return None


def _corpus(corpus, param: str = "corpus") -> CorpusSpec:
    if isinstance(corpus, CorpusSpec):
        return corpus
    if isinstance(corpus, (str, os.PathLike)):
        return CorpusSpec(os.fspath(corpus))
    raise ParameterError(param, f"{{name}} must be a path or a memlaw.Corpus, got {type(corpus).__name__}")


def _runtime(runtime) -> Runtime:
    if runtime is None:
        return Runtime()
    if not isinstance(runtime, Runtime):
        raise ParameterError("runtime", f"{{name}} must be a memlaw.Runtime, got {type(runtime).__name__}")
    return runtime


def _typed(value, cls, param: str):
    if value is not None and not isinstance(value, cls):
        raise ParameterError(param, f"{{name}} must be a memlaw.{cls.__name__}, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------
# plan


def plan(corpus, *, model: str | None = None, law=None, coverage: float = 1.0, predictor: str | None = None,
         runtime: Runtime | None = None, use_cache: bool = True, progress: ProgressCallback | None = None):
    """The LoRA rank ``corpus`` needs to lock ``coverage`` of its target tokens
    (:class:`memlaw.planner.estimate.Estimate`: ``recommended_rank``, its interval, sizes, warnings,
    ``peft_config()`` …).

    ``law``: a law card (path or :class:`memlaw.card.LawCard`); default: the card shipped for
    ``model`` (default ``smollm2-135m``). ``model``: the base model to measure L_before with
    (default: the card's). The base-model pass is cached by model and corpus hash; a cached plan
    loads no model and imports no torch."""
    from memlaw.card import LawCard
    from memlaw.models import check_model_name
    from memlaw.planner.coverage import DEFAULT_PREDICTOR
    from memlaw.planner.estimate import estimate, resolve_card

    rt = _runtime(runtime)._scoring()
    spec = _corpus(corpus)
    if model is not None:
        check_model_name(model)
    if isinstance(law, LawCard):
        card, card_path, shipped = law, None, False
    elif law is None or isinstance(law, (str, os.PathLike)):
        card, card_path, shipped = resolve_card(os.fspath(law) if law is not None else None, model)
    else:
        raise ParameterError("law", f"{{name}} must be a path or a LawCard, got {type(law).__name__}")
    return estimate(spec, card, coverage, model=model, card_path=card_path, shipped=shipped, use_cache=use_cache,
                    backend=rt.backend, device=rt.device, progress=_internal(progress),
                    predictor=predictor or DEFAULT_PREDICTOR, log=_note(progress))


# --------------------------------------------------------------------------------------------
# audit and repair


def audit(adapter, corpus=None, *, base_model: str | None = None, runtime: Runtime | None = None,
          force_base: bool = False, revision: str | None = None, effect_check: bool = True,
          progress: ProgressCallback | None = None, keep_records: bool = True) -> AuditResult:
    """Score every target token of ``corpus`` under the LoRA ``adapter``: an adapter folder or a
    Hugging Face Hub id (``user/adapter``, as ``PeftModel.from_pretrained`` takes it; ``revision``
    a branch, tag or commit; ``HF_HUB_OFFLINE=1`` reads the local cache only).

    ``corpus``: default the one recorded in the adapter's ``memlaw.json``. ``base_model``: default
    the one its ``adapter_config.json`` (or memlaw's sidecar) names. ``force_base``: audit even when
    the base model's identity differs from the one the adapter records. ``effect_check``: compare
    with the base model's scores and flag an adapter with no measurable effect (``summary["effect"]``,
    a warning; ``Gate(fail_on_no_effect=True)`` fails on it). Check the result with
    ``result.passed(Gate(min_coverage=0.99))``. ``keep_records=False``: a corpus of any size in
    bounded memory (transformers backend): scored in slices, ``result.records`` read back one at a
    time from a temporary file that ``result.close()`` deletes; the same summary and reports."""
    from memlaw.auditor.audit import audit_adapter
    from memlaw.backends import get_backend
    from memlaw.models import resolve_adapter

    rt = _runtime(runtime)._scoring()
    precision = rt.precision
    if precision != "float32" and effect_check:
        if precision == "bf16":
            raise ParameterError("precision", "{name} 'bf16' needs effect_check=False: the no-effect check compares "
                                              "with the base model to 1e-3 nats, finer than a bf16 pass resolves",
                                 fix="pass effect_check=False, or score in float32")
        precision = "float32"
    spec = _corpus(corpus) if corpus is not None else None
    local, hub_id = resolve_adapter(adapter, revision=revision, allow_pickle=rt.allow_pickle)
    engine = get_backend(rt.backend, vllm_mode=rt.vllm_mode, tensor_parallel_size=rt.tensor_parallel_size,
                         precision=precision)
    result = audit_adapter(local, spec, base_model, allow_pickle=rt.allow_pickle,
                           trust_remote_code=rt.trust_remote_code, force_base=force_base,
                           device=rt.resolved_device(), progress=_internal(progress), backend=engine,
                           vllm_mode=rt.vllm_mode, effect_check=effect_check,
                           tensor_parallel_size=rt.tensor_parallel_size, keep_records=keep_records)
    if hub_id is not None:
        result.adapter = hub_id
    return result


def repair(adapter, out, corpus=None, *, method: str = "sft", steps: int = 300, lr: float | None = None,
           batch_size: int | None = None, gate: Gate | None = None, base_model: str | None = None,
           runtime: Runtime | None = None, force_base: bool = False, revision: str | None = None,
           effect_check: bool = True, progress: ProgressCallback | None = None,
           on_before: Callable[[AuditResult], Any] | None = None):
    """Continue training ``adapter`` (``method``: sft, ot, sw, curriculum) into the NEW folder ``out``
    (the input is never modified) until ``gate`` holds (default: every token locked) or ``steps``, and audit the result
    (:class:`memlaw.auditor.repair.RepairResult`: ``before``, ``after``, ``steps``, ``stop_reason``).
    ``lr`` / ``batch_size`` default to the adapter's own training (its ``memlaw.json``), else its
    base model's law card, else :class:`Recipe`'s. ``on_before(audit)`` sees the audit before training."""
    from memlaw.auditor.repair import repair as _repair
    from memlaw.auditor.repair import repair_defaults
    from memlaw.models import resolve_adapter

    rt = _runtime(runtime)._scoring()
    _typed(gate, Gate, "gate")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ParameterError("steps", f"{{name}} must be an integer ≥ 1, got {steps!r}")
    local, _ = resolve_adapter(adapter, revision=revision, allow_pickle=rt.allow_pickle)
    if lr is None or batch_size is None:
        values = (repair_defaults(local) or ({}, ""))[0]
        if lr is None:
            lr = values.get("lr", Recipe.lr)
        if batch_size is None:
            # "all" in the adapter's recipe: all records, up to 64 (as train)
            batch_size = (values["batch_size"] or MAX_DEFAULT_BATCH) if "batch_size" in values else Recipe.batch_size
    return _repair(local, out, corpus=_corpus(corpus) if corpus is not None else None, base_model=base_model,
                   method=method, steps=steps, lr=lr, batch_size=batch_size, gate=gate,
                   allow_pickle=rt.allow_pickle, trust_remote_code=rt.trust_remote_code, force_base=force_base,
                   device=rt.resolved_device(), progress=_internal(progress), on_before=on_before,
                   backend=rt.backend, vllm_mode=rt.vllm_mode, effect_check=effect_check,
                   tensor_parallel_size=rt.tensor_parallel_size)


# --------------------------------------------------------------------------------------------
# train

#: recipe settings a shipped card supplies as defaults besides lr and batch size
RECIPE_KEYS = ("method", "max_steps", "patience", "schedule", "cycles", "until_converged", "train_dtype",
               "converge_rel_tol", "converge_abs_tol", "converge_cov_tol")  # the convergence test: part of the recipe
#: a card's "all records per step" up to this many: more would cost memory, not speed
MAX_DEFAULT_BATCH = 64


def card_defaults(model: str) -> dict | None:
    """What the law card shipped for ``model`` was calibrated with, or None without one:
    ``{"template": LoraTemplate, "recipe": {lr, batch_size (None: all records), method, …}, "card": file
    name}``. Training with them makes a plan's rank hold; on a CPU their template (LoRA on the last
    layers) is also the fast one (memlaw.memft.FrozenPrefix). Reads the JSON only: no scipy, no torch."""
    import importlib.resources
    import json

    # memlaw.planner.estimate.shipped_card_path without importing the planner (scipy: ~1 s)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model or ""):
        return None  # paths and hub ids have no shipped card
    res = importlib.resources.files("memlaw") / "cards" / f"{model}.json"
    if not res.is_file():
        return None
    card = json.loads(res.read_text(encoding="utf-8"))
    t, r = card["template"], card["recipe"]
    template = LoraTemplate(target_modules=tuple(t["target_modules"]),
                            layers=tuple(t["layers"]) if t.get("layers") is not None else None,
                            alpha=t.get("alpha", "2*rank"))
    batch = r.get("batch_size")
    recipe = {"lr": float(r["lr"]), "batch_size": batch if isinstance(batch, int) else None}
    # the rest of the recipe, where the card records it (cards before schema 2 did not)
    recipe.update({k: r[k] for k in RECIPE_KEYS if r.get(k) is not None})
    return {"template": template, "recipe": recipe, "card": Path(str(res)).name}


@dataclass(frozen=True)
class TrainedAdapter:
    """A saved adapter folder (standard PEFT files plus ``memlaw.json``) and what training recorded."""

    path: Path
    sidecar: dict = field(repr=False)  # the content of memlaw.json (memlaw.sidecar.Sidecar.to_dict)

    @property
    def summary(self) -> dict:
        """The final scoring pass: records, target_tokens, coverage, exact_records, locked_records, mean_loss."""
        return Sidecar.from_dict(self.sidecar).final

    @property
    def coverage(self) -> float:
        return float(self.summary["coverage"])

    @property
    def steps(self) -> int:
        return int(Sidecar.from_dict(self.sidecar).train["steps"])

    @property
    def stop_reason(self) -> str:
        return Sidecar.from_dict(self.sidecar).train["stop_reason"]

    def passed(self, gate: Gate) -> bool:
        """Does the final training pass meet ``gate``? (:func:`audit` re-measures from the saved files.)"""
        return _typed(gate, Gate, "gate").passed(self.summary)

    def audit(self, **kwargs) -> AuditResult:
        """:func:`audit` of this folder (keyword arguments as there)."""
        return audit(self.path, **kwargs)


def train(corpus, out, *, model: str | None = None, rank: int = 8, template: LoraTemplate | None = None,
          recipe: Recipe | None = None, runtime: Runtime | None = None, init_adapter=None,
          progress: ProgressCallback | None = None) -> TrainedAdapter:
    """Train a LoRA adapter of ``rank`` on ``corpus`` into the NEW folder ``out`` until every target
    token is locked (p > 0.5), the loss plateaus, or ``recipe.max_steps``.

    ``model``: default ``smollm2-135m``. ``template`` / ``recipe`` default to those of the law card
    shipped for ``model`` (see :func:`card_defaults`; its batch "all records" capped at 64), else
    :class:`LoraTemplate` / :class:`Recipe` defaults. ``init_adapter``: continue that adapter instead
    of a fresh one. ``adapter_config.json`` names the base model as plain PEFT loads it (a folder
    for memlaw's built-in names); ``memlaw.json`` keeps memlaw's name."""
    import dataclasses

    from memlaw.memft import check_new_dir, train_adapter
    from memlaw.models import DEFAULT_MODEL, check_model_name, load_base

    rt = _runtime(runtime)
    spec = _corpus(corpus)
    model = model or DEFAULT_MODEL
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ParameterError("rank", f"{{name}} must be an integer ≥ 1, got {rank!r}",
                             fix="e.g. {set}8; memlaw.plan() suggests one")
    _typed(template, LoraTemplate, "template")
    _typed(recipe, Recipe, "recipe")
    if rt.dtype != "float32":
        raise ParameterError("dtype", f"training keeps float32 master weights, got runtime {{name}} {rt.dtype!r}",
                             fix="use Recipe(train_dtype='bfloat16') for bfloat16 autocast")
    check_model_name(model)
    check_new_dir(out)  # before the corpus is read or a model loads
    n_records = len(spec.read())  # a bad corpus fails before the model loads
    defaults = card_defaults(model) if template is None or recipe is None else None
    note = _note(progress)
    if defaults:
        if template is None:
            template = defaults["template"]
        if recipe is None:
            kw = dict(defaults["recipe"])
            kw["batch_size"] = kw["batch_size"] or min(MAX_DEFAULT_BATCH, max(1, n_records))
            recipe = Recipe(**kw)
        if note:
            note(f"defaults from the law card {defaults['card']}: {template}, {recipe}")
    template = template or LoraTemplate()
    try:
        template.alpha_for(1)
    except ValueError:
        raise ParameterError("template", f"{{name}}.alpha must be a number or 'k*rank', got {template.alpha!r}") \
            from None
    base = load_base(model, trust_remote_code=rt.trust_remote_code, device=rt.resolved_device())
    side = train_adapter(spec, model, rank, out, template=dataclasses.replace(template), recipe=recipe,
                         init_adapter=init_adapter, allow_pickle=rt.allow_pickle, progress=_internal(progress),
                         base=base)
    return TrainedAdapter(Path(out), side)


# --------------------------------------------------------------------------------------------
# calibrate


def calibrate(out, *, model: str | None = None, ranks: Sequence[int] | str | None = None,
              lengths: Sequence[int] | str | None = None, data=None, template: LoraTemplate | None = None,
              target_modules: Sequence[str] | None = None, layers: Sequence[int] | str | None = None,
              alpha: str | float | None = None, recipe: Recipe | None = None, batch_size: int | None = None,
              chunk: int | None = None, data_seed: int = 0, shard: str | None = None, n_boot: int = 200,
              plot: bool = False, runtime: Runtime | None = None, progress: ProgressCallback | None = None):
    """Sweep LoRA ``ranks`` × ``lengths`` (target tokens) on ``model``, each point trained to
    convergence under ``recipe``, and fit the Parametric Memory Law into ``out/law.json``
    (:class:`memlaw.calibration.sweep.SweepResult`: ``card``, ``card_path``, ``points``, ``missing``).
    A killed sweep resumes from ``out`` (with the same settings).

    The LoRA template: ``template`` (its ``layers=None`` adapts every layer), or its parts —
    ``target_modules`` (default ``q_proj, v_proj``), ``layers`` (default None: the last two layers;
    ``"all"``; or indices) and ``alpha`` (default ``"2*rank"``). ``data``: a corpus to slice
    (default: random tokens, ``chunk`` target tokens per record). ``recipe``: default the shipped
    calibration recipe (:func:`memlaw.calibration.defaults.default_recipe`). ``batch_size``: default
    all records of a point. ``shard``: ``"i/n"``, only the grid points whose position ≡ i (mod n)."""
    from memlaw.calibration.defaults import (DEFAULT_CHUNK, DEFAULT_LENGTHS, DEFAULT_RANKS, DEFAULT_TARGET_MODULES,
                                             default_recipe)
    from memlaw.calibration.spec import Shard, SweepSpec
    from memlaw.calibration.sweep import run_sweep
    from memlaw.models import DEFAULT_MODEL, check_model_name

    rt = _runtime(runtime)
    model = model or DEFAULT_MODEL
    _typed(template, LoraTemplate, "template")
    _typed(recipe, Recipe, "recipe")
    check_model_name(model)
    if template is not None:
        given = [k for k, v in (("target_modules", target_modules), ("layers", layers), ("alpha", alpha))
                 if v is not None]
        if given:
            raise ParameterError(given[0], "pass {name} or template, not both")
        target_modules, layers, alpha = template.target_modules, template.layers or "all", template.alpha
    if isinstance(target_modules, str):
        target_modules = [m.strip() for m in target_modules.split(",") if m.strip()]
    spec = SweepSpec(model=model, ranks=DEFAULT_RANKS if ranks is None else ranks,
                     lengths=DEFAULT_LENGTHS if lengths is None else lengths,
                     target_modules=tuple(DEFAULT_TARGET_MODULES if target_modules is None else target_modules),
                     layers=layers, alpha="2*rank" if alpha is None else alpha, recipe=recipe or default_recipe(),
                     batch_size=batch_size, chunk=DEFAULT_CHUNK if chunk is None else chunk,
                     data=_corpus(data, "data") if data is not None else None, data_seed=data_seed,
                     shard=shard if isinstance(shard, Shard) or shard is None else Shard.parse(shard),
                     device=rt.resolved_device(), dtype=rt.dtype, n_boot=n_boot)
    return run_sweep(spec, out, progress=_internal(progress), plot=plot)
