"""MemFT: the three training objectives and one LoRA training loop.

Objectives, as the paper's released trainer defines them (zjunlp/ParametricMemoryLaw,
``steer/trainer/MemFTModelTrainer.py``; ``tests/paper_memft_port.py`` is a line-by-line port the
tests compare these with). Per-token weights w; the loss is Σ w·loss / Σ w over the batch:

* ``sft`` — every target token weight 1: plain mean token loss, the baseline.
* ``ot`` (MemFT-OT, only-threshold) — w = 1 where loss > −ln τ (τ = 0.5: not locked), else 0.
  A batch with no token above the threshold trains the plain SFT loss instead.
* ``sw`` (MemFT-SW, long-context form: an intra-sample sliding window) — w = sigmoid(10·(loss −
  ln 2)) times a window: 1 before the record's anchor (its first wrongly predicted token) and for
  records with no error, exp(−(pos − anchor)/20) for 50 tokens from the anchor, 0.01 after; the
  window grows by 25 tokens per visit from the 4th consecutive visit stuck at one anchor (up to
  200). SFT loss when the weights sum to ≈ 0.
* ``curriculum`` (MemFT-SW, PhoneBook form: an inter-batch temporal curriculum) — the OT weights
  (a batch with nothing above the threshold takes no step), samples shuffled once and kept in
  that order, and only the first 20 % of them active at first, then 40, 60, 80, 100 % at epoch
  milestones (the paper's 20/40/60/80 of 300 epochs, scaled to the budget).

Key tokens are never scored nor trained: only target positions enter the loss at all.

Used by ``memft train``, by calibration sweeps and by the auditor's repair.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from memlaw.errors import ParameterError, UserError
from memlaw.sidecar import Sidecar

LN2 = math.log(2.0)
METHODS = ("sft", "ot", "sw", "curriculum")
SCHEDULES = ("constant", "linear")
TRAIN_DTYPES = ("float32", "bfloat16")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class LoraTemplate:
    """Which modules and layers get LoRA, and how alpha follows the rank."""

    target_modules: tuple[str, ...] = ALL_LINEAR
    layers: tuple[int, ...] | None = None  # None: every layer
    alpha: str | float = "2*rank"  # a fixed number, or "k*rank" to keep the scale alpha/rank fixed
    dropout: float = 0.0

    def alpha_for(self, rank: int) -> float:
        if isinstance(self.alpha, str):
            factor = self.alpha.replace(" ", "").removesuffix("*rank")
            return float(factor) * rank
        return float(self.alpha)

    def lora_config(self, rank: int):
        from peft import LoraConfig

        return LoraConfig(r=rank, lora_alpha=self.alpha_for(rank), lora_dropout=self.dropout,
                          target_modules=list(self.target_modules),
                          layers_to_transform=list(self.layers) if self.layers is not None else None,
                          bias="none", task_type="CAUSAL_LM")

    def matched_modules(self, model) -> list[tuple[str, int, int]]:
        """(name, in_features, out_features) of every linear module this template adapts."""
        import re

        out = []
        for name, mod in model.named_modules():
            if not hasattr(mod, "in_features") or name.split(".")[-1] not in self.target_modules:
                continue
            if self.layers is not None:
                m = re.search(r"\.(\d+)\.", name)
                if not m or int(m.group(1)) not in self.layers:
                    continue
            out.append((name, mod.in_features, mod.out_features))
        return out

    def params_per_rank(self, model) -> int:
        """Trainable parameters per unit of rank: Σ (in + out) over adapted modules."""
        return sum(i + o for _, i, o in self.matched_modules(model))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoraTemplate":
        return cls(target_modules=tuple(d.get("target_modules", ALL_LINEAR)),
                   layers=tuple(d["layers"]) if d.get("layers") is not None else None,
                   alpha=d.get("alpha", "2*rank"), dropout=float(d.get("dropout", 0.0)))


@dataclass
class Recipe:
    """How an adapter is trained. Calibration records it in the law card: the law holds for it.

    ``max_steps`` is the budget of one *cycle*: the lr follows ``schedule`` over it (``linear``:
    from ``lr`` down to 0, as the paper trains; ``constant``). ``cycles`` > 1 restarts the schedule
    that many times (warm restarts, optimiser state kept): the loss at the end of the last two
    cycles (budget kB and (k+1)B) is the convergence test a law card records for every point. With
    ``until_converged``, ``cycles`` is a ceiling: training stops after the first cycle that passes
    the test, so a corpus that needs more steps gets them (long corpora converge later).
    ``patience`` (0: off) stops on a plateau of the epoch mean loss. ``train_dtype`` ``bfloat16``
    runs the training forward under autocast (fast where the CPU has AVX512-BF16, or on a GPU);
    every scoring pass stays float32. ``eos``: also train the EOS / end-of-turn token after each
    target, so the model learns to stop after the fact (recorded in the sidecar; the auditor
    then scores it too)."""

    method: str = "sft"  # the default the evidence so far supports (docs/results.md §6); MemFT by name
    lr: float = 2e-3
    batch_size: int = 32
    max_steps: int = 600
    patience: int = 100  # steps without a 1% improvement of the best epoch mean loss → plateau stop; 0: off
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # OT/SW average over few tokens late in training: clip, or it diverges
    schedule: str = "constant"
    cycles: int = 1
    train_dtype: str = "float32"
    eos: bool = False
    tau: float = 0.5  # OT threshold on p
    sw_sharpness: float = 10.0
    sw_window: int = 50
    sw_tau: float = 20.0
    sw_floor: float = 0.01
    sw_stuck_visits: int = 4  # the window grows from this consecutive visit at the same anchor on
    converge_rel_tol: float = 0.10  # the last cycle may lower the loss by at most this share of ΔL …
    converge_abs_tol: float = 0.05  # … or this many nats, and still count as converged …
    converge_cov_tol: float = 0.02  # … and raise coverage by at most this much (the planner predicts coverage)
    until_converged: bool = False  # stop after the first cycle that passes the test (cycles: the ceiling)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ParameterError("method", f"unknown method '{self.method}'", fix=f"use one of {', '.join(METHODS)}")
        if self.schedule not in SCHEDULES:
            raise ParameterError("schedule", f"unknown lr schedule '{self.schedule}'",
                                 fix=f"use one of {', '.join(SCHEDULES)}")
        if self.train_dtype not in TRAIN_DTYPES:
            raise ParameterError("train_dtype", f"unknown training dtype '{self.train_dtype}'",
                                 fix=f"use one of {', '.join(TRAIN_DTYPES)}")
        for name, ok, rule in (("lr", lambda v: v > 0, "> 0"), ("batch_size", lambda v: v >= 1, "≥ 1"),
                               ("max_steps", lambda v: v >= 0, "≥ 0"), ("patience", lambda v: v >= 0, "≥ 0"),
                               ("cycles", lambda v: v >= 1, "≥ 1")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ParameterError(name, f"{{name}} must be {rule}, got {value}")
        if not 0 < self.tau < 1:
            raise ParameterError("tau", f"{{name}} must lie in (0, 1), got {self.tau}")

    def lr_at(self, step_in_cycle: int) -> float:
        if self.schedule == "linear" and self.max_steps > 0:
            return self.lr * max(0.0, 1.0 - step_in_cycle / self.max_steps)
        return self.lr

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop_rule"] = ("all target tokens locked (confirmed by a scoring pass), or plateau (patience), or "
                          + ("the first cycle that passes the convergence test, at most " if self.until_converged
                             else "") + "cycles × max_steps; converged = in the last cycle the loss fell by ≤ "
                          "max(converge_abs_tol, converge_rel_tol·ΔL) and coverage rose by ≤ converge_cov_tol")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """A recipe from a card or sidecar; keys it does not know (objective, stop_rule, dtype …) are
        descriptions, not settings."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in (d or {}).items() if k in known}
        if "method" not in kw and d and d.get("objective") in METHODS:
            kw["method"] = d["objective"]
        if not isinstance(kw.get("batch_size", 1), int):
            kw.pop("batch_size")  # "all": the caller decides
        return cls(**kw)


# --------------------------------------------------------------------------------------------
# objectives: pure functions of per-token losses (torch tensors), unit-tested directly


def weights_sft(loss):
    import torch

    return torch.ones_like(loss)


def weights_ot(loss, tau: float = 0.5):
    """1 for tokens not yet above the threshold (loss > −ln τ), 0 for locked ones."""
    return (loss > -math.log(tau)).to(loss.dtype)


def window(positions, anchor: int | None, width: float, tau_w: float, floor: float):
    """SW window over one record's target positions (a float tensor), as the paper's trainer
    builds it (MemFTModelTrainer.py, the sliding loss): 1 before the anchor and for a record with
    no error; exp(−(pos − anchor)/τ_w) from the anchor for ``width`` tokens (no floor inside);
    ``floor`` after the window."""
    import torch

    if anchor is None:
        return torch.ones_like(positions)
    rel = positions - anchor
    decay = torch.exp(-rel.clamp_min(0) / tau_w)
    return torch.where(rel < width, decay, torch.full_like(positions, floor))


def weights_sw(loss, positions, anchor: int | None, width: float, sharpness: float = 10.0,
               tau_w: float = 20.0, floor: float = 0.01):
    import torch

    return torch.sigmoid(sharpness * (loss - LN2)) * window(positions, anchor, width, tau_w, floor)


@dataclass
class AnchorTracker:
    """Per-record anchor memory for SW (the paper keeps it per batch row; at its batch size 1 that
    is per record). A visit is *stuck* when the record still has an error at the same anchor as on
    its last visit: patience counts stuck visits, and from ``stuck_visits − 1`` of them on (the 4th
    visit at one anchor, by default) the window grows by ½ its base per visit, up to 4×; it snaps
    back to the base as soon as the anchor moves or the record has no error."""

    base: int
    stuck_visits: int = 4
    state: dict = field(default_factory=dict)  # record index → (last anchor, patience, expansion)

    def width(self, index: int, anchor: int | None) -> float:
        last, patience, expansion = self.state.get(index, (None, 0, 1.0))
        patience = patience + 1 if (anchor is not None and anchor == last) else 0
        expansion = min(expansion + 0.5, 4.0) if patience >= self.stuck_visits - 1 else 1.0
        self.state[index] = (anchor, patience, expansion)
        return self.base * expansion


# --------------------------------------------------------------------------------------------
# frozen-prefix cache: when LoRA starts at layer k, layers below k see the same inputs every step

def first_trainable_layer(model) -> int | None:
    """Lowest decoder-layer index holding a trainable parameter (None if not per-layer)."""
    import re

    found = [int(m.group(1)) for n, p in model.named_parameters() if p.requires_grad
             for m in [re.search(r"\.layers\.(\d+)\.", n)] if m]
    return min(found) if found else None


class FrozenPrefix:
    """Caches, per record, the hidden states entering layer k (computed once, no grad), and runs
    only layers k.. per training step. Saves the forward of layers < k and all backward below k.
    Records are causal and right-padded, so a record's prefix states do not depend on its batch."""

    def __init__(self, model, k: int, pad_id: int):
        from memlaw.scoring import split_lm

        self.backbone, self.head = split_lm(model)
        self.k, self.pad_id = k, pad_id
        self.cache: dict[int, "torch.Tensor"] = {}

    @staticmethod
    def usable(model) -> int | None:
        from memlaw.scoring import prefix_layer

        return prefix_layer(model, first_trainable_layer(model))

    def _fill(self, encoded) -> None:
        import torch

        from memlaw.scoring import make_batch, run_layers

        todo = [e for e in encoded if e.index not in self.cache]
        if not todo:
            return
        batch = make_batch(todo, self.pad_id, next(self.head.parameters()).device)
        with torch.no_grad():
            h, _ = run_layers(self.backbone, list(self.backbone.layers[: self.k]), input_ids=batch.input_ids,
                              attention_mask=batch.attention_mask)
        for b, e in enumerate(todo):
            self.cache[e.index] = h[b, : len(e.key_ids) + len(e.target_ids)].clone()

    def log_softmax(self, batch, encoded):
        """Same as scoring.target_log_softmax(model, batch), through the cache."""
        import torch

        from memlaw.scoring import run_layers

        self._fill(encoded)
        width = batch.input_ids.shape[1]
        first = self.cache[encoded[0].index]
        h = first.new_zeros((len(encoded), width, first.shape[-1]))
        for b, e in enumerate(encoded):
            states = self.cache[e.index]
            h[b, : states.shape[0]] = states
        _, hidden = run_layers(self.backbone, list(self.backbone.layers[self.k:]), inputs_embeds=h,
                               attention_mask=batch.attention_mask)
        return torch.log_softmax(self.head(hidden[batch.rows, batch.cols]).float(), dim=-1)


# --------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    steps: int
    seconds: float
    stop_reason: str
    history: list[dict]  # one entry per epoch: step, mean_loss, coverage (from training passes)
    cycle_ends: list[dict] = field(default_factory=list)  # per finished cycle: step, mean_loss, coverage (scored)
    converged: bool | None = None  # the convergence test over the last two cycles; None: not tested

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seconds": round(self.seconds, 2), "stop_reason": self.stop_reason,
                "converged": self.converged, "cycle_ends": self.cycle_ends, "history": self.history}


def make_lora_model(base_model, template: LoraTemplate, rank: int, seed: int):
    """Wrap a base model with a fresh LoRA adapter; the init is seeded (PEFT draws lora_A)."""
    import torch
    from peft import get_peft_model

    if rank < 1:
        raise UserError(f"rank must be ≥ 1, got {rank}")
    if not template.matched_modules(base_model):
        raise ParameterError("target_modules", f"LoRA target modules {list(template.target_modules)} match no layer "
                                               "of the model", fix="pass {name} names that exist in the model (e.g. "
                                                                   "q_proj,v_proj)")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(base_model, template.lora_config(rank))


def passes_convergence_test(before: float, at_b: float, at_2b: float, rel_tol: float, abs_tol: float,
                            coverage_b: float | None = None, coverage_2b: float | None = None,
                            cov_tol: float | None = None) -> bool:
    """The convergence test (one definition, used by training and by law cards): another full cycle
    (budget B → 2B) lowered the loss by no more than max(abs_tol, rel_tol·ΔL), ΔL = before − loss at
    2B, and — when both coverages and ``cov_tol`` are given — raised coverage by no more than
    ``cov_tol``. The coverage clause matters because the planner predicts coverage: a loss that moves
    little while tokens still cross p = 0.5 is not converged for its purpose."""
    loss_ok = at_b - at_2b <= max(abs_tol, rel_tol * max(0.0, before - at_2b))
    if cov_tol is None or coverage_b is None or coverage_2b is None:
        return loss_ok
    return loss_ok and coverage_2b - coverage_b <= cov_tol


def converged(before: float, cycle_ends: Sequence[dict], recipe: Recipe) -> bool | None:
    """The convergence test over the last two cycles (``cycle_ends``: mean_loss and coverage at the
    end of each); None with fewer than two."""
    if len(cycle_ends) < 2:
        return None
    b, b2 = cycle_ends[-2], cycle_ends[-1]
    return passes_convergence_test(before, b["mean_loss"], b2["mean_loss"], recipe.converge_rel_tol,
                                   recipe.converge_abs_tol, b.get("coverage"), b2.get("coverage"),
                                   recipe.converge_cov_tol)


#: the paper's PhoneBook curriculum: (share of samples active, epochs before it grows, as a share
#: of the run's epochs) — 20/40/60/80 % for the first 20/40/60/80 of 300 epochs, then all.
CURRICULUM = ((0.2, 20 / 300), (0.4, 40 / 300), (0.6, 60 / 300), (0.8, 80 / 300))


def curriculum_active(epoch: int, total_epochs: float, n: int, batch_size: int) -> int:
    """How many samples (a prefix of the fixed order) the curriculum trains in ``epoch`` (from 0):
    the share of its stage, rounded down to whole batches, at least one batch, at most all."""
    share = next((s for s, until in CURRICULUM if epoch < until * total_epochs), 1.0)
    if share >= 1.0:
        return n
    active = (int(n * share) // batch_size) * batch_size
    return min(n, max(batch_size, active))


def _batch_stream(n: int, recipe: Recipe, gen, total_steps: int):
    """Yields (record indices of one batch, is this the last batch of an epoch, did the epoch cover
    every record). ``curriculum``: samples shuffled once and kept in that order, each epoch runs
    over the active prefix; else a fresh shuffle per epoch."""
    import torch

    fixed = torch.randperm(n, generator=gen).tolist() if recipe.method == "curriculum" else None
    full_epochs = total_steps / max(1, math.ceil(n / recipe.batch_size))  # epochs if every one were whole
    epoch = 0
    while True:
        if fixed is not None:
            order = fixed[: curriculum_active(epoch, full_epochs, n, recipe.batch_size)]
        else:
            order = torch.randperm(n, generator=gen).tolist()
        starts = list(range(0, len(order), recipe.batch_size))
        for j, lo in enumerate(starts):
            yield order[lo: lo + recipe.batch_size], j == len(starts) - 1, len(order) == n
        epoch += 1


def train(model, encoded: Sequence, recipe: Recipe, *, pad_id: int = 0, progress: bool = True,
          confirm: Callable | None = None, cache_prefix: bool = True,
          on_epoch: Callable[[dict], bool] | None = None, loss_before: float | None = None) -> TrainResult:
    """Train the trainable (LoRA) parameters of ``model`` on ``encoded`` with ``recipe``.

    Every training forward pass is also a teacher-forced scoring pass of the parameters before the
    step, so coverage is tracked for free; when a whole epoch saw every token locked, one real
    scoring pass (``confirm`` or the default) confirms it before stopping. With ``recipe.cycles``
    > 1 a real scoring pass at the end of every cycle gives the convergence test (``loss_before``,
    the base model's loss, scales its relative tolerance; default: the first epoch's loss).
    ``on_epoch(entry)`` may return True to stop early (the auditor's repair uses it for its gate).
    With ``cache_prefix`` and a template that starts above layer 0, the frozen layers below it run
    once per record instead of once per step (see FrozenPrefix); the numbers are the same.
    """
    import contextlib

    import torch

    from memlaw.scoring import (check_context, make_batch, prefix_states, score, summarize, target_log_softmax,
                                token_stats)

    if not encoded:
        raise UserError("the corpus has no records to train on")
    check_context(model, encoded)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    gen = torch.Generator().manual_seed(recipe.seed)
    tracker = AnchorTracker(recipe.sw_window, recipe.sw_stuck_visits)
    device = next(model.parameters()).device
    history: list[dict] = []
    cycle_ends: list[dict] = []
    best, best_step, step, reason = math.inf, 0, 0, "max_steps"
    best_seen, best_state = math.inf, None  # lowest epoch mean loss so far, and the weights after it
    total_steps = recipe.max_steps * recipe.cycles
    start = time.perf_counter()

    # the scoring passes (each cycle's end, the all-locked confirmation) run only the layers above
    # the adapter's lowest one, from their input computed once: the same numbers
    scoring_prefix = prefix_states(model) if cache_prefix else None

    def measure() -> dict:
        model.eval()
        summary = confirm() if confirm else summarize(score(model, encoded, pad_id=pad_id, prefix=scoring_prefix))
        model.train()
        return summary

    def ref_loss() -> float:
        """ΔL's reference for the test's relative tolerance: the base loss, else the first epoch's."""
        return loss_before if loss_before is not None else (history[0]["mean_loss"] if history else math.nan)

    def autocast():
        if recipe.train_dtype == "bfloat16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    k = FrozenPrefix.usable(model) if cache_prefix else None
    prefix = FrozenPrefix(model, k, pad_id) if k else None
    if callable(progress):
        bar = _Callback(progress, total_steps)
    else:
        from memlaw.cli.progress import TrainBar  # the commands' display; silent when progress is False

        bar = TrainBar(bool(progress), total_steps)
    stream = _batch_stream(len(encoded), recipe, gen, total_steps)
    epoch_loss, epoch_tokens, epoch_locked = 0.0, 0, 0
    model.train()
    try:
        while step < total_steps:
            idx, epoch_done, whole_corpus = next(stream)
            chunk = [encoded[i] for i in idx]
            for group in opt.param_groups:
                group["lr"] = recipe.lr_at(step % recipe.max_steps)
            batch = make_batch(chunk, pad_id, device)
            with autocast():
                logprobs = prefix.log_softmax(batch, chunk) if prefix else target_log_softmax(model, batch)
            lp, argmax, _ = token_stats(logprobs, batch.targets)
            loss_tok = -lp.float()
            with torch.no_grad():
                w = token_weights(recipe, loss_tok.detach(), argmax, batch, tracker)
            epoch_loss += float(loss_tok.detach().sum())
            epoch_tokens += int(loss_tok.numel())
            epoch_locked += int((loss_tok.detach() < LN2).sum())
            if float(w.sum()) > 0:  # zero only for the curriculum's "nothing above threshold": no step
                loss = (w * loss_tok).sum() / w.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
                opt.step()
            step += 1
            bar.update(step)
            if recipe.cycles > 1 and step % recipe.max_steps == 0:
                s = measure()
                cycle_ends.append({"step": step, "mean_loss": float(s["mean_loss"]), "coverage": float(s["coverage"]),
                                   "seconds": round(time.perf_counter() - start, 2)})
                if recipe.until_converged and step < total_steps and converged(ref_loss(), cycle_ends, recipe):
                    reason = "converged"
                    break
            if not epoch_done:
                continue
            entry = {"step": step, "mean_loss": epoch_loss / epoch_tokens, "coverage": epoch_locked / epoch_tokens,
                     "seconds": time.perf_counter() - start}
            if not whole_corpus:
                entry["partial"] = True  # curriculum: the epoch ran over the active share only
            epoch_loss, epoch_tokens, epoch_locked = 0.0, 0, 0
            history.append(entry)
            bar.epoch(entry)
            if whole_corpus and entry["mean_loss"] < best_seen:
                best_seen = entry["mean_loss"]
                best_state = [p.detach().clone() for p in params]
            if on_epoch is not None and on_epoch(entry):
                reason = "callback"
                break
            if whole_corpus and entry["coverage"] >= 1.0 and measure()["coverage"] >= 1.0:
                reason = "all_locked"
                break
            if entry["mean_loss"] < best * 0.99:
                best, best_step = entry["mean_loss"], step
            elif recipe.patience and whole_corpus and step - best_step >= recipe.patience:
                reason = "plateau"
                break
    finally:
        bar.close()
        model.eval()
    if reason != "all_locked" and best_state is not None and history[-1]["mean_loss"] > 1.1 * best_seen:
        # Training diverged after its best epoch (late OT/SW steps can: few tokens carry the whole
        # weighted mean): hand back the weights after that epoch. A 10% margin keeps ordinary
        # noise from triggering it. Callers measure the final adapter with a real scoring pass.
        with torch.no_grad():
            for p, saved in zip(params, best_state):
                p.copy_(saved)
        reason += "+restored_best"
    conv = True if reason == "all_locked" else converged(ref_loss(), cycle_ends, recipe)
    return TrainResult(step, time.perf_counter() - start, reason, history, cycle_ends, conv)


def token_weights(recipe: Recipe, loss_tok, argmax, batch, tracker: "AnchorTracker", *, fallback: bool = True):
    """Per-token weights for a batch under the recipe's objective. Whenever the objective's
    weights sum to (about) zero — OT with no token above the threshold, SW with every window
    empty — the paper trains the plain SFT loss on that batch instead of skipping it.
    ``fallback=False`` returns the objective's own weights even then (a decision per batch cannot
    be made exactly from one micro-batch of an accumulated one: memlaw.integrations)."""
    import torch

    if recipe.method == "sft":
        return weights_sft(loss_tok)
    if recipe.method in ("ot", "curriculum"):
        w = weights_ot(loss_tok, recipe.tau)
    else:
        w = torch.empty_like(loss_tok)
        for i, idx in enumerate(batch.indices):
            a, b = batch.offsets[i], batch.offsets[i + 1]
            wrong = torch.nonzero(argmax[a:b] != batch.targets[a:b])
            anchor = int(wrong[0]) if len(wrong) else None
            width = tracker.width(idx, anchor)
            pos = torch.arange(b - a, dtype=loss_tok.dtype, device=loss_tok.device)
            w[a:b] = weights_sw(loss_tok[a:b], pos, anchor, width, recipe.sw_sharpness, recipe.sw_tau,
                                recipe.sw_floor)
    if fallback and float(w.sum()) <= SFT_FALLBACK_EPS[recipe.method]:
        # the curriculum's OT takes no step here (the paper's zero-bp loss); OT and SW train SFT
        return torch.zeros_like(loss_tok) if recipe.method == "curriculum" else weights_sft(loss_tok)
    return w


SFT_FALLBACK_EPS = {"ot": 0.0, "curriculum": 0.0, "sw": 1e-5}  # the paper's thresholds on Σ w


class _Callback:
    """What :class:`memlaw.cli.progress.TrainBar` shows, as calls of ``fn(stage, done, total, info)`` (the Python API's progress):
    every step, and every epoch with its history entry (loss, coverage) as ``info``."""

    def __init__(self, fn, total: int):
        self.fn, self.total = fn, total

    def update(self, step, *_):
        self.fn("train", int(step), self.total, None)

    def epoch(self, entry):
        self.fn("train", int(entry["step"]), self.total, dict(entry))

    def close(self):
        pass


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# one call from a corpus file to a saved adapter (what `memft train` and repair run)


@dataclass
class CorpusSpec:
    """A corpus file and how to read it."""

    path: str
    fmt: str = "auto"
    key_field: str | None = None
    target_field: str | None = None

    def read(self):
        from memlaw.corpus import read_corpus

        return read_corpus(self.path, fmt=self.fmt, key_field=self.key_field, target_field=self.target_field)

    def to_dict(self) -> dict:
        from memlaw.corpus import corpus_sha256

        return {"path": str(Path(self.path).resolve()), "sha256": corpus_sha256(self.path), "fmt": self.fmt,
                "key_field": self.key_field, "target_field": self.target_field}


def check_new_dir(out: str | Path) -> Path:
    """We never overwrite what a user has: the output folder must not exist yet (or be empty)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ParameterError("out", f"output {out} already exists", fix="choose a new {name} folder; memlaw never "
                                                                        "overwrites")
    return out


def save_adapter(model, out: str | Path, base_name: str, sidecar: Sidecar | dict) -> Path:
    """Write a standard PEFT adapter folder plus memlaw.json (``sidecar``: a
    :class:`memlaw.sidecar.Sidecar`, or its dict), atomically: into a hidden temporary folder beside
    ``out``, then one rename. A killed run leaves no half-written adapter."""
    import json
    import os
    import shutil
    import tempfile

    from memlaw.io import atomic_write_json, follow_umask

    if not isinstance(sidecar, Sidecar):
        sidecar = Sidecar.from_dict(sidecar)
    out = check_new_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    # Blank the base name on the live config: PEFT's save would otherwise look a name like "tiny"
    # up on the Hugging Face hub. The user-facing name is written into the file below.
    for peft_cfg in getattr(model, "peft_config", {}).values():
        peft_cfg.base_model_name_or_path = None
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        cfg_file = tmp / "adapter_config.json"
        cfg = json.loads(cfg_file.read_text())
        # What plain PEFT can resolve (the folder behind memlaw's built-in names, a hub id as is);
        # memlaw's own name stays in the sidecar (base_model.name), which memaudit reads first.
        from memlaw.models import plain_model_path

        cfg["base_model_name_or_path"] = plain_model_path(base_name)
        atomic_write_json(cfg_file, cfg)
        sidecar.write(tmp)
        follow_umask(tmp)  # mkdtemp made it 0700: readable by others as the umask allows
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        from memlaw.io import disk_full, full_disk_error

        if disk_full(e):  # safetensors' own write error has no errno: recognised by its text
            raise full_disk_error(out, e) from None
        raise
    return out


def train_adapter(corpus: CorpusSpec, model_name: str, rank: int, out: str | Path, *,
                  template: LoraTemplate | None = None, recipe: Recipe | None = None,
                  init_adapter: str | Path | None = None, allow_pickle: bool = False,
                  progress: bool = True, on_epoch=None, base=None, device: str = "cpu") -> dict:
    """Read and encode the corpus, train a LoRA adapter (fresh, or continued from ``init_adapter``)
    on ``device`` (cpu, cuda, cuda:N or auto) and save it with its sidecar. Returns the sidecar
    as a dict (:meth:`memlaw.sidecar.Sidecar.to_dict`)."""
    from datetime import datetime, timezone

    import memlaw
    from memlaw.corpus import encode_records
    from memlaw.models import attach_adapter, load_base
    from memlaw.scoring import prefix_states, score, summarize

    template = template or LoraTemplate()
    recipe = recipe or Recipe()
    check_new_dir(out)
    records = corpus.read()
    seed_everything(recipe.seed)
    if base is None:
        from memlaw.planner.baseloss import resolve_device

        base = load_base(model_name, device=resolve_device(device))
    encoded = encode_records(base.tokenizer, records, eos=recipe.eos)
    pad_id = base.tokenizer.pad_token_id or 0
    if init_adapter is not None:
        model = attach_adapter(base, init_adapter, allow_pickle=allow_pickle, trainable=True)
    else:
        model = make_lora_model(base.model, template, rank, recipe.seed)
    result = train(model, encoded, recipe, pad_id=pad_id, progress=progress, on_epoch=on_epoch)
    # stored (memlaw.scoring.PrefixStates): memaudit of this adapter, or of the next one trained on
    # this corpus above the same layer, reads the base model's lower layers instead of running them
    final = summarize(score(model, encoded, pad_id=pad_id, prefix=prefix_states(model, base.identity)))
    sidecar = Sidecar(
        memlaw_version=memlaw.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        corpus=corpus.to_dict(),
        base_model=base.identity,
        rank=rank,
        template=template.to_dict(),
        params_per_rank=template.params_per_rank(base.model if init_adapter is None else model),
        recipe=recipe.to_dict(),
        init_adapter=str(Path(init_adapter).resolve()) if init_adapter else None,
        train=result.to_dict(),
        final=final,
    )
    save_adapter(model, out, base.name, sidecar)
    return sidecar.to_dict()
