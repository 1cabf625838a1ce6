"""memlaw: how much LoRA capacity a corpus needs, and whether an adapter really holds it."""

__version__ = "0.1.0"
