"""Repair: MemFT continued from an audited adapter, written to a new folder, then audited again.

The adapter is loaded trainable on its base model and trained on its corpus with ``method``:
``sft`` by default (over 3 seeds it repaired more than MemFT's ``ot``, whose locality was no
better: docs/results.md §6); ``ot``, ``sw`` and ``curriculum`` remain. Training is budgeted in
steps and stops early as soon as the gate holds, checked
after every epoch by a real scoring pass (not the training pass's estimate). With no threshold
given the target is every token locked. The result goes to a *new* folder (checked before anything
loads or trains; the input adapter is only read) with ``memlaw.json`` recording ``repaired_from``,
and that saved folder is audited afresh: the "after" numbers are those of the adapter on disk.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from memlaw.auditor.audit import AuditResult, Gate, audit_adapter, audit_inputs, load_adapter_inputs
from memlaw.backends import ScoringBackend, get_backend
from memlaw.errors import ParameterError
from memlaw.sidecar import FILENAME as SIDECAR
from memlaw.sidecar import Sidecar


@dataclass
class RepairResult:
    before: AuditResult
    after: AuditResult
    out: Path
    steps: int
    stop_reason: str
    seconds: float
    sidecar: dict

    @property
    def improved(self) -> bool:
        return self.after.summary["coverage"] > self.before.summary["coverage"]


def _inside(child: Path, parent: Path) -> bool:
    c, p = child.resolve(), parent.resolve()
    return c == p or p in c.parents


def _lora_modules(model) -> list[tuple[str, int, int]]:
    from peft.tuners.lora import LoraLayer

    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer):
            out.append((name, int(getattr(mod, "in_features", 0) or 0), int(getattr(mod, "out_features", 0) or 0)))
    return out


def _template_of(cfg: dict, model) -> dict:
    mods = sorted({name.split(".")[-1] for name, _, _ in _lora_modules(model)})
    layers = cfg.get("layers_to_transform")
    if isinstance(layers, int):
        layers = [layers]
    return {"target_modules": mods or cfg.get("target_modules"), "layers": layers,
            "alpha": cfg.get("lora_alpha"), "dropout": float(cfg.get("lora_dropout") or 0.0)}


def repair(adapter_dir: str | os.PathLike, out: str | os.PathLike, *, corpus=None, base_model: str | None = None,
           method: str = "sft", steps: int = 300, lr: float = 2e-3, batch_size: int = 32,
           patience: int | None = None, seed: int = 0, gate: Gate | None = None, allow_pickle: bool = False,
           trust_remote_code: bool = False, force_base: bool = False, device: str = "cpu",
           progress: bool = False, on_before: Callable[[AuditResult], None] | None = None,
           backend: str | ScoringBackend = "auto", vllm_mode: str = "auto", effect_check: bool = True,
           tensor_parallel_size: int = 1) -> RepairResult:
    """Continue training the adapter in ``adapter_dir`` with MemFT (``method``: ot, sw or sft) for at
    most ``steps`` steps, stopping once ``gate`` holds, save it to the new folder ``out`` and audit
    it there. Returns before and after audits. Raises :class:`UserError` on bad input, and before
    any loading or training when ``out`` exists. ``on_before(audit)`` sees the audit of the input
    adapter before training starts (the CLI prints it). ``backend`` scores the before and after
    audits (``vllm`` possible); the gate checks during training use the in-memory model."""
    from memlaw import __version__
    from memlaw.io import sha256_file
    from memlaw.memft import CorpusSpec, Recipe, check_new_dir, save_adapter, seed_everything, train
    from memlaw.scoring import score, summarize

    adapter_dir, out = Path(adapter_dir), Path(out)
    check_new_dir(out)
    engine = get_backend(backend, vllm_mode=vllm_mode, tensor_parallel_size=tensor_parallel_size)
    engine.require()  # before anything loads or trains
    if adapter_dir.exists() and _inside(out, adapter_dir):
        raise ParameterError("out", f"{{name}} {out} lies inside the adapter folder {adapter_dir}, which is never "
                                    "modified", fix="choose a folder outside it")
    if steps < 1:
        raise ParameterError("steps", f"{{name}} must be ≥ 1, got {steps}")
    recipe = Recipe(method=method, lr=lr, batch_size=batch_size, max_steps=steps, seed=seed,
                    **({"patience": patience} if patience is not None else {}))
    gate = gate or Gate()
    start = time.perf_counter()

    seed_everything(seed)
    inputs = load_adapter_inputs(adapter_dir, corpus, base_model, allow_pickle=allow_pickle,
                                 trust_remote_code=trust_remote_code, force_base=force_base, trainable=True,
                                 device=device)
    scoring = dict(backend=engine, effect_check=effect_check)
    before = audit_inputs(inputs, progress=progress, **scoring)
    if on_before is not None:
        on_before(before)
    model, encoded, pad_id = inputs.model, inputs.encoded, inputs.pad_id

    # the in-training checks score the adapter only: the no-effect test is for the audits
    train_gate = dataclasses.replace(gate, fail_on_no_effect=False)

    def done(summary: dict) -> bool:
        return train_gate.passed(summary) if train_gate.active else summary["coverage"] >= 1.0

    # A gate check is a real scoring pass through every layer over the whole corpus: on a CPU with
    # a last-layers template it cost 4x a training epoch (whose frozen layers are cached), and
    # checking after every epoch made the repair 5x slower. So check again only once training has
    # run 3x as long as the last check took: at most a quarter of the time goes to checks, and the
    # stop comes at most a few epochs after the gate first holds.
    last_check = {"cost": 0.0, "end": time.perf_counter()}

    def on_epoch(entry: dict) -> bool:
        if not gate.active:
            return False  # train stops by itself once every token is locked
        if time.perf_counter() - last_check["end"] < 3 * last_check["cost"]:
            return False
        t0 = time.perf_counter()
        model.eval()
        summary = summarize(score(model, encoded, pad_id=pad_id))
        model.train()
        last_check["cost"], last_check["end"] = time.perf_counter() - t0, time.perf_counter()
        entry["gate_check"] = {k: summary[k] for k in ("coverage", "exact_records", "locked_records", "mean_loss")}
        return gate.passed(summary)

    if done(before.summary):
        n_steps, reason, seconds, history = 0, "already_passing", 0.0, []
        final = {k: v for k, v in before.summary.items()}
    else:
        result = train(model, encoded, recipe, pad_id=pad_id, progress=progress, on_epoch=on_epoch)
        n_steps, seconds, history = result.steps, result.seconds, result.history
        reason = "gate_passed" if result.stop_reason == "callback" else result.stop_reason
        final = summarize(score(model, encoded, pad_id=pad_id))

    cfg = inputs.adapter_config
    # the input's sidecar, updated: keys this version does not know are carried over
    sidecar = (inputs.sidecar or Sidecar()).updated(
        memlaw_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        corpus=inputs.corpus.to_dict(),
        base_model=inputs.base.identity,
        rank=cfg.get("r"),
        template=_template_of(cfg, model),
        params_per_rank=sum(i + o for _, i, o in _lora_modules(model)),
        recipe=recipe.to_dict(),
        init_adapter=str(adapter_dir.resolve()),
        train={"steps": n_steps, "seconds": round(seconds, 2), "stop_reason": reason, "history": history},
        final=final,
        repaired_from={
            "adapter": str(adapter_dir.resolve()),
            "weights_sha256": sha256_file(inputs.weights_file),
            "method": method,
            "gate": gate.to_dict(),
            "before": before.summary,
        },
    )
    save_adapter(model, out, inputs.base_name, sidecar)

    base_name = inputs.base_name
    del model, inputs  # free the trained copy before loading the saved one
    gc.collect()
    c = sidecar.corpus
    spec = CorpusSpec(c["path"], fmt=c.get("fmt") or "auto", key_field=c.get("key_field"),
                      target_field=c.get("target_field"))
    after = audit_adapter(out, corpus=spec, base_model=base_name, trust_remote_code=trust_remote_code,
                          device=device, progress=progress, **scoring)
    after.repair = {"repaired_from": str(adapter_dir), "method": method, "steps": n_steps, "stop_reason": reason,
                    "before": before.summary}
    return RepairResult(before=before, after=after, out=out, steps=n_steps, stop_reason=reason,
                        seconds=time.perf_counter() - start, sidecar=sidecar.to_dict())


def repair_defaults(adapter_dir: str | os.PathLike) -> tuple[dict, str] | None:
    """lr and batch size for a repair when not given: those the adapter was trained with (its
    memlaw.json), else those of the law card shipped for its base model. A repair continues the
    adapter's own template, so its training's settings fit it; the generic 2e-3 / 32 crawled on
    SmolLM2's card template (a loss change of 2% in 6 steps)."""
    adapter_dir = Path(adapter_dir)
    side = Sidecar.read(adapter_dir)[0] or Sidecar()
    recipe = side.recipe_dict
    source = f"{adapter_dir / SIDECAR}"
    if not recipe:
        # memlaw's own name for the base (the sidecar's) first: adapter_config.json may hold a folder
        base = (side.base_model_name
                or _read_json_object(adapter_dir / "adapter_config.json").get("base_model_name_or_path"))
        from memlaw.planner.estimate import shipped_card_path

        card = shipped_card_path(base) if isinstance(base, str) else None
        recipe = _read_json_object(card).get("recipe", {}) if card else {}
        source = f"the law card {card.name}" if card else ""
    out = {}
    if isinstance(recipe.get("lr"), (int, float)) and recipe["lr"] > 0:
        out["lr"] = float(recipe["lr"])
    b = recipe.get("batch_size")
    if isinstance(b, int) and b >= 1:
        out["batch_size"] = b
    elif b == "all":
        out["batch_size"] = None  # all records, capped below
    return (out, source) if out else None


def _read_json_object(path: Path) -> dict:
    """A JSON object from ``path``, or {} when the file is missing, unreadable or not an object."""
    import json

    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}
