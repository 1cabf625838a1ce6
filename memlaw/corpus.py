"""Corpora: JSONL files of records to memorise, and how they become tokens.

A corpus is a JSONL file, one record per line. Each record is a *key* (the prompt, may be empty)
and a *target* (the text the adapter must reproduce verbatim). Formats, detected per line from the
object's fields (``fmt="auto"``; one file may not mix formats):

* ``prompt``   — ``{"prompt": KEY, "completion": TARGET}``
* ``query``    — ``{"query": KEY, "target": TARGET}``
* ``messages`` — ``{"messages": [{"role": R, "content": C}, ...]}``: the target is the content of
  the last message, which must have role ``assistant``; the key is the messages before it (at least
  one), rendered with the tokenizer's chat template when the records are encoded.
* ``text``     — ``{"text": TARGET}``, empty key.
* custom       — ``key_field`` / ``target_field`` (the CLIs' ``--key-field`` / ``--target-field``);
  ``target_field`` alone means an empty key.

Other fields on a line are ignored. Every problem with the input is a one-line :class:`UserError`
starting with ``path:line:`` where a line applies.

Tokenisation rule (what scoring and training both see — use :func:`encode_records`, never
re-tokenise by hand):

1. key ids
   * messages records: ``tokenizer.apply_chat_template(messages_before_target, tokenize=False,
     add_generation_prompt=True)``, then ``tokenizer(text, add_special_tokens=False)`` (the
     template already holds whatever special tokens the model expects);
   * other records: ``tokenizer(key, add_special_tokens=True)`` (so tokenizers that add a BOS, e.g.
     Llama's, add it).
2. target ids: ``tokenizer(target, add_special_tokens=False)``; no EOS is appended.
3. if the key ids are empty (text records, or a tokenizer that adds no BOS to an empty key), they
   become ``[bos_token_id]``, or ``[eos_token_id]`` if there is no BOS, so that the first target
   token has a context to be predicted from.
4. ``input_ids = key_ids + target_ids``; only the ``target_ids`` positions are scored and trained.

Key and target are tokenised separately and concatenated, so a target's tokens never merge with
the end of its key: the target tokens are the same whatever the key is.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from memlaw.errors import ParameterError, UserError

#: format name -> (key field, target field); ``messages`` is handled apart.
FIELD_FORMATS: dict[str, tuple[str | None, str]] = {
    "prompt": ("prompt", "completion"),
    "query": ("query", "target"),
    "text": (None, "text"),
}
FORMATS = ("prompt", "query", "messages", "text")
_ALIASES = {
    "prompt_completion": "prompt", "prompt-completion": "prompt", "completion": "prompt",
    "query_target": "query", "query-target": "query", "target": "query",
    "chat": "messages",
}
_KNOWN = ('known formats: {"prompt","completion"}, {"query","target"}, {"messages":[...]}, {"text"}; '
          "or name your fields with --key-field/--target-field")

_BOM = "\ufeff"
_BATCH = 1024  # records per tokenizer call


@dataclass(frozen=True)
class Record:
    """One thing to memorise. ``where`` is ``"path:line"``.

    For messages records ``messages`` holds the (role, content) pairs before the final assistant
    message and ``key`` is ``""``: the key text exists only once a tokenizer's chat template
    renders it (:func:`render_keys`)."""

    key: str
    target: str
    where: str
    messages: tuple[tuple[str, str], ...] | None = None


@dataclass
class Conflict:
    """One key (for messages, one message tuple) given different targets: no adapter can lock all.

    ``wheres`` and ``targets`` are parallel, one entry per record holding the key."""

    key: str
    wheres: list[str]
    targets: list[str]


@dataclass(frozen=True)
class Encoded:
    """A record as token ids (see the module docstring for the rule). ``index`` is its position in
    the list of records it was encoded from."""

    key_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    index: int

    @property
    def input_ids(self) -> tuple[int, ...]:
        return self.key_ids + self.target_ids

    @property
    def n_target(self) -> int:
        return len(self.target_ids)


# --------------------------------------------------------------------------------------------
# reading


def _short(text: str, n: int = 60) -> str:
    text = repr(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _check_text(value, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{what} must be a string, got {_type_name(value)}", where=where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{what} holds an unpaired surrogate escape (\\ud800–\\udfff), which is not text",
                        where=where, fix="fix the escape or remove it")
    return value


def _check_target(value, what: str, where: str) -> str:
    value = _check_text(value, what, where)
    if value == "":
        raise UserError(f"{what} is empty: nothing to memorise", where=where,
                        fix="remove the record or give it a target")
    return value


def _normalise_fmt(fmt: str) -> str:
    if not isinstance(fmt, str):
        raise UserError(f"unknown corpus format {fmt!r}", fix=_KNOWN)
    f = fmt.strip().lower()
    f = _ALIASES.get(f, f)
    if f not in FORMATS and f not in ("auto", "custom"):
        raise UserError(f"unknown corpus format {_short(fmt)} (use auto, {', '.join(FORMATS)})",
                        fix=_KNOWN)
    return f


def _detect(obj: dict) -> list[str]:
    """Formats whose signature fields the object has."""
    found = []
    if "messages" in obj:
        found.append("messages")
    if "prompt" in obj or "completion" in obj:
        found.append("prompt")
    if "query" in obj or "target" in obj:
        found.append("query")
    if "text" in obj:
        found.append("text")
    return found


def _parse_messages(obj: dict, where: str) -> Record:
    if "messages" not in obj:
        raise UserError("missing field 'messages'", where=where)
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        raise UserError(f"field 'messages' must be a list of {{role, content}} objects, got {_type_name(msgs)}",
                        where=where)
    if not msgs:
        raise UserError("field 'messages' is empty: nothing to memorise", where=where)
    pairs = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise UserError(f"messages[{i}] must be an object with 'role' and 'content', got {_type_name(m)}",
                            where=where)
        for name in ("role", "content"):
            if name not in m:
                raise UserError(f"messages[{i}] has no '{name}'", where=where)
        role = _check_text(m["role"], f"messages[{i}].role", where)
        content = _check_text(m["content"], f"messages[{i}].content", where)
        pairs.append((role, content))
    last_role, target = pairs[-1]
    if last_role != "assistant":
        raise UserError(f"the last message has role {_short(last_role)}, not 'assistant': it is the target "
                        "to memorise", where=where, fix="end each record with the assistant's reply")
    if len(pairs) < 2:
        raise UserError("messages holds only the assistant reply: the key would be empty", where=where,
                        fix="add the messages it answers, or use {\"text\": ...} for text with no prompt")
    _check_target(target, f"messages[{len(pairs) - 1}].content (the target)", where)
    return Record(key="", target=target, where=where, messages=tuple(pairs[:-1]))


def _parse_fields(obj: dict, key_field: str | None, target_field: str, where: str) -> Record:
    if target_field not in obj:
        raise UserError(f"missing field {_short(target_field)}", where=where)
    key = ""
    if key_field is not None:
        if key_field not in obj:
            raise UserError(f"missing field {_short(key_field)}", where=where)
        key = _check_text(obj[key_field], f"field {_short(key_field)}", where)
    target = _check_target(obj[target_field], f"field {_short(target_field)}", where)
    return Record(key=key, target=target, where=where)


def read_corpus(path: str | os.PathLike, *, fmt: str = "auto", key_field: str | None = None,
                target_field: str | None = None) -> list[Record]:
    """Read a JSONL corpus into records, in file order. Raises :class:`UserError` on any bad input."""
    return list(iter_corpus(path, fmt=fmt, key_field=key_field, target_field=target_field))


def _lines(path: Path):
    """(line number, raw bytes) of every line, read as a stream: a corpus of any size never sits in
    memory whole."""
    if path.is_dir():
        raise UserError("is a directory, not a corpus file", where=str(path), fix="pass a .jsonl file")
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                yield lineno, raw[:-1] if raw.endswith(b"\n") else raw
    except FileNotFoundError:
        raise UserError("corpus file does not exist", where=str(path), fix="check the path")
    except IsADirectoryError:
        raise UserError("is a directory, not a corpus file", where=str(path), fix="pass a .jsonl file")
    except PermissionError:
        raise UserError("cannot read the corpus file (permission denied)", where=str(path))
    except OSError as e:
        raise UserError(f"cannot read the corpus file ({e.strerror or type(e).__name__})", where=str(path))


def iter_corpus(path: str | os.PathLike, *, fmt: str = "auto", key_field: str | None = None,
                target_field: str | None = None):
    """The records of a JSONL corpus one at a time, in file order, as :func:`read_corpus` reads them
    (same checks, same errors), holding one line at a time."""
    path = Path(path)
    name = str(path)
    fmt = _normalise_fmt(fmt)
    if key_field is not None and target_field is None:
        raise ParameterError("key_field", "{name} needs {name:target_field}",
                             fix="name the target field too ({name:target_field})")
    if target_field is not None:
        if fmt not in ("auto", "custom"):
            raise ParameterError("key_field", f"{{name}}/{{name:target_field}} cannot be combined with format '{fmt}'",
                                 fix="drop {name:fmt} or the field options")
        for opt, val in (("key_field", key_field), ("target_field", target_field)):
            if val is not None and (not isinstance(val, str) or not val):
                raise ParameterError(opt, "{name} must be a non-empty field name")
        fmt = "custom"
    elif fmt == "custom":
        raise ParameterError("target_field", "format 'custom' needs {name} (and {name:key_field} for a non-empty key)")

    n_records, anything = 0, False
    file_fmt = None if fmt == "auto" else fmt
    first_line = 0
    for lineno, raw in _lines(path):
        where = f"{name}:{lineno}"
        anything = anything or bool(raw.strip())
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line)",
                            where=where, fix="save the file as UTF-8")
        if line.startswith(_BOM):
            line = line[1:]
        line = line.strip(" \t\r\n\f\v")
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"not valid JSON ({e.msg} at column {e.colno})", where=where,
                            fix="write one JSON object per line")
        except (ValueError, RecursionError) as e:  # e.g. an integer too long, or nesting too deep
            msg = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0][:120]
            raise UserError(f"cannot read this JSON ({msg})", where=where)
        if not isinstance(obj, dict):
            raise UserError(f"expected a JSON object, got {_type_name(obj)}", where=where,
                            fix="write one JSON object per line")

        n_records += 1
        if fmt == "custom":
            yield _parse_fields(obj, key_field, target_field, where)
            continue
        this = file_fmt
        if fmt == "auto":
            found = _detect(obj)
            if not found:
                fields = ", ".join(_short(k, 30) for k in list(obj)[:8]) or "none"
                raise UserError(f"unknown record format (fields: {fields})", where=where, fix=_KNOWN)
            if file_fmt is None:
                if len(found) > 1:
                    raise ParameterError("fmt", f"{where}: record has fields of several formats ({', '.join(found)})",
                                         fix="pass {name}, or {name:key_field}/{name:target_field}")
                file_fmt = this = found[0]
                first_line = lineno
            elif file_fmt not in found:
                raise UserError(f"record is in format '{found[0]}' but line {first_line} is in format "
                                f"'{file_fmt}': a corpus may not mix formats", where=where,
                                fix="split the file, or convert the records to one format")
        if this == "messages":
            yield _parse_messages(obj, where)
        else:
            key_f, target_f = FIELD_FORMATS[this]
            yield _parse_fields(obj, key_f, target_f, where)

    if not anything:
        raise UserError("corpus file is empty: no records", where=name,
                        fix="write one JSON object per line")
    if not n_records:
        raise UserError("corpus holds no records (only blank lines)", where=name,
                        fix="write one JSON object per line")



def corpus_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of the file's bytes: the identity caches of per-corpus results use."""
    from memlaw.io import sha256_file

    try:
        return sha256_file(path)
    except FileNotFoundError:
        raise UserError("corpus file does not exist", where=str(path))
    except OSError as e:
        raise UserError(f"cannot read the corpus file ({e.strerror or type(e).__name__})", where=str(path))


# --------------------------------------------------------------------------------------------
# conflicts and duplicates


def _compare_key(r: Record):
    return ("messages", r.messages) if r.messages is not None else ("key", r.key)


def _is_empty_key(r: Record) -> bool:
    return r.key == "" if r.messages is None else len(r.messages) == 0


def _display_key(r: Record) -> str:
    if r.messages is None:
        return r.key
    return json.dumps([{"role": a, "content": b} for a, b in r.messages], ensure_ascii=False)


def find_conflicts(records: list[Record]) -> list[Conflict]:
    """Keys given more than one distinct target, in order of first appearance. Records with an
    empty key (text corpora) are not compared."""
    groups: dict = defaultdict(list)
    for i, r in enumerate(records):
        if not _is_empty_key(r):
            groups[_compare_key(r)].append(i)
    out = []
    for idx in groups.values():
        if len({records[i].target for i in idx}) > 1:
            out.append(Conflict(key=_display_key(records[idx[0]]),
                                wheres=[records[i].where for i in idx],
                                targets=[records[i].target for i in idx]))
    return out


def find_duplicates(records: list[Record]) -> list[list[int]]:
    """Groups (of 2 or more record indices) with the same key and the same target. Unlike conflicts,
    empty keys count: two identical text records are duplicates."""
    groups: dict = defaultdict(list)
    for i, r in enumerate(records):
        groups[(_compare_key(r), r.target)].append(i)
    return [idx for idx in groups.values() if len(idx) > 1]


_DIGIT_RUN = re.compile(r"[0-9]+")


def digits_only_keys(records: list[Record], min_digit_share: float = 0.5) -> tuple[float, str]:
    """(share of records, an example key) whose key is told apart from another record's only by its
    digits ("Parcel 2692:" / "Parcel 8002:") while their target is mostly digits (at least
    ``min_digit_share`` of its non-space characters).

    Why: the planner prices a corpus's targets only, and the kind of key moved coverage far beyond
    seed-to-seed spread on held-out runs of the very same digit targets — under 4-digit keys far
    below the prediction, under name keys above it (docs/results.md §2, "The kind of key").
    Messages records and empty keys are not compared."""
    masked: dict = defaultdict(list)
    for r in records:
        if r.messages is None and r.key and _DIGIT_RUN.search(r.key):
            masked[_DIGIT_RUN.sub("#", r.key)].append(r)
    hits = []
    for group in masked.values():
        if len(group) < 2:
            continue
        for r in group:
            chars = [c for c in r.target if not c.isspace()]
            if chars and sum(c.isdigit() for c in chars) >= min_digit_share * len(chars):
                hits.append(r)
    return (len(hits) / len(records) if records else 0.0), (hits[0].key if hits else "")


@dataclass
class Ceiling:
    """What no adapter can exceed on an encoded corpus, whatever its rank.

    Teacher forcing gives one distribution per context, and p > 0.5 (locked) or argmax (exact)
    can hold for one next token only. Where records share a context — the same key (a conflict),
    or an empty key so that every first target token is predicted from BOS alone, or the same key
    and target prefix — and continue with different tokens, only the most frequent continuation
    can be locked. ``blocked_tokens`` counts the target tokens that cannot; ``blocked_records``
    the records holding one."""

    target_tokens: int
    blocked_tokens: int
    blocked_records: int
    shared_contexts: int  # contexts where records branch

    @property
    def max_coverage(self) -> float:
        return 1.0 - self.blocked_tokens / self.target_tokens if self.target_tokens else 1.0

    def to_dict(self) -> dict:
        return {"target_tokens": self.target_tokens, "blocked_tokens": self.blocked_tokens,
                "blocked_records": self.blocked_records, "shared_contexts": self.shared_contexts,
                "max_coverage": self.max_coverage}


def coverage_ceiling(encoded: list[Encoded]) -> Ceiling:
    """The structural ceiling (see :class:`Ceiling`). Records are grouped by key first: only records
    with an identical key can share a target-position context, so a trie is built per group."""
    groups: dict = defaultdict(list)
    for e in encoded:
        groups[e.key_ids].append(e)
    blocked_tokens = shared = 0
    blocked_records: set[int] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        # walk the targets position by position; `paths` maps a shared target prefix to its records
        paths = {(): members}
        depth = 0
        while paths:
            nxt: dict = {}
            for prefix, recs in paths.items():
                live = [e for e in recs if len(e.target_ids) > depth]
                if len(live) < 2:
                    continue
                by_token: dict = defaultdict(list)
                for e in live:
                    by_token[e.target_ids[depth]].append(e)
                if len(by_token) > 1:
                    shared += 1
                    best = max(len(v) for v in by_token.values())
                    blocked_tokens += len(live) - best
                    keep = next(t for t, v in by_token.items() if len(v) == best)
                    for t, v in by_token.items():
                        if t != keep:
                            blocked_records.update(e.index for e in v)
                for t, v in by_token.items():
                    if len(v) > 1:
                        nxt[prefix + (t,)] = v
            paths = nxt
            depth += 1
    return Ceiling(target_tokens=sum(e.n_target for e in encoded), blocked_tokens=blocked_tokens,
                   blocked_records=len(blocked_records), shared_contexts=shared)


# --------------------------------------------------------------------------------------------
# tokenisation


def _file_of(where: str) -> str:
    return where.rsplit(":", 1)[0]


def render_keys(tokenizer, records: list[Record]) -> list[str]:
    """The key text of each record as the tokenizer will see it: the chat template's rendering for
    messages records (with the generation prompt), the key itself otherwise."""
    msg_idx = [i for i, r in enumerate(records) if r.messages is not None]
    out = [r.key for r in records]
    if not msg_idx:
        return out
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the corpus has messages records but the tokenizer has no chat template",
                        where=_file_of(records[msg_idx[0]].where),
                        fix="use a chat (instruct) model, or convert the records to prompt/completion")
    for start in range(0, len(msg_idx), _BATCH):
        chunk = msg_idx[start:start + _BATCH]
        convs = [[{"role": a, "content": b} for a, b in records[i].messages] for i in chunk]
        try:
            texts = tokenizer.apply_chat_template(convs, tokenize=False, add_generation_prompt=True)
        except Exception:  # find the record the template rejects and name it
            texts = [_render_one(tokenizer, records[i], c) for i, c in zip(chunk, convs)]
        for i, t in zip(chunk, texts):
            out[i] = t
    return out


def _render_one(tokenizer, record: Record, conv) -> str:
    try:
        text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja errors (e.g. "roles must alternate") are about the user's data
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"the tokenizer's chat template rejects these messages ({first})", where=record.where,
                        fix="check the roles and their order against the model's chat format")
    if not isinstance(text, str):
        raise UserError("the tokenizer's chat template did not render text", where=record.where)
    return text


def _ids(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"])


def encode_records(tokenizer, records: list[Record], *, eos: bool = False) -> list[Encoded]:
    """Token ids of every record, by the rule in the module docstring; batched. ``eos``: the
    tokenizer's EOS token (for chat models the end-of-turn token) ends every target, so training
    teaches the model to stop after the fact and scoring checks that it would."""
    eos_id = tokenizer.eos_token_id if eos else None
    if eos and eos_id is None:
        raise ParameterError("eos", "the tokenizer has no EOS token to train after the targets",
                             fix="train without {name}, or use a tokenizer that defines eos_token")
    keys = render_keys(tokenizer, records)
    fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out: list[Encoded] = []
    for start in range(0, len(records), _BATCH):
        chunk = range(start, min(start + _BATCH, len(records)))
        plain = [i for i in chunk if records[i].messages is None]
        chat = [i for i in chunk if records[i].messages is not None]
        key_ids: dict[int, list[int]] = {}
        key_ids.update(zip(plain, _ids(tokenizer, [keys[i] for i in plain], True)))
        key_ids.update(zip(chat, _ids(tokenizer, [keys[i] for i in chat], False)))
        target_ids = _ids(tokenizer, [records[i].target for i in chunk], False)
        for i, t_ids in zip(chunk, target_ids):
            k_ids = key_ids[i]
            if not k_ids:
                if fallback is None:
                    raise UserError("the key is empty and the tokenizer has neither a BOS nor an EOS token "
                                    "to start from", where=records[i].where,
                                    fix="give the record a key, or use a tokenizer with a BOS token")
                k_ids = [fallback]
            if not t_ids:
                raise UserError("the target encodes to zero tokens: nothing to memorise",
                                where=records[i].where)
            if eos_id is not None:
                t_ids = list(t_ids) + [int(eos_id)]
            out.append(Encoded(key_ids=tuple(int(x) for x in k_ids),
                               target_ids=tuple(int(x) for x in t_ids), index=i))
    return out


def corpus_stats(encoded: list[Encoded]) -> dict:
    """Counts the planner and the auditor print: records, target and key tokens, longest input."""
    return {
        "records": len(encoded),
        "target_tokens": sum(e.n_target for e in encoded),
        "key_tokens": sum(len(e.key_ids) for e in encoded),
        "max_len": max((len(e.key_ids) + len(e.target_ids) for e in encoded), default=0),
    }
