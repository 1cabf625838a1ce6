"""``memlaw.json``: what memlaw records beside each PEFT adapter it writes, as one type.

``memlaw train`` (:func:`memlaw.memft.train_adapter`) writes it, repair rewrites it for the new
folder with ``repaired_from``, and the auditor reads it for the corpus, the base model's identity
and name, and whether training scored the EOS token. An adapter folder is untrusted input: a
sidecar is read leniently (absent or unreadable → None and a reason), and each field keeps the
value the file holds, so a reader checks its type before use.

The file format is unchanged from before this type existed: keys this version does not know are
kept in :attr:`Sidecar.extra`, and a sidecar read and written again keeps its keys in the file's
order, so nothing is lost or reshuffled.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

FILENAME = "memlaw.json"


class _Unset:
    """The default of a field no one set: such a field reads as None and is left out of the file."""

    def __repr__(self) -> str:
        return "unset"


_UNSET = _Unset()


@dataclass
class Sidecar:
    """The content of an adapter's ``memlaw.json``.

    ``corpus``: :meth:`memlaw.memft.CorpusSpec.to_dict` (path, sha256, fmt, key_field,
    target_field). ``base_model``: the base model's identity (name — memlaw's own, e.g. ``tiny`` —,
    config_sha256, weights_sha256). ``template`` / ``recipe``: the LoRA template and training recipe
    as dicts. ``init_adapter``: the adapter training continued from, None for a fresh one.
    ``train``: steps, seconds, stop_reason, history. ``final``: the last scoring pass's summary.
    ``repaired_from``: set by repair (the input adapter, its weights hash, method, gate, the audit
    before). ``extra``: every other key of the file, kept as read.

    A field not given (nor read from the file) reads as None and is not written; one set to None
    is written as null, as memft writes ``"init_adapter": null``. Change a sidecar with
    :meth:`updated` (``dataclasses.replace`` would mark every field set)."""

    memlaw_version: str | None = _UNSET
    created: str | None = _UNSET
    corpus: dict | None = _UNSET
    base_model: dict | None = _UNSET
    rank: int | None = _UNSET
    template: dict | None = _UNSET
    params_per_rank: int | None = _UNSET
    recipe: dict | None = _UNSET
    init_adapter: str | None = _UNSET
    train: dict | None = _UNSET
    final: dict | None = _UNSET
    repaired_from: dict | None = _UNSET
    extra: dict = field(default_factory=dict)
    # the key order of the file this was read from: writing it back keeps that order
    _order: tuple = field(default=(), repr=False, compare=False)

    def __setattr__(self, name, value):
        if name in _KNOWN:
            written = self.__dict__.setdefault("_written", set())
            if value is _UNSET:
                value = None
                written.discard(name)
            else:
                written.add(name)
        object.__setattr__(self, name, value)

    def __post_init__(self):
        clash = sorted(set(self.extra) & set(_KNOWN))
        if clash:
            raise ValueError(f"extra keys {clash} are Sidecar fields: set the fields instead")

    # ----------------------------------------------------------------------------------------
    # dict and file

    @classmethod
    def from_dict(cls, data: dict) -> "Sidecar":
        """A sidecar from a parsed ``memlaw.json``; unknown keys go to ``extra``, values are kept as is."""
        side = cls(**{k: v for k, v in data.items() if k in _KNOWN},
                   extra={k: v for k, v in data.items() if k not in _KNOWN})
        side._order = tuple(data)
        return side

    def to_dict(self) -> dict:
        """What ``memlaw.json`` holds: the fields set (or read), then ``extra``; in the order of
        the file read, keys it did not have after it in field order."""
        values: dict[str, Any] = {name: getattr(self, name) for name in _KNOWN if name in self._written}
        values.update(self.extra)
        ordered = {k: values[k] for k in self._order if k in values}
        ordered.update(values)
        return ordered

    @classmethod
    def read(cls, adapter_dir: str | os.PathLike) -> tuple["Sidecar | None", str | None]:
        """The sidecar of an adapter folder, or (None, why) when it is unreadable, (None, None) when
        absent. Never raises on a bad file: the adapter is audited without it, with a warning."""
        import json

        p = Path(adapter_dir) / FILENAME
        if not p.is_file():
            return None, None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return None, f"{p} is unreadable ({type(e).__name__}), ignored"
        if not isinstance(data, dict):
            return None, f"{p} is not a JSON object, ignored"
        return cls.from_dict(data), None

    def write(self, folder: str | os.PathLike) -> Path:
        """Write ``memlaw.json`` into ``folder`` atomically; returns its path."""
        from memlaw.io import atomic_write_json

        path = Path(folder) / FILENAME
        atomic_write_json(path, self.to_dict())
        return path

    def updated(self, **changes) -> "Sidecar":
        """A copy with ``changes`` set, keeping ``extra`` and the file's key order."""
        unknown = sorted(set(changes) - set(_KNOWN))
        if unknown:
            raise TypeError(f"Sidecar has no field {unknown[0]!r}")
        new = copy.copy(self)
        new._written = set(self._written)  # copy.copy would share the set
        new.extra = dict(self.extra)
        for name, value in changes.items():
            setattr(new, name, value)
        return new

    # ----------------------------------------------------------------------------------------
    # what readers ask of it (the file is untrusted: wrong types read as absent)

    @property
    def base_model_name(self):
        """memlaw's name for the base model (``base_model.name``) as the file holds it, or None."""
        return self.base_model.get("name") if isinstance(self.base_model, dict) else None

    @property
    def recipe_dict(self) -> dict:
        """The training recipe, or {} when the file has none (or not a JSON object)."""
        return self.recipe if isinstance(self.recipe, dict) else {}

    @property
    def eos(self) -> bool:
        """Was the adapter trained to emit EOS after each target (so audits score that token too)?"""
        return bool(self.recipe_dict.get("eos"))


#: the fields that are keys of the file (``extra`` holds the others)
_KNOWN = tuple(f.name for f in fields(Sidecar) if f.name not in ("extra", "_order"))
