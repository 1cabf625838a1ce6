"""Scoring backends: the engines that compute per-token log p, behind one interface.

Two implementations, chosen by :func:`get_backend` — the one place a backend's name is
interpreted:

* :class:`TransformersBackend` — :func:`memlaw.scoring.score` on a model loaded in this process
  (PEFT for an adapter), CPU or GPU; the default and the reference;
* :class:`VLLMBackend` — vLLM's ``prompt_logprobs`` (:mod:`memlaw.vllm_backend`), which serves the
  model from its files itself; vLLM is imported only when it scores.

Both return :class:`memlaw.scoring.RecordScores` for the same encoded records, and must agree
(tests/test_vllm.py). The auditor asks a backend for the adapter's scores (and the base model's,
for the no-effect check), the planner for the base model's (L_before), and repair to fail early
when it cannot run here (:meth:`ScoringBackend.require`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

from memlaw.errors import UserError

#: the engines, by the names --backend, Runtime(backend=…), reports and cache keys use
NAMES = ("transformers", "vllm")
#: what a user may ask for: an engine, or ``auto`` (:func:`memlaw.vllm_backend.choose_backend`)
CHOICES = ("auto", *NAMES)


@dataclass
class AdapterScores:
    """What scoring an adapter gave: its scores, the base model's when the engine scored them in
    the same run (else None), what the report calls the engine (``vllm (merged)``), and a note
    on a choice the engine made (why vLLM scored ``merged``)."""

    scores: list
    base_scores: list | None
    engine: str
    note: str | None = None


def precision_note(info: dict) -> str | None:
    """What a bf16 pass did, from :func:`memlaw.scoring.score`'s ``info`` (None for float32)."""
    if info.get("precision") != "bf16":
        return None
    note = (f"scored in bf16; {info['rechecked_records']} of {info['records']} records re-scored in float32 "
            "(a token near a verdict boundary)")
    if info["gave_up"]:
        note += ", and the rest in float32 once more than half needed it"
    return note


class ScoringBackend(ABC):
    """A scoring engine. ``name``: one of :data:`NAMES`. ``note``: why ``auto`` chose it, or None.
    ``scores_from_files``: it serves the model from its files itself, so an audit need not load
    the base model in this process. ``supports_vllm_mode``: it takes ``vllm_mode`` and
    ``tensor_parallel_size``."""

    name: str
    scores_from_files: bool = False
    supports_vllm_mode: bool = False

    def __init__(self, note: str | None = None):
        self.note = note

    def require(self) -> None:
        """Raise a one-line :class:`UserError` now, before any model loads, when this engine
        cannot run here."""

    def check_inputs(self, inputs) -> None:
        """Raise when ``inputs`` (:class:`memlaw.auditor.audit.AdapterInputs`) lack what this
        engine scores from."""

    @abstractmethod
    def score_adapter(self, inputs, *, progress=False, base_too: bool = False) -> AdapterScores:
        """Score every target token of ``inputs.encoded`` under the adapter. ``base_too``: the
        caller will also want the base model's scores (an engine that gets them cheaply in the same
        run returns them in ``base_scores``; see :meth:`base_scores_for`)."""

    @abstractmethod
    def base_scores_for(self, inputs, run: AdapterScores, *, progress=False) -> tuple[list, str]:
        """The base model's scores over ``inputs.encoded`` after :meth:`score_adapter` gave
        ``run`` (asked with ``base_too``), and where they came from, for the report."""

    @abstractmethod
    def score_base(self, model, encoded: Sequence, *, pad_id: int = 0, progress=False,
                   model_name: str | None = None) -> list:
        """Score ``encoded`` under the plain base model (the planner's L_before): ``model`` loaded
        in this process, or ``model_name`` for an engine that serves it itself."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def audit_prefix(inputs):
    """The audit's :class:`memlaw.scoring.PrefixStates` (made once per loaded adapter, shared by its
    passes), or None when the adapter touches the first layer or the model type is not split."""
    if inputs.prefix is None:
        from memlaw.scoring import prefix_states

        inputs.prefix = prefix_states(inputs.model, getattr(inputs.base, "identity", None)) or False
    return inputs.prefix or None


class TransformersBackend(ScoringBackend):
    """:func:`memlaw.scoring.score` on the model in hand; the base model is the same PEFT model
    with its adapter disabled. ``precision``: the adapter pass's (:data:`memlaw.scoring.PRECISIONS`;
    ``bf16`` re-checks in float32 every record with a token near a verdict boundary); the base-model
    pass and L_before always score in float32."""

    name = "transformers"

    def __init__(self, note: str | None = None, precision: str = "float32"):
        super().__init__(note)
        self.precision = precision

    def check_inputs(self, inputs) -> None:
        if inputs.model is None:
            raise ValueError("transformers scoring needs inputs from load_adapter_inputs (a model)")

    def score_adapter(self, inputs, *, progress=False, base_too: bool = False) -> AdapterScores:
        from memlaw.scoring import score

        if self.precision != "float32" and base_too:
            raise UserError(f"precision {self.precision} applies without the no-effect check",
                            fix="score in float32, or turn the effect check off")
        info: dict = {}
        scores = score(inputs.model, inputs.encoded, pad_id=inputs.pad_id, progress=progress, description="auditing",
                       precision=self.precision, info=info, prefix=audit_prefix(inputs))
        return AdapterScores(scores, None, self.name, precision_note(info))

    def base_scores_for(self, inputs, run: AdapterScores, *, progress=False) -> tuple[list, str]:
        from memlaw.scoring import score

        with inputs.model.disable_adapter():
            scores = score(inputs.model, inputs.encoded, pad_id=inputs.pad_id, progress=progress,
                           description="base model", prefix=audit_prefix(inputs))
        return scores, "a base-model scoring pass (transformers)"

    def score_base(self, model, encoded: Sequence, *, pad_id: int = 0, progress=False,
                   model_name: str | None = None) -> list:
        from memlaw.scoring import score

        return score(model, encoded, pad_id=pad_id, progress=progress, description="L_before")


class VLLMBackend(ScoringBackend):
    """vLLM's ``prompt_logprobs`` (:mod:`memlaw.vllm_backend`). ``vllm_mode``: ``auto``, ``lora``
    or ``merged`` (:func:`memlaw.vllm_backend.choose_vllm_mode`); ``tensor_parallel_size``: GPUs
    the model is split over. vLLM draws its own progress bar or none: a Python progress callback
    cannot reach its engine, so only ``progress=True`` shows one."""

    name = "vllm"
    scores_from_files = True
    supports_vllm_mode = True

    def __init__(self, vllm_mode: str = "auto", tensor_parallel_size: int = 1, note: str | None = None):
        super().__init__(note)
        self.vllm_mode = vllm_mode
        self.tensor_parallel_size = tensor_parallel_size

    def require(self) -> None:
        from memlaw.vllm_backend import require_vllm

        require_vllm()

    def score_adapter(self, inputs, *, progress=False, base_too: bool = False) -> AdapterScores:
        from memlaw.vllm_backend import score_adapter

        r = score_adapter(inputs, mode=self.vllm_mode, progress=progress is True, base_too=base_too,
                          tensor_parallel_size=self.tensor_parallel_size)
        return AdapterScores(r.scores, r.base_scores, f"vllm ({r.mode})", r.note)

    def base_scores_for(self, inputs, run: AdapterScores, *, progress=False) -> tuple[list, str]:
        # scored in score_adapter's run: the engine start costs more than the pass
        return run.base_scores, "a base-model scoring pass (vLLM)"

    def score_base(self, model, encoded: Sequence, *, pad_id: int = 0, progress=False,
                   model_name: str | None = None) -> list:
        from memlaw.vllm_backend import score_base

        if model is not None:  # a record longer than the context: memlaw's one-line error, before vLLM starts
            from memlaw.scoring import check_context

            check_context(model, encoded)
        return score_base(model_name, encoded, progress=progress is True)

    def __repr__(self) -> str:
        return f"VLLMBackend(vllm_mode={self.vllm_mode!r}, tensor_parallel_size={self.tensor_parallel_size})"


def get_backend(name: "str | ScoringBackend" = "auto", *, vllm_mode: str = "auto", tensor_parallel_size: int = 1,
                allow_auto: bool = True, precision: str = "float32") -> ScoringBackend:
    """The scoring backend for ``name`` (one of :data:`CHOICES`; a :class:`ScoringBackend` is
    returned as is). ``auto`` resolves here (:func:`memlaw.vllm_backend.choose_backend`) and the
    backend's ``note`` says why; ``allow_auto=False`` refuses it (the planner's cache records the
    engine that measured). ``vllm_mode`` and ``tensor_parallel_size`` configure vLLM; ``precision``
    the transformers engine (vLLM scores in the model's own dtype and ignores ``auto``; ``bf16`` with
    vLLM is refused)."""
    if isinstance(name, ScoringBackend):
        return name
    choices = CHOICES if allow_auto else NAMES
    if name not in choices:
        raise UserError(f"unknown scoring backend '{name}'", fix=f"use one of: {', '.join(choices)}")
    note = None
    if name == "auto":
        from memlaw.vllm_backend import choose_backend

        name, note = choose_backend(name)
    if name == "vllm":
        if precision == "bf16":
            raise UserError("precision bf16 applies to the transformers backend only",
                            fix="use the transformers backend, or precision float32")
        return VLLMBackend(vllm_mode, tensor_parallel_size, note=note)
    return TransformersBackend(note=note, precision=precision)


def takes_vllm_options(name: str) -> bool:
    """Does the backend *asked for* by ``name`` take ``vllm_mode`` / ``tensor_parallel_size``?
    ``auto`` does not: what it resolves to depends on the machine, and an option that works on
    one machine only would surprise."""
    return name in _CLASSES and _CLASSES[name].supports_vllm_mode


_CLASSES = {cls.name: cls for cls in (TransformersBackend, VLLMBackend)}
