"""A base model and a LoRA adapter read from their files alone: no model is instantiated.

What ``--backend vllm`` needs before it hands a model to vLLM — the checks the transformers path
does on a loaded model, and the merge of ``merged`` mode — can all be had from ``config.json``, the
safetensors headers (every tensor's name, dtype, shape and byte range) and the tokenizer. Loading
the model in transformers first doubled the memory and the start-up (for a 70B model: 140 GB of
float16 in the front-end process before vLLM loads its own copy).

* :class:`ModelFiles` — a model folder: config, tensor table, tokenizer, identity.
* :func:`adapter_tensors` / :func:`check_adapter_against` — the adapter's tensor table and its fit
  to the base (the same refusals :func:`memlaw.models.attach_adapter` makes).
* :func:`stream_merge` — the adapter merged into the base, one tensor at a time, written as a new
  model folder; shards with no adapted tensor are linked, not copied.

Merge semantics follow PEFT's unmerged forward (what the transformers backend scores):
``W + scaling · B @ A`` per LoRA module (transposed for ``fan_in_fan_out`` and for embeddings),
``scaling = alpha / r`` (``alpha / √r`` with ``use_rslora``; ``r`` and ``alpha`` per module from
``rank_pattern`` / ``alpha_pattern``), a ``modules_to_save`` copy replacing its module. A head tied
to the input embeddings is untied when the adapter changes one of them: in PEFT's forward the
LoRA on ``lm_head`` does not touch the embeddings (PEFT's own ``merge_and_unload`` adds it to the
shared tensor and so changes both).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from memlaw.errors import UserError

# safetensors dtype → bytes per element (the format's full list)
ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
ST_HEADER_MAX = 100_000_000  # the safetensors library's own limit on a header
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")
PREFIX = "base_model.model."
HEAD_NAMES = ("lm_head",)
EMBED_SUFFIXES = ("embed_tokens", "wte", "word_embeddings", "embed_in")


@dataclass
class TensorInfo:
    dtype: str
    shape: tuple
    start: int  # absolute byte offset in the file
    nbytes: int
    file: Path


def read_header(path: Path) -> tuple[dict, int]:
    """The safetensors header (``__metadata__`` removed) and where the data starts, checked so
    that no entry claims bytes the file does not hold. A UserError names the file."""
    path = Path(path)

    def bad(what):
        return UserError(f"{path}: {what}",
                         fix="the file is damaged or not a safetensors file; pass the right folder")

    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if n < 2 or n > min(size - 8, ST_HEADER_MAX):
            raise bad(f"not a safetensors file: its header length field says {n:,} bytes, the file has {size:,}")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise bad(f"not a safetensors file: unreadable header ({e})") from None
    header.pop("__metadata__", None)
    data = size - 8 - n
    for name, info in header.items():
        try:
            dtype, shape, (a, b) = info["dtype"], info["shape"], info["data_offsets"]
            if not all(isinstance(x, int) and x >= 0 for x in (*shape, a, b)) or dtype not in ST_ITEMSIZE:
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise bad(f"tensor {name!r} has a malformed header entry") from None
        nbytes = math.prod(shape) * ST_ITEMSIZE[dtype]
        if nbytes != b - a or b > data:
            raise bad(f"tensor {name} claims shape {shape} ({nbytes:,} bytes) but the file holds "
                      f"{max(0, min(b, data) - a):,} bytes for it")
    return header, 8 + n


def tensor_table(path: Path) -> dict[str, TensorInfo]:
    header, base = read_header(path)
    return {k: TensorInfo(v["dtype"], tuple(v["shape"]), base + v["data_offsets"][0],
                          v["data_offsets"][1] - v["data_offsets"][0], Path(path)) for k, v in header.items()}


@dataclass
class ModelFiles:
    """A model folder read without loading the model: ``config`` (config.json), ``tensors`` (name →
    :class:`TensorInfo`, over every shard), ``shards`` (the weight files), ``identity`` (as
    :func:`memlaw.models.load_base` computes it)."""

    name: str
    folder: Path
    config: dict
    tensors: dict[str, TensorInfo]
    shards: list[Path]
    index: dict | None = None
    identity: dict = field(default_factory=dict)
    _tokenizer: object = None

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def dtypes(self) -> set[str]:
        return {t.dtype for t in self.tensors.values()}

    @property
    def max_positions(self) -> int | None:
        v = self.config.get("max_position_embeddings") or (self.config.get("text_config") or {}).get(
            "max_position_embeddings")
        return v if isinstance(v, int) and v > 0 else None

    def weight_shape(self, module: str) -> tuple | None:
        """The weight shape of ``module`` (a name as in ``named_modules``); a head tied to the
        embeddings has the embedding's shape."""
        t = self.tensors.get(f"{module}.weight")
        if t is None and module in HEAD_NAMES and self.tied_embedding():
            t = self.tensors[self.tied_embedding()]
        return t.shape if t is not None else None

    def tied_embedding(self) -> str | None:
        """The input-embedding tensor that serves as the output head, when there is no head tensor."""
        if any(f"{h}.weight" in self.tensors for h in HEAD_NAMES):
            return None
        for k in self.tensors:
            if k.endswith(".weight") and k[: -len(".weight")].split(".")[-1] in EMBED_SUFFIXES:
                return k
        return None

    def vocab_rows(self) -> int | None:
        emb = self.tied_embedding() or next(
            (k for k in self.tensors if k.endswith(".weight") and k[:-7].split(".")[-1] in EMBED_SUFFIXES), None)
        if emb is not None:
            return self.tensors[emb].shape[0]
        v = self.config.get("vocab_size")
        return v if isinstance(v, int) else None

    def tokenizer(self, trust_remote_code: bool = False):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(str(self.folder), trust_remote_code=trust_remote_code)
            except (OSError, ValueError, KeyError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise UserError(f"cannot load the tokenizer of base model '{self.name}' ({first})",
                                fix="pass a model folder with its tokenizer files") from None
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            self._tokenizer = tok
        return self._tokenizer


def model_folder(name: str) -> Path:
    """The local folder holding ``name``'s config, safetensors and tokenizer: a built-in model's
    cache, a local folder, or a Hugging Face snapshot (config, tokenizer and safetensors only:
    vLLM then loads the same files from the same cache)."""
    from memlaw.models import check_model_name, ensure_smollm2

    check_model_name(name)
    if name == "smollm2-135m":
        return ensure_smollm2()
    if name == "tiny":
        from memlaw.vllm_backend import vllm_model_path

        return Path(vllm_model_path("tiny"))
    if name.endswith(".gguf"):
        raise UserError(f"the vLLM backend cannot score a GGUF file ({name})",
                        fix="pass a model folder or a Hugging Face id, or use --backend transformers")
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", *TOKENIZER_FILES]))
    except Exception as e:  # the hub client raises many types for one cause: say it in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot fetch base model '{name}' ({first})", fix="pass a local model folder") from None


def read_model_files(name: str) -> ModelFiles:
    """:class:`ModelFiles` of a model name, from its files (headers only: no tensor is read)."""
    from memlaw.models import _identity_of_path, load_base
    from memlaw.planner.baseloss import model_identity

    folder = model_folder(name)
    cfg_file = folder / "config.json"
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{cfg_file} is missing or unreadable ({type(e).__name__})",
                        fix="pass a model folder with config.json and safetensors weights") from None
    index_file = folder / "model.safetensors.index.json"
    index = None
    if index_file.is_file():
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
            shard_names = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index_file} is not a safetensors index", fix="pass an intact model folder") from None
        if any("/" in s or "\\" in s or s.startswith(".") for s in shard_names):
            raise UserError(f"{index_file} names a shard outside its folder", fix="pass an intact model folder")
        shards = [folder / s for s in shard_names]
    elif (folder / "model.safetensors").is_file():
        shards = [folder / "model.safetensors"]
    else:
        raise UserError(f"{folder} has no safetensors weights (model.safetensors or its index)",
                        fix="use --backend transformers for other weight formats")
    tensors: dict[str, TensorInfo] = {}
    for s in shards:
        if not s.is_file():
            raise UserError(f"shard {s} named by {index_file} is missing", fix="pass an intact model folder")
        tensors.update(tensor_table(s))
    # tiny is built in code: its identity is the hash of its weights in memory, cheap to recompute
    if name == "tiny":
        identity = dict(load_base("tiny").identity)
    elif name == "smollm2-135m" or Path(name).expanduser().is_dir():
        # memoised by the files' size and mtime: a 70B model's weights are hashed once, not per audit
        identity = model_identity(name) or _identity_of_path(name, str(folder), None)
    else:
        identity = _hub_identity(name, folder)
    return ModelFiles(name, folder, config, tensors, shards, index, identity)


def _hub_identity(name: str, folder: Path) -> dict:
    """What load_base's identity is for a hub id (it hashes the loaded model's config, in float32,
    and no weights): the same hash from the config alone, so a sidecar's identity still matches."""
    import hashlib

    import torch
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(folder))
        cfg.dtype = torch.float32
        digest = hashlib.sha256(cfg.to_json_string(use_diff=False).encode()).hexdigest()
    except (OSError, ValueError, KeyError):
        digest = None
    return {"name": name, "config_sha256": digest, "weights_sha256": None}


# --------------------------------------------------------------------------------------------
# the adapter against the base, from headers


def module_of(key: str) -> tuple[str, str]:
    """(module name as in the base model, what the tensor is) for an adapter tensor name."""
    k = key.removeprefix(PREFIX)
    for tag in (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector"):
        if tag in k:
            return k.split(tag)[0], tag.strip(".")
    if k.endswith(".base_layer.weight"):
        return k[: -len(".base_layer.weight")], "base_layer"
    if ".modules_to_save." in k:
        return k.split(".modules_to_save.")[0], "saved:" + k.rsplit(".", 1)[-1]
    return k.rsplit(".", 1)[0], "saved:" + k.rsplit(".", 1)[-1]


def touched_modules(adapter_config: dict, tensor_names) -> dict[str, set[str]]:
    """What an adapter changes beyond LoRA on linear layers, from its config and tensor names:
    ``head`` (LoRA or a saved copy on the output head), ``embeddings`` (on the input embeddings),
    ``modules_to_save`` (full copies of any module). Each maps to the module names."""
    out = {"head": set(), "embeddings": set(), "modules_to_save": set()}
    for key in tensor_names:
        mod, kind = module_of(key)
        last = mod.split(".")[-1]
        if kind.startswith("saved:") or kind == "base_layer":
            if kind.startswith("saved:"):
                out["modules_to_save"].add(mod)
        if last in HEAD_NAMES:
            out["head"].add(mod)
        elif last in EMBED_SUFFIXES or "embedding" in kind:
            out["embeddings"].add(mod)
    for m in adapter_config.get("modules_to_save") or []:
        if isinstance(m, str):
            out["modules_to_save"].add(m)
    targets = adapter_config.get("target_modules")
    targets = [targets] if isinstance(targets, str) else (targets or [])
    for t in targets:
        if not isinstance(t, str):
            continue
        if any(t == h or t.endswith("." + h) for h in HEAD_NAMES):
            out["head"].add(t)
        elif any(t == e or t.endswith("." + e) for e in EMBED_SUFFIXES):
            out["embeddings"].add(t)
    return out


def adapter_tensors(weights: Path) -> dict[str, TensorInfo]:
    return tensor_table(weights)


def check_adapter_against(files: ModelFiles, weights: Path, adapter_dir: Path) -> dict[str, TensorInfo]:
    """The refusals :func:`memlaw.models.attach_adapter` makes on a loaded model, from headers:
    dtypes the base does not compute in, more bytes than the whole base, a tensor for a module
    the base lacks or of a shape that does not fit it, no LoRA tensor at all."""
    table = adapter_tensors(weights)
    allowed = {"F16", "BF16", "F32"} | (files.dtypes & FLOAT_DTYPES)
    total = 0
    for name, t in table.items():
        if t.dtype not in allowed:
            raise UserError(f"{weights}: tensor {name} has dtype {t.dtype}, which base model '{files.name}' does "
                            f"not compute in (LoRA weights must be one of {', '.join(sorted(allowed))})",
                            fix="convert the adapter's weights to the base model's floating-point dtype")
        total += t.nbytes
    if total > files.nbytes:
        raise UserError(f"{weights}: its tensors claim {total:,} bytes, more than the whole base model "
                        f"'{files.name}' ({files.nbytes:,} bytes): not a LoRA adapter of it; nothing was loaded",
                        fix="pass the adapter's own folder, or the base model it was trained on (--base-model)")
    wrong = "pass the base model the adapter was trained on (--base-model)"
    lora = 0
    for key, t in table.items():
        mod, kind = module_of(key)
        shape = files.weight_shape(mod)
        if shape is None:
            raise UserError(f"{weights}: tensor {key} adapts module '{mod}', which the base model lacks", fix=wrong)
        if len(shape) != 2:
            raise UserError(f"{weights}: tensor {key} adapts '{mod}', whose weight has shape {list(shape)}; "
                            "only 2-D weights are supported here", fix="use --backend transformers")
        rows, cols = shape  # linear: (out, in); embedding: (vocab, dim)
        s = t.shape
        ok = {"lora_A": len(s) == 2 and s[1] == cols, "lora_B": len(s) == 2 and s[0] == rows,
              "lora_embedding_A": len(s) == 2 and s[1] == rows, "lora_embedding_B": len(s) == 2 and s[0] == cols,
              "base_layer": tuple(s) == tuple(shape)}.get(kind)
        if kind.startswith("saved:"):
            ok = kind != "saved:weight" or tuple(s) == tuple(shape)
        if ok is None:
            raise UserError(f"{weights}: tensor {key} ({kind}) is not supported by the streaming merge",
                            fix="use --backend transformers")
        if not ok:
            raise UserError(f"{weights}: tensor {key} has shape {list(s)}, which does not fit '{mod}' "
                            f"({list(shape)})", fix=wrong)
        lora += kind.startswith("lora_")
    if lora == 0:
        raise UserError(f"{weights} holds no LoRA tensors", fix="pass a PEFT LoRA adapter folder")
    return table


# --------------------------------------------------------------------------------------------
# the streaming merge


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name ending in it."""
    for pat, v in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pat})$", module):
            return v
    return default


def _read_tensor(t: TensorInfo):
    import torch

    with open(t.file, "rb") as f:
        f.seek(t.start)
        raw = f.read(t.nbytes)
    if len(raw) != t.nbytes:
        raise UserError(f"{t.file} is truncated", fix="pass an intact model folder")
    torch_dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                   "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                   "BOOL": torch.bool}[t.dtype]
    buf = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    return buf.view(torch_dtype).reshape(t.shape)


class _Merge:
    """What the adapter does to each base tensor: (module → deltas, replacements)."""

    def __init__(self, files: ModelFiles, adapter_config: dict, table: dict[str, TensorInfo], weights: Path):
        if adapter_config.get("use_dora"):
            raise UserError(f"{weights}: a DoRA adapter cannot be merged tensor by tensor here",
                            fix="use --vllm-mode lora or --backend transformers")
        if adapter_config.get("lora_bias"):
            raise UserError(f"{weights}: an adapter with LoRA biases cannot be merged tensor by tensor here",
                            fix="use --vllm-mode lora or --backend transformers")
        self.files, self.cfg, self.table = files, adapter_config, table
        self.fan_in_fan_out = bool(adapter_config.get("fan_in_fan_out"))
        self.rslora = bool(adapter_config.get("use_rslora"))
        self.lora: dict[str, dict[str, TensorInfo]] = {}
        self.replace: dict[str, TensorInfo] = {}  # base tensor name → adapter tensor that replaces it
        for key, t in table.items():
            mod, kind = module_of(key)
            if kind.startswith("lora_"):
                self.lora.setdefault(mod, {})[kind] = t
            elif kind == "base_layer":
                self.replace[f"{mod}.weight"] = t
            elif kind.startswith("saved:"):
                self.replace[f"{mod}.{kind[6:]}"] = t
        for mod, parts in self.lora.items():
            pair = ("lora_A", "lora_B") if "lora_A" in parts or "lora_B" in parts else (
                "lora_embedding_A", "lora_embedding_B")
            if not all(p in parts for p in pair):
                raise UserError(f"{weights}: module {mod} has only half of a LoRA pair",
                                fix="pass an intact adapter")
        # which modules' new weights are written; the head is written as its own tensor when tied
        self.tied = files.tied_embedding()
        self.head_changed = any(m.split(".")[-1] in HEAD_NAMES for m in self.lora) or any(
            k.split(".")[0] in HEAD_NAMES for k in self.replace)
        embed_changed = bool(self.tied) and (self.tied.rsplit(".", 1)[0] in self.lora or self.tied in self.replace)
        self.untie = bool(self.tied and (self.head_changed or embed_changed))

    def scaling(self, mod: str, rank: int) -> float:
        alpha = _pattern_value(self.cfg.get("alpha_pattern"), mod, self.cfg.get("lora_alpha", 8))
        return float(alpha) / (math.sqrt(rank) if self.rslora else rank)

    def delta(self, mod: str):
        """scaling · B @ A in float32, shaped like the module's weight."""
        parts = self.lora[mod]
        if "lora_A" in parts:
            a, b = _read_tensor(parts["lora_A"]).float(), _read_tensor(parts["lora_B"]).float()
            d = (b @ a) * self.scaling(mod, a.shape[0])
            return d.T if self.fan_in_fan_out else d
        a, b = _read_tensor(parts["lora_embedding_A"]).float(), _read_tensor(parts["lora_embedding_B"]).float()
        return (b @ a).T * self.scaling(mod, a.shape[0])

    def new_value(self, name: str, module: str, t: TensorInfo):
        """The merged tensor ``name`` (of ``module``'s weight, or another tensor), or None when unchanged."""
        base_key = f"{module}.weight" if name.endswith(".weight") else name
        src = self.replace.get(base_key)
        changed = src is not None or (name == f"{module}.weight" and module in self.lora)
        if not changed:
            return None
        value = _read_tensor(src) if src is not None else _read_tensor(t)
        if name == f"{module}.weight" and module in self.lora:
            value = (value.float() + self.delta(module)).to(value.dtype)
        return value.to(_read_dtype(t))

    def head_module(self) -> str:
        return next((m for m in [*self.lora, *(k.rsplit(".", 1)[0] for k in self.replace)]
                     if m.split(".")[-1] in HEAD_NAMES), "lm_head")


def _read_dtype(t: TensorInfo):
    import torch

    return {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}[t.dtype]


def _st_dtype(tensor) -> str:
    import torch

    return {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}[tensor.dtype]


def _bf16():
    import torch

    return torch.bfloat16


def _u8():
    import torch

    return torch.uint8


def _write_shard(out: Path, entries: list) -> None:
    """Write a safetensors file from ``entries`` = [(name, dtype, shape, source)], one tensor at a
    time: ``source`` is a TensorInfo (its bytes copied as they are) or a torch tensor."""
    header, offset = {}, 0
    for name, dtype, shape, _ in entries:
        n = math.prod(shape) * ST_ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
    with open(out, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, _, _, src in entries:
            if isinstance(src, TensorInfo):
                with open(src.file, "rb") as g:
                    g.seek(src.start)
                    left = src.nbytes
                    while left:
                        chunk = g.read(min(left, 64 << 20))
                        if not chunk:
                            raise UserError(f"{src.file} is truncated", fix="pass an intact model folder")
                        f.write(chunk)
                        left -= len(chunk)
            else:
                f.write(src.contiguous().numpy().tobytes() if src.dtype != _bf16() else
                        src.contiguous().view(-1).view(_u8()).numpy().tobytes())


def stream_merge(files: ModelFiles, adapter_config: dict, table: dict[str, TensorInfo], weights: Path,
                 out: Path) -> Path:
    """Write ``files`` with the adapter merged into ``out`` (a new or empty folder) and return it.
    Holds one tensor (and its float32 copy) in memory at a time; a shard with no changed tensor is
    a symlink to the original. Config, tokenizer and generation files are copied; a tied head the
    adapter changes is written as its own ``lm_head.weight`` with ``tie_word_embeddings`` false."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merge = _Merge(files, adapter_config, table, weights)
    shard_of = {}
    for name, t in files.tensors.items():
        shard_of.setdefault(t.file, []).append(name)
    head_name = f"{merge.head_module()}.weight"
    weight_map = {}
    for shard in files.shards:
        names = sorted(shard_of.get(shard, []), key=lambda n: files.tensors[n].start)
        entries, changed = [], False
        for name in names:
            t = files.tensors[name]
            module = name.rsplit(".", 1)[0]
            value = merge.new_value(name, module, t) if t.dtype in FLOAT_DTYPES else None
            entries.append((name, t.dtype, t.shape, t if value is None else value))
            changed |= value is not None
            weight_map[name] = shard.name
            if merge.untie and name == merge.tied:
                # the head as its own tensor: the embedding with the head's own changes
                head = merge.new_value(head_name, merge.head_module(), t)
                value_h = head if head is not None else _read_tensor(t)
                entries.append((head_name, t.dtype, t.shape, value_h))
                weight_map[head_name] = shard.name
                changed = True
        target = out / shard.name
        if changed:
            _write_shard(target, entries)
        else:
            os.symlink(shard.resolve(), target)
    config = dict(files.config)
    if merge.untie:
        config["tie_word_embeddings"] = False
        if isinstance(config.get("text_config"), dict):
            config["text_config"] = {**config["text_config"], "tie_word_embeddings": False}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if files.index is not None:
        index = {**files.index, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for fname in (*TOKENIZER_FILES, "generation_config.json"):
        src = files.folder / fname
        if src.is_file():
            shutil.copyfile(src, out / fname)
    return out
