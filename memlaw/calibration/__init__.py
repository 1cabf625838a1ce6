"""Calibration: LoRA sweeps over ranks × lengths on a base model, and the law card fitted to them.

The sweep itself lives in :mod:`memlaw.calibration.sweep` (it imports torch lazily). This module
stays torch-free: the planner asks it for the card shipped with memlaw for a built-in model.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def default_card_path(model_name: str) -> Path | None:
    """The law card shipped with memlaw for ``model_name`` (``memlaw/cards/<name>.json``), or None.

    Only built-in names have shipped cards (``tiny``; ``smollm2-135m`` once calibrated); a path or
    a Hugging Face id gets None — calibrate it with ``memplan calibrate``.
    """
    if not model_name or any(c in model_name for c in "/\\:") or model_name.startswith("."):
        return None
    try:
        res = files("memlaw") / "cards" / f"{model_name}.json"
        if not res.is_file():
            return None
        return Path(str(res))
    except (OSError, TypeError, ValueError):
        return None
