"""A straight port of the released MemFT code of the paper (zjunlp/ParametricMemoryLaw).

Reference only: pure torch functions on tensors, no model, written to mirror the released code
line by line so that memlaw's implementation can be compared with it element by element.

Source: github.com/zjunlp/ParametricMemoryLaw at commit 1103b2f ("Update README.md"):

* ``steer/trainer/MemFTModelTrainer.py``  (the objectives, the curriculum, the training loop)
* ``script/pb/common.sh``                  (PhoneBook per-length hyper-parameter tables)
* ``script/long_context/common.sh``        (long-context settings)
* ``hparams/context2vec_pb/pb_memft_lora.yaml``, ``hparams/context2vec_long/*.yaml`` (defaults)

Citations below read ``MFT:<line>`` for MemFTModelTrainer.py, ``PB:<line>`` for
script/pb/common.sh, ``LC:<line>`` for script/long_context/common.sh.

Conventions. Every tensor here is already *shifted* (position t holds the loss of predicting
label t+1 from logits t, MFT:100-101), shape [B, T] with T = seq_len - 1. ``mask`` is 1.0 where
the shifted label is not -100 (MFT:106), i.e. where a token carries a label (target tokens and,
on PhoneBook, the end-of-turn suffix). ``token_loss`` must be 0 where mask is 0 (this is what
``CrossEntropyLoss(reduction="none")`` with ignore_index -100 returns, MFT:104-105); the
functions below multiply by the mask anyway, exactly where the paper does.

Only torch is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# --------------------------------------------------------------------------------------------
# constants (defaults of MemFTHyperParams / the yaml files, and what the scripts pass)

TAU = 0.5  # memft_threshold (MFT:132, :225; PB:324, :331; LC:258, :265)
SLIDING_SCALE = 10.0  # sliding_scale, sigmoid sharpness (MFT:227)
MEMORY_WINDOW_SIZE = 50  # memory_window_size (MFT:251; LC:267)
SLIDING_TAU = 20.0  # sliding_tau, exp decay constant of the window (MFT:252)
SLIDING_BASE_FLOOR = 0.01  # sliding_base_floor, weight outside the window (MFT:253)
PATIENCE_TO_EXPAND = 3  # should_expand = batch_patience >= 3 (MFT:240)
EXPANSION_STEP = 0.5  # batch_expansion + 0.5 (MFT:243)
EXPANSION_CAP = 4.0  # clamp(max=4.0) (MFT:243)
SW_FALLBACK_EPS = 1e-5  # total_weight > 1e-5 else SFT loss (MFT:272-275)
CURRICULUM_RATIOS = (0.2, 0.4, 0.6, 0.8, 1.0)  # MFT:30; PB:335
CURRICULUM_DEFAULT_BOUNDARIES = (20, 40, 60, 80, 200)  # MFT:31 (default; PB passes its own)


def loss_threshold(tau: float = TAU) -> float:
    """-ln tau: ``loss_threshold = -np.log(prob_threshold)`` (MFT:133, :226); ln 2 for tau = 0.5."""
    return -math.log(float(tau))


# --------------------------------------------------------------------------------------------
# per-token losses from logits (MFT:99-107), for callers that have logits

def per_token_losses(logits: torch.Tensor, labels: torch.Tensor):
    """logits [B, L, V], labels [B, L] (-100 = no label) -> shifted tensors, all [B, L-1]:
    (shift_logits [B, L-1, V], shift_labels, token_loss, mask). The paper keeps them flat
    (MFT:102-107); here they are reshaped to [B, L-1]."""
    shift_logits = logits[..., :-1, :].contiguous()  # MFT:100
    shift_labels = labels[..., 1:].contiguous()  # MFT:101
    flat_logits = shift_logits.view(-1, shift_logits.size(-1))  # MFT:102
    flat_labels = shift_labels.view(-1)  # MFT:103
    token_loss = torch.nn.CrossEntropyLoss(reduction="none")(flat_logits, flat_labels)  # MFT:104-105
    mask = (flat_labels != -100).float()  # MFT:106
    shape = shift_labels.shape
    return shift_logits, shift_labels, token_loss.view(shape), mask.view(shape)


def sft_loss(token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The plain SFT loss ``pos_steer_loss = outputs.loss`` (MFT:497): Hugging Face's causal-LM
    loss, the mean token loss over every labelled token of the (mini)batch (batch-level mean, not
    a mean of per-record means)."""
    return (token_loss * mask).sum() / mask.sum()


# --------------------------------------------------------------------------------------------
# MemFT-OT (memft_method = "only_threshold", MFT:131-168; scripts PB:320-326, LC:254-260)

def ot_weights(token_loss: torch.Tensor, mask: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """1 where loss > -ln tau (strictly; p < tau), else 0; times the label mask (MFT:134-142).
    ``use_position_weight`` is false in every released script (PB:325, :339; LC:259, :268), so
    ``_apply_position_weight`` (MFT:109-129) is not part of the method and not ported."""
    thr = loss_threshold(tau)  # MFT:132-133
    easy_token_weight, hard_token_weight = 0.0, 1.0  # MFT:134-135
    w = torch.where(token_loss > thr,  # MFT:137-141
                    torch.full_like(token_loss, hard_token_weight),
                    torch.full_like(token_loss, easy_token_weight))
    return w * mask  # MFT:142


def ot_loss(token_loss: torch.Tensor, mask: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """The scalar loss MemFT-OT backpropagates (MFT:150-154):
    sum(loss * w) / sum(w) over the whole (mini)batch if any token is above threshold,
    else the plain SFT loss (mean over all labelled tokens)."""
    w = ot_weights(token_loss, mask, tau)
    total_weight = w.sum()  # MFT:150
    if total_weight > 0:  # MFT:151
        return (token_loss * w).sum() / total_weight  # MFT:152
    return sft_loss(token_loss, mask)  # MFT:154 (bp_loss = pos_steer_loss)


def ot_zero_bp_loss(token_loss: torch.Tensor, mask: torch.Tensor, tau: float = TAU):
    """The OT variant the PhoneBook curriculum uses (memft_method = "memft_curriculum" requires
    memft_zero_bp, MFT:527-533 -> ``_compute_only_threshold_zero_bp_loss`` MFT:170-210).
    Same weights and normalisation as ``ot_loss``, but when no token is above threshold the loss
    is a constant 0 with no gradient (MFT:193-195) instead of the SFT loss. The training loop
    still runs optimizer.step() and lr_scheduler.step() for that batch (MFT:618-623): the
    parameters do not move (no grads) but the linear schedule advances.
    Returns (loss, zero_bp)."""
    w = ot_weights(token_loss, mask, tau)  # MFT:171-181
    total_weight = w.sum()  # MFT:189
    if total_weight > 0:  # MFT:190
        return (token_loss * w).sum() / total_weight, False  # MFT:191-192
    return torch.tensor(0.0, requires_grad=True), True  # MFT:194-195


# --------------------------------------------------------------------------------------------
# MemFT-SW, long context: intra-sample spatial sliding window
# (memft_method = "sliding", MFT:212-293; script LC:261-269, batch_size 1, one long sample)

@dataclass
class SlidingState:
    """``self.batch_patience``, ``self.batch_expansion``, ``self.last_anchors`` (MFT:230-233).

    NB: in the paper these are indexed by *batch row*, not by record id, and live on the trainer
    for the whole run (all epochs). They are re-initialised whenever the batch size of a step
    differs from the stored one (MFT:230). The paper only uses SW with batch_size 1 on a single
    long sample (LC:248), where row 0 is always the same record; so keying the state by record id
    reproduces the paper exactly in its setting."""

    batch_patience: torch.Tensor | None = None  # float, [B]
    batch_expansion: torch.Tensor | None = None  # float, [B]
    last_anchors: torch.Tensor | None = None  # int64, [B]; -1 = no anchor last visit
    history: list = field(default_factory=list)  # (anchors, patience, expansion) per call, for inspection

    def ensure(self, batch_size: int, device=None) -> None:
        if self.batch_patience is None or self.batch_patience.shape[0] != batch_size:  # MFT:230
            self.batch_patience = torch.zeros(batch_size, device=device)  # MFT:231
            self.batch_expansion = torch.ones(batch_size, device=device)  # MFT:232
            self.last_anchors = torch.full((batch_size,), -1, device=device)  # MFT:233 (int64)


def sw_anchors(is_wrong: torch.Tensor):
    """Anchor = index of the FIRST argmax-wrong labelled token of each row (torch.argmax returns
    the first maximal index), has_error = the row has one (MFT:216-223). For a row without
    error argmax returns 0; that anchor is never used (the window is replaced by 1, MFT:265)."""
    is_wrong_float = is_wrong.float()  # MFT:221
    has_error = is_wrong_float.sum(dim=1) > 0  # MFT:222
    current_anchors = torch.argmax(is_wrong_float, dim=1)  # MFT:223
    return current_anchors, has_error


def sw_update_state(state: SlidingState, current_anchors: torch.Tensor, has_error: torch.Tensor):
    """Stuck-visit counter and window growth (MFT:235-248), run once per step BEFORE the window
    is built (so this visit's width already uses the updated expansion):

    * stuck  = anchor equals last visit's anchor and the row has an error;
    * patience = patience + 1 if stuck else 0;
    * expansion = min(expansion + 0.5, 4) if patience >= 3 else 1;
    * last_anchor = anchor if has_error else -1.

    Visits to the same anchor n = 1, 2, 3, 4, 5, ... (n = 1 is the visit the anchor first
    appears) give patience 0, 1, 2, 3, 4, ... and expansion 1, 1, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4 ...
    i.e. the window first grows on the 4th consecutive visit at the same anchor, by +0.5 x base
    per visit, capped at 4 x base = 200 tokens, and snaps back to 1 x base as soon as the anchor
    moves or the row has no error. Returns the expansion [B]."""
    state.ensure(current_anchors.shape[0], current_anchors.device)
    with torch.no_grad():  # MFT:235
        is_stuck = (current_anchors == state.last_anchors) & has_error  # MFT:236
        state.batch_patience = torch.where(  # MFT:237-239
            is_stuck, state.batch_patience + 1, torch.zeros_like(state.batch_patience))
        should_expand = state.batch_patience >= PATIENCE_TO_EXPAND  # MFT:240
        state.batch_expansion = torch.where(  # MFT:241-245
            should_expand,
            torch.clamp(state.batch_expansion + EXPANSION_STEP, max=EXPANSION_CAP),
            torch.ones_like(state.batch_expansion))
        state.last_anchors = torch.where(  # MFT:246-248
            has_error, current_anchors, torch.full_like(current_anchors, -1))
    state.history.append((current_anchors.tolist(), state.batch_patience.tolist(),
                          state.batch_expansion.tolist()))
    return state.batch_expansion


def sw_window(seq_len: int, current_anchors: torch.Tensor, has_error: torch.Tensor,
              expansion: torch.Tensor, window_size: int = MEMORY_WINDOW_SIZE,
              sliding_tau: float = SLIDING_TAU, base_floor: float = SLIDING_BASE_FLOOR) -> torch.Tensor:
    """The multiplicative window [B, T] (MFT:255-265, use_sliding_window = true, LC:266):

        rel   = pos - anchor                               (positions of the shifted sequence)
        decay = exp(-max(rel, 0) / 20)                     (= 1 for every token before the anchor)
        W     = 50 * expansion
        mask  = decay if rel < W else 0.01                 (before the anchor: rel < 0 < W -> 1)
        mask  = 1 everywhere for a row without an error

    Note: inside the window the decay is NOT floored: for rel > 20 ln 100 ~ 92.1 (reachable once
    the window has grown past 92 tokens) the in-window weight exp(-rel/20) is below the 0.01
    given to tokens outside the window."""
    batch_size = current_anchors.shape[0]
    device = current_anchors.device
    active_windows = (window_size * expansion).unsqueeze(1)  # MFT:256
    pos_range = torch.arange(seq_len, device=device).unsqueeze(0).expand(batch_size, -1)  # MFT:257
    anchor_pos = current_anchors.unsqueeze(1)  # MFT:258
    rel_pos = (pos_range - anchor_pos).float()  # MFT:259
    decay_curve = torch.exp(-rel_pos.clamp(min=0) / sliding_tau)  # MFT:260
    in_window_mask = (rel_pos < active_windows).float()  # MFT:261
    final_mask = torch.where(in_window_mask > 0, decay_curve,  # MFT:262-264
                             torch.full_like(decay_curve, base_floor))
    return torch.where(has_error.unsqueeze(1), final_mask, torch.ones_like(final_mask))  # MFT:265


def sw_weights(token_loss: torch.Tensor, correct: torch.Tensor, mask: torch.Tensor,
               state: SlidingState, tau: float = TAU, scale: float = SLIDING_SCALE,
               window_size: int = MEMORY_WINDOW_SIZE, sliding_tau: float = SLIDING_TAU,
               base_floor: float = SLIDING_BASE_FLOOR, use_sliding_window: bool = True) -> torch.Tensor:
    """Per-token weights [B, T] of MemFT-SW for one step; updates ``state`` (one visit per row).

    token_loss, mask: [B, T] shifted; correct: [B, T] bool, argmax(logits) == label (MFT:215).
        base = sigmoid(10 * (loss - ln 2)) * mask          (MFT:228, loss detached)
        w    = base * window                               (MFT:266)"""
    batch_size, seq_len = token_loss.shape
    detached = token_loss.detach()  # MFT:213
    is_wrong = (~correct.bool()) & (mask > 0)  # MFT:216: (predictions != labels) & (labels != -100)
    current_anchors, has_error = sw_anchors(is_wrong)  # MFT:221-223
    thr = loss_threshold(tau)  # MFT:225-226
    base_token_weights = torch.sigmoid(scale * (detached - thr)) * mask  # MFT:227-228
    expansion = sw_update_state(state, current_anchors, has_error)  # MFT:230-248 (always runs)
    if not use_sliding_window:  # MFT:267-269
        return base_token_weights
    window = sw_window(seq_len, current_anchors, has_error, expansion, window_size, sliding_tau, base_floor)
    return base_token_weights.view(batch_size, seq_len) * window  # MFT:266


def sw_loss(token_loss: torch.Tensor, correct: torch.Tensor, mask: torch.Tensor, state: SlidingState,
            **kw) -> torch.Tensor:
    """The scalar loss MemFT-SW backpropagates (MFT:271-275): one weighted mean over the whole
    batch, sum(loss * w) / sum(w), if sum(w) > 1e-5, else the plain SFT loss."""
    w = sw_weights(token_loss, correct, mask, state, **kw)
    total_weight = w.sum()  # MFT:271
    if total_weight > SW_FALLBACK_EPS:  # MFT:272
        return (token_loss * w).sum() / total_weight  # MFT:273
    return sft_loss(token_loss, mask)  # MFT:275 (bp_loss = pos_steer_loss)


# --------------------------------------------------------------------------------------------
# PhoneBook MemFT-SW: OT (zero-bp) + inter-batch temporal curriculum
# (memft_method = "memft_curriculum", MFT:21-97, :337-395, :527-533; script PB:327-340)

def curriculum_active_fraction(epoch: int, boundaries=CURRICULUM_DEFAULT_BOUNDARIES,
                               ratios=CURRICULUM_RATIOS) -> float:
    """``_get_curriculum_ratio`` (MFT:29-37): the first ratio whose boundary is > epoch (epochs
    count from 0); past the last boundary, the last ratio. With boundaries [20,40,60,80,300]:
    epochs 0-19 -> 0.2, 20-39 -> 0.4, 40-59 -> 0.6, 60-79 -> 0.8, 80.. -> 1.0. The schedule is
    set by the per-length boundary table (PB_HPARAMS), not by the total number of epochs."""
    ratios, boundaries = list(ratios), list(boundaries)
    if len(ratios) != len(boundaries):  # MFT:32-33
        raise ValueError("curriculum_ratios and curriculum_epoch_boundaries must have the same length")
    for ratio, boundary in zip(ratios, boundaries):  # MFT:34-36
        if epoch < boundary:
            return float(ratio)
    return float(ratios[-1])  # MFT:37


def curriculum_order(total_samples: int, seed: int = 42, shuffle_once: bool = True) -> list[int]:
    """``_get_curriculum_order`` (MFT:39-49): ONE permutation drawn with a torch.Generator seeded
    with the run seed (42 in the scripts, PB:9), cached and reused for every epoch."""
    if shuffle_once:  # MFT:43
        g = torch.Generator()  # MFT:44
        g.manual_seed(seed)  # MFT:45
        return torch.randperm(total_samples, generator=g).tolist()  # MFT:46
    return list(range(total_samples))  # MFT:48


def curriculum_active_count(epoch: int, total_samples: int, batch_size: int,
                            boundaries=CURRICULUM_DEFAULT_BOUNDARIES, ratios=CURRICULUM_RATIOS,
                            drop_last: bool = True) -> int:
    """Number of active samples this epoch (MFT:54-70): floor(N * ratio) rounded DOWN to whole
    batches, at least one batch, at most the whole batches of N (drop_last)."""
    if batch_size <= 0:  # MFT:55-56
        raise ValueError("batch_size must be positive for memft_curriculum")
    ratio = curriculum_active_fraction(epoch, boundaries, ratios)  # MFT:58
    complete_total_samples = (total_samples // batch_size) * batch_size if drop_last else total_samples  # MFT:60
    if complete_total_samples < batch_size:  # MFT:61-64
        raise ValueError("memft_curriculum needs at least one full batch")
    active_before_rounding = int(total_samples * ratio)  # MFT:66
    active_samples = (active_before_rounding // batch_size) * batch_size  # MFT:67
    active_samples = max(batch_size, active_samples)  # MFT:68
    return min(complete_total_samples, active_samples)  # MFT:69


def curriculum_active_indices(epoch: int, total_samples: int, batch_size: int, seed: int = 42,
                              boundaries=CURRICULUM_DEFAULT_BOUNDARIES, ratios=CURRICULUM_RATIOS,
                              drop_last: bool = True) -> list[int]:
    """The samples trained this epoch, in the order they are batched (MFT:51-97): the first
    ``active`` entries of the fixed permutation; DataLoader(Subset(...), shuffle=False,
    drop_last=True) (MFT:89-96), so batches are consecutive slices, identical every epoch of a
    stage. Inactive samples are simply not visited (no forward, no loss, no gradient)."""
    n = curriculum_active_count(epoch, total_samples, batch_size, boundaries, ratios, drop_last)
    return curriculum_order(total_samples, seed)[:n]  # MFT:72-73


def curriculum_batches(epoch: int, total_samples: int, batch_size: int, seed: int = 42,
                       boundaries=CURRICULUM_DEFAULT_BOUNDARIES, ratios=CURRICULUM_RATIOS) -> list[list[int]]:
    idx = curriculum_active_indices(epoch, total_samples, batch_size, seed, boundaries, ratios)
    return [idx[i:i + batch_size] for i in range(0, len(idx) - batch_size + 1, batch_size)]


def curriculum_num_training_steps(total_samples: int, batch_size: int, n_epochs: int, grad_accum: int,
                                  boundaries=CURRICULUM_DEFAULT_BOUNDARIES, ratios=CURRICULUM_RATIOS) -> int:
    """Length of the linear lr schedule under the curriculum (MFT:356-362):
    sum over epochs of active_batches // grad_accum."""
    return sum(curriculum_active_count(e, total_samples, batch_size, boundaries, ratios) // batch_size
               // grad_accum for e in range(n_epochs))


def num_training_steps(n_batches_per_epoch: int, n_epochs: int, grad_accum: int) -> int:
    """Without curriculum (MFT:363-364): n_epochs * (len(dataloader) // grad_accum)."""
    return n_epochs * (n_batches_per_epoch // grad_accum)


def linear_lr(step: int, total_steps: int, base_lr: float, warmup: int = 0) -> float:
    """transformers.get_scheduler("linear", num_warmup_steps=0, num_training_steps=N)
    (MFT:365-370): lr(step) = base * max(0, (N - step) / max(1, N - warmup)) after warmup.
    ``step`` = optimizer steps taken so far; the lr used by optimizer step k (0-based) is lr(k).
    The optimizer steps when (step+1) % grad_accum == 0 OR at the last batch of the epoch
    (MFT:618), so when len(dataloader) is not a multiple of grad_accum there are more optimizer
    steps than N and the extra ones run at lr 0."""
    if step < warmup:
        return base_lr * step / max(1, warmup)
    return base_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup))


# --------------------------------------------------------------------------------------------
# hyper-parameter tables

# PhoneBook, script/pb/common.sh. Key: (model family, method) -> {length: settings}. "length" is
# the total number of target tokens of the subset PB<length>.jsonl (Qwen targets are ~10 tokens
# per record -> N = length/10 records; Llama ~4 tokens -> N = length/4; docs/phonebook_benchmark.md).
# Every run: AdamW(weight_decay 0), linear decay to 0, warmup 0, grad clip 1.0, LoRA dropout 0.1,
# seed 42, output_length (tokenizer max length) 128 (PB:10), layer 24 (Qwen) / 18 (Llama).
_SCHED = {"scheduler": "linear", "warmup_steps": 0}


def _sft_table(batches: dict) -> dict:
    return {length: {"lr": 1e-2, "epochs": 200, "batch_size": bs, "grad_accum": 1, "boundaries": None, **_SCHED}
            for length, bs in batches.items()}


def _sw(lr, epochs, bs, accum, boundaries):
    return {"lr": lr, "epochs": epochs, "batch_size": bs, "grad_accum": accum,
            "boundaries": tuple(boundaries), "ratios": CURRICULUM_RATIOS, **_SCHED}


_QWEN_SFT = _sft_table({1000: 4, 2000: 4, 4000: 4, 8000: 8, 12000: 8, 16000: 8, 24000: 8, 32000: 16})  # PB:121-134
_LLAMA_SFT = _sft_table({1000: 10, 2000: 10, 4000: 10, 8000: 10, 12000: 10, 16000: 10,
                         24000: 20, 32000: 20})  # PB:171-183

PB_HPARAMS = {
    ("qwen", "sft"): _QWEN_SFT,
    ("qwen", "memft_ot"): _QWEN_SFT,  # PB:136-138: OT uses the SFT table
    ("qwen", "memft_sw"): {  # PB:140-169
        1000: _sw(1e-2, 300, 10, 1, (20, 40, 60, 80, 300)),
        2000: _sw(1e-2, 300, 10, 1, (20, 40, 60, 80, 300)),
        4000: _sw(1e-2, 350, 10, 1, (30, 60, 90, 120, 350)),
        8000: _sw(7e-3, 350, 20, 2, (30, 60, 90, 120, 350)),
        12000: _sw(5e-3, 500, 40, 2, (60, 120, 180, 240, 500)),
        16000: _sw(5e-3, 600, 40, 2, (80, 160, 240, 320, 600)),
        24000: _sw(5e-3, 600, 40, 2, (80, 160, 240, 320, 600)),
        32000: _sw(5e-3, 700, 40, 2, (100, 200, 300, 400, 700)),
    },
    ("llama", "sft"): _LLAMA_SFT,
    ("llama", "memft_ot"): _LLAMA_SFT,  # PB:185-187
    ("llama", "memft_sw"): {  # PB:189-222
        1000: _sw(1e-2, 300, 25, 1, (20, 40, 60, 80, 300)),
        2000: _sw(1e-2, 400, 25, 1, (40, 80, 120, 160, 400)),
        4000: _sw(7e-3, 400, 50, 1, (40, 80, 120, 160, 400)),
        8000: _sw(5e-3, 600, 50, 2, (80, 160, 240, 320, 600)),
        12000: _sw(5e-3, 700, 50, 2, (100, 200, 300, 400, 700)),
        16000: _sw(5e-3, 700, 50, 2, (100, 200, 300, 400, 700)),
        24000: _sw(3e-3, 700, 50, 4, (100, 200, 300, 400, 700)),
        32000: _sw(3e-3, 800, 50, 4, (120, 240, 360, 480, 800)),
    },
}

# Long context, script/long_context/common.sh LC:235-269: the same for sft, memft_ot, memft_sw
# (memft_sw = the intra-sample sliding window above). One sample (a ~30k-token text) truncated to
# output_length = length + offset tokens (LC:172-181: Qwen +36, Qwen SW +31, Llama +54: the
# prompt/template tokens), so the trained target is the first `length` response tokens and the
# end-of-turn suffix is cut off by the truncation.
LC_HPARAMS = {"lr": 1e-2, "epochs": 2000, "batch_size": 1, "grad_accum": 1, **_SCHED,
              "lengths": (50, 100, 200, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000),
              "ranks": (1, 2, 4, 6, 8, 10, 12, 14, 16, 24, 32, 48, 64, 128, 256, 512)}
