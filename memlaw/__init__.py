"""memlaw: how much LoRA capacity a corpus needs, and whether an adapter really holds it.

    import memlaw
    est = memlaw.plan("faq.jsonl")                      # the rank it needs
    ad = memlaw.train("faq.jsonl", "runs/faq", rank=est.recommended_rank)
    memlaw.audit(ad.path).passed(memlaw.Gate(min_coverage=0.99))

The names below come from :mod:`memlaw.api`, imported on first use: ``import memlaw`` stays cheap
and a cached ``memlaw.plan`` never imports torch.
"""

__version__ = "0.1.0"

_API = ("plan", "audit", "train", "repair", "calibrate", "card_defaults", "Runtime", "Progress", "Corpus", "Gate",
        "Recipe", "LoraTemplate", "TrainedAdapter")
_ELSEWHERE = {"UserError": "memlaw.errors", "ParameterError": "memlaw.errors", "AuditResult": "memlaw.auditor.audit",
              "Estimate": "memlaw.planner.estimate", "LawCard": "memlaw.card"}

__all__ = ["__version__", *_API, *_ELSEWHERE]


def __getattr__(name: str):
    import importlib

    if name in _API:
        return getattr(importlib.import_module("memlaw.api"), name)
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'memlaw' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(__all__))
