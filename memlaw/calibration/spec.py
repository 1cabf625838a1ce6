"""What a sweep runs: the grid, the shard, the template and recipe (:class:`SweepSpec`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence


from memlaw.card import MIN_POINTS
from memlaw.errors import ParameterError
from memlaw.calibration.defaults import (DEFAULT_CHUNK, DEFAULT_LAST_LAYERS, DEFAULT_LENGTHS, DEFAULT_RANKS,
                                         DEFAULT_TARGET_MODULES, default_recipe)

# ---------------------------------------------------------------------------------------------
# what to run


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str | None) -> "Shard | None":
        if text is None or str(text).strip() == "":
            return None
        try:
            i, n = (int(x) for x in str(text).split("/"))
        except ValueError:
            raise ParameterError("shard", f"{{name}} must look like i/n (e.g. 0/4), got '{text}'") from None
        if n < 1 or not 0 <= i < n:
            raise ParameterError("shard", f"{{name}} {text}: need n ≥ 1 and 0 ≤ i < n",
                                 fix="e.g. {set}0/4 … {set}3/4")
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_ints(text: str | Sequence[int], param: str) -> tuple[int, ...]:
    """'1,2,4' (or [1, 2, 4]) → (1, 2, 4), sorted and without repeats; every value ≥ 1. Errors name
    the parameter ``param`` (the CLI re-words them with its option)."""
    if isinstance(text, str):
        try:
            vals = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ParameterError(param, f"{{name}} must be comma-separated integers, got '{text}'") from None
    else:
        try:
            vals = [int(x) for x in text]
        except (TypeError, ValueError):
            raise ParameterError(param, f"{{name}} must be integers, got {text!r}") from None
    if not vals:
        raise ParameterError(param, "{name} is empty", fix="pass e.g. {set}1,2,4,8")
    if min(vals) < 1:
        raise ParameterError(param, f"{{name}} values must be ≥ 1, got {min(vals)}")
    return tuple(sorted(set(vals)))


def parse_layers(text: str | None):
    """None (default: the last two layers), 'all', or a tuple of layer indices."""
    if text is None or str(text).strip() == "":
        return None
    if str(text).strip().lower() == "all":
        return "all"
    try:
        return tuple(sorted({int(x) for x in str(text).split(",") if x.strip()}))
    except ValueError:
        raise ParameterError("layers", f"{{name}} must be comma-separated integers or 'all', got '{text}'") from None


@dataclass
class SweepSpec:
    """Everything a sweep needs. ``layers``: None = the last two layers of the model, "all", or
    explicit indices. ``batch_size``: None = all records of a point in one batch."""

    model: str
    ranks: tuple[int, ...] = DEFAULT_RANKS
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    layers: tuple[int, ...] | str | None = None
    alpha: str | float = "2*rank"
    recipe: object = field(default_factory=default_recipe)  # memlaw.memft.Recipe
    batch_size: int | None = None
    chunk: int = DEFAULT_CHUNK
    data: object = None  # memlaw.memft.CorpusSpec, or None for random tokens
    data_seed: int = 0
    shard: Shard | None = None
    device: str = "cpu"
    dtype: str = "float32"
    n_boot: int = 200

    def __post_init__(self):
        self.ranks = parse_ints(self.ranks, "ranks")
        self.lengths = parse_ints(self.lengths, "lengths")
        if isinstance(self.layers, str):
            self.layers = parse_layers(self.layers)
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules:
            raise ParameterError("target_modules", "{name} is empty", fix="pass e.g. {set}q_proj,v_proj")
        if self.chunk < 1:
            raise ParameterError("chunk", f"{{name}} must be ≥ 1, got {self.chunk}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ParameterError("batch_size", f"{{name}} must be ≥ 1, got {self.batch_size}")
        if len(self.ranks) < 2 or len(self.lengths) < 2 or len(self.grid()) < MIN_POINTS:
            raise ParameterError("ranks", f"a grid of {len(self.ranks)} rank(s) × {len(self.lengths)} length(s) "
                                          "cannot determine the law (C, α, β, b)",
                                 fix=f"sweep at least 2 ranks and 2 lengths, {MIN_POINTS}+ points (e.g. {{set}}1,2,4,8 "
                                     "{set:lengths}64,128,256)")

    def grid(self) -> list[tuple[int, int]]:
        """Every (rank, length), row-major: ranks outer, lengths inner."""
        return [(r, n) for r in self.ranks for n in self.lengths]

    def shard_points(self) -> list[tuple[int, int]]:
        g = self.grid()
        if self.shard is None:
            return g
        return [p for i, p in enumerate(g) if i % self.shard.count == self.shard.index]

    def template(self, model):
        """The LoRA template with the layers resolved against the model."""
        from memlaw.memft import LoraTemplate

        n = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        if self.layers is None or self.layers == "all":
            if n < 1:
                raise ParameterError("layers", "cannot tell how many layers the model has (config.num_hidden_layers)",
                                     fix="pass {name} explicitly")
            layers = tuple(range(max(0, n - DEFAULT_LAST_LAYERS), n)) if self.layers is None else tuple(range(n))
        else:
            layers = tuple(self.layers)
            bad = [x for x in layers if x < 0 or (n and x >= n)]
            if bad:
                raise ParameterError("layers", f"{{name}} {','.join(map(str, bad))}: the model has layers 0–{n - 1}")
        t = LoraTemplate(target_modules=self.target_modules, layers=layers, alpha=self.alpha)
        try:
            t.alpha_for(1)
        except ValueError:
            raise ParameterError("alpha", f"{{name}} must be a number or k*rank, got '{self.alpha}'") from None
        if not t.matched_modules(model):
            raise ParameterError("target_modules", f"LoRA target modules {list(self.target_modules)} on layers "
                                                   f"{list(layers)} match no module of the model",
                                 fix="pass {name} names that exist (e.g. q_proj,v_proj)")
        return t

    def recipe_dict(self) -> dict:
        d = self.recipe.to_dict()
        d["batch_size"] = "all" if self.batch_size is None else int(self.batch_size)
        d["objective"] = d["method"]
        d["dtype"] = self.dtype
        return d

    def recipe_for(self, n_records: int):
        return dataclasses.replace(self.recipe, batch_size=self.batch_size or max(1, n_records))
