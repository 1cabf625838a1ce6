"""Every bad input we try, in one list: tests/test_bad_inputs.py asserts on it, and
`python tests/bad_inputs.py` prints the table in docs/bad-inputs.md (what the user sees).

A case: (what, command, setup) where setup(tmp) writes the files and returns the CLI arguments.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

GOOD = '{"prompt": "id 1:", "completion": " 123"}\n'


def corpus(content: bytes | str):
    def setup(tmp: Path):
        p = tmp / "c.jsonl"
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["train", str(p), "--model", "tiny", "--max-steps", "1", "--out", str(tmp / "out"), "--quiet"]
    return setup


def adapter(mutate):
    """A real tiny adapter (trained 1 step), then broken by ``mutate(dir)``; audited."""
    def setup(tmp: Path):
        from memlaw.memft import CorpusSpec, Recipe, train_adapter

        c = tmp / "c.jsonl"
        c.write_text(GOOD * 3)
        d = tmp / "adapter"
        train_adapter(CorpusSpec(str(c)), "tiny", 2, d, recipe=Recipe(max_steps=1), progress=False)
        mutate(d)
        return [str(d), "--quiet"]
    return setup


def card(mutate):
    def setup(tmp: Path):
        src = Path(__file__).resolve().parents[1] / "memlaw" / "cards" / "tiny.json"
        d = json.loads(src.read_text())
        text = mutate(d)
        p = tmp / "law.json"
        p.write_text(text if isinstance(text, str) else json.dumps(d))
        return ["law", "show", str(p)]
    return setup


def _pickle_only(d: Path):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(d / "adapter_model.safetensors")), d / "adapter_model.bin")
    (d / "adapter_model.safetensors").unlink()


def _wrong_shape(d: Path):
    import torch
    from safetensors.torch import load_file, save_file

    t = load_file(str(d / "adapter_model.safetensors"))
    k = next(k for k in t if ".lora_A." in k)
    t[k] = torch.zeros(t[k].shape[0], t[k].shape[1] + 3)
    save_file(t, str(d / "adapter_model.safetensors"))


def _other_arch(d: Path):
    from safetensors.torch import load_file, save_file

    t = load_file(str(d / "adapter_model.safetensors"))
    save_file({k.replace("self_attn.q_proj", "attn.c_attn"): v for k, v in t.items()},
              str(d / "adapter_model.safetensors"))


def _poison(value):
    """One LoRA weight set to ``value`` (NaN, Inf): what a diverged training run saves."""
    def m(d: Path):
        from safetensors.torch import load_file, save_file

        t = load_file(str(d / "adapter_model.safetensors"))
        k = next(k for k in t if ".lora_B." in k)
        t[k][0, 0] = value
        save_file(t, str(d / "adapter_model.safetensors"))
    return m


def _int_dtype(d: Path):
    import torch
    from safetensors.torch import load_file, save_file

    t = load_file(str(d / "adapter_model.safetensors"))
    save_file({k: v.to(torch.int64) for k, v in t.items()}, str(d / "adapter_model.safetensors"))


def huge_claim(d: Path, gib: float = 2.0):
    """Rewrite the adapter as a safetensors file whose first lora_A claims ``gib`` GiB (rank
    ~millions, the right input width), stored sparse: the file really is that long, yet takes no
    disk. Loading it would allocate all of it."""
    import struct

    from safetensors import safe_open

    path = d / "adapter_model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    k = next(k for k in tensors if ".lora_A." in k)
    width = tensors[k].shape[1]
    rows = int(gib * 2**30) // (4 * width)
    header, offset = {}, 0
    for name, t in tensors.items():
        shape = [rows, width] if name == k else list(t.shape)
        n = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


def _header_length(d: Path):
    p = d / "adapter_model.safetensors"
    p.write_bytes((2**62).to_bytes(8, "little") + p.read_bytes()[8:])


def _set(key, value):
    def m(d):
        d[key] = value
    return m


def _drop(key):
    def m(d):
        d.pop(key)
    return m


def _nan(d):
    return json.dumps(d).replace(f'"C": {json.dumps(d["coefficients"]["C"])}', '"C": NaN', 1)


def _estimate(*extra):
    def setup(tmp: Path):
        c = tmp / "c.jsonl"
        c.write_text(GOOD)
        law = Path(__file__).resolve().parents[1] / "memlaw" / "cards" / "tiny.json"
        return ["estimate", str(c), "--law", str(law), *extra]
    return setup


def _train_args(*extra):
    def setup(tmp: Path):
        c = tmp / "c.jsonl"
        c.write_text(GOOD)
        return ["train", str(c), "--out", str(tmp / "o"), "--quiet", *extra]
    return setup


# (what, cli, setup, expected exit code, a phrase the message must hold)
CASES = [
    ("corpus: not JSON", "memft", corpus(GOOD + "not json\n"), 2, "c.jsonl:2"),
    ("corpus: a JSON array, not an object", "memft", corpus("[1, 2]\n"), 2, "c.jsonl:1"),
    ("corpus: target of the wrong type", "memft", corpus('{"prompt": "a", "completion": 5}\n'), 2, "c.jsonl:1"),
    ("corpus: missing field", "memft", corpus('{"prompt": "a"}\n'), 2, "c.jsonl:1"),
    ("corpus: empty target", "memft", corpus('{"prompt": "a", "completion": ""}\n'), 2, "c.jsonl:1"),
    ("corpus: invalid UTF-8", "memft", corpus(GOOD.encode() + b'{"text": "\xff\xfe"}\n'), 2, "c.jsonl:2"),
    ("corpus: empty file", "memft", corpus(""), 2, "c.jsonl"),
    ("corpus: unknown format", "memft", corpus('{"question": "a", "answer": "b"}\n'), 2, "--key-field"),
    ("corpus: byte-order mark (accepted)", "memft", corpus(b"\xef\xbb\xbf" + GOOD.encode()), 0, "coverage"),
    ("corpus: CRLF line ends (accepted)", "memft", corpus(GOOD.replace("\n", "\r\n") * 2), 0, "coverage"),
    ("corpus: blank lines (accepted)", "memft", corpus("\n" + GOOD + "\n\n" + GOOD), 0, "coverage"),
    ("corpus: a 1 MB line (longer than the model's context)", "memft",
     corpus(json.dumps({"prompt": "x" * 1_000_000, "completion": " 1"}) + "\n"), 2, "context"),
    ("corpus: 5,000 short lines (accepted)", "memft", corpus(GOOD * 5000), 0, "coverage"),
    ("corpus: file missing", "memft", lambda tmp: ["train", str(tmp / "nope.jsonl"), "--model", "tiny",
                                                   "--out", str(tmp / "o")], 2, "nope.jsonl"),
    ("flag: --device names no device", "memft", lambda tmp: corpus(GOOD)(tmp) + ["--device", "gpu0"], 2,
     "unknown device 'gpu0'"),
    ("flag: --device cuda:7 on a machine without it", "memft", lambda tmp: corpus(GOOD)(tmp) + ["--device", "cuda:7"],
     2, "no such CUDA device"),
    ("adapter: folder missing", "memaudit", lambda tmp: [str(tmp / "nope")], 2, "does not exist"),
    ("adapter: adapter_config.json missing", "memaudit",
     adapter(lambda d: (d / "adapter_config.json").unlink()), 2, "adapter_config.json"),
    ("adapter: weights missing", "memaudit",
     adapter(lambda d: (d / "adapter_model.safetensors").unlink()), 2, "no adapter weights"),
    ("adapter: corrupted safetensors", "memaudit",
     adapter(lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x00" * 64)), 2, "safetensors"),
    ("adapter: pickle weights only", "memaudit", adapter(_pickle_only), 2, "--allow-pickle"),
    ("adapter: rank/shape mismatch with the base", "memaudit", adapter(_wrong_shape), 2, "does not fit"),
    ("adapter: made for another architecture", "memaudit", adapter(_other_arch), 2, "lacks"),
    ("adapter: NaN in a LoRA weight", "memaudit", adapter(_poison(float("nan"))), 2, "NaN"),
    ("adapter: Inf in a LoRA weight", "memaudit", adapter(_poison(float("inf"))), 2, "Inf"),
    ("adapter: integer weights (a dtype the base does not use)", "memaudit", adapter(_int_dtype), 2, "dtype I64"),
    ("adapter: header claims a 2 GiB tensor (sparse file)", "memaudit", adapter(huge_claim), 2,
     "more than the whole base model"),
    ("adapter: header length field of 2^62 bytes", "memaudit", adapter(_header_length), 2, "header length"),
    ("adapter: config names a local path as base", "memaudit",
     adapter(lambda d: (d / "adapter_config.json").write_text(json.dumps(
         {**json.loads((d / "adapter_config.json").read_text()), "base_model_name_or_path": "/etc"}))),
     2, "local path"),
    ("law card: wrong schema version", "memplan", card(_set("schema_version", 99)), 2, "schema"),
    ("law card: missing field", "memplan", card(_drop("coefficients")), 2, "coefficients"),
    ("law card: NaN coefficient", "memplan", card(_nan), 2, "law.json"),
    ("law card: not JSON", "memplan", card(lambda d: "{nope"), 2, "law.json"),
    ("CLI: negative rank", "memft", _train_args("--model", "tiny", "--rank", "-1"), 2, "rank"),
    ("CLI: coverage outside (0, 1]", "memplan", _estimate("--coverage", "1.5"), 2, "coverage"),
    ("CLI: gate threshold outside [0, 1]", "memaudit", lambda tmp: [str(tmp), "--min-coverage", "1.5"], 2, "1.5"),
    ("CLI: unknown scoring precision", "memaudit", lambda tmp: [str(tmp), "--precision", "fp8"], 2, "--precision"),
    ("CLI: bf16 scoring with the no-effect check on", "memaudit", lambda tmp: [str(tmp), "--precision", "bf16"], 2,
     "--no-effect-check"),
    ("CLI: model path that does not exist", "memft", _train_args("--model", "./no-such-model"), 2, "does not exist"),
    ("CLI: unknown method", "memft", _train_args("--model", "tiny", "--method", "magic"), 2, "magic"),
    ("CLI: rank 0 (fails before the model loads)", "memft", _train_args("--rank", "0"), 2, "--rank must be ≥ 1"),
    ("CLI: negative learning rate", "memft", _train_args("--model", "tiny", "--lr", "-1"), 2, "--lr must be > 0"),
    ("CLI: batch size 0", "memft", _train_args("--model", "tiny", "--batch-size", "0"), 2, "--batch-size must be"),
    ("CLI: negative max steps", "memft", _train_args("--model", "tiny", "--max-steps", "-5"), 2, "--max-steps must be"),
    ("CLI: layer index the model lacks", "memft", _train_args("--model", "tiny", "--layers", "99"), 2,
     "--layers 99: tiny has 2 layers"),
    ("CLI: module name the model lacks", "memft", _train_args("--model", "tiny", "--target-modules", "qkv"), 2,
     "--target-modules"),
    ("CLI: typo'd built-in model name", "memft", _train_args("--model", "smollm-135m"), 2,
     "did you mean smollm2-135m"),
    ("CLI: typo'd base model for an audit", "memaudit",
     lambda tmp: [*adapter(lambda d: None)(tmp)[:1], "--base-model", "tinyy", "--force-base"], 2,
     "did you mean tiny"),
]


def run_case(cli: str, args: list[str]):
    from click.testing import CliRunner

    from memlaw.cli.memaudit import main as memaudit
    from memlaw.cli.memft import main as memft
    from memlaw.cli.memplan import main as memplan

    return CliRunner().invoke({"memft": memft, "memaudit": memaudit, "memplan": memplan}[cli], args)


def last_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


if __name__ == "__main__":  # print the docs table
    import tempfile

    print("| bad input | command | exit | what the user sees |\n| --- | --- | --- | --- |")
    for what, cli, setup, _, _ in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            args = setup(Path(tmp))
            r = run_case(cli, args)
            msg = last_line(r.output).replace(tmp, "…").replace("|", "\\|")
            print(f"| {what} | `{cli} {args[0] if cli != 'memaudit' else 'ADAPTER'}…` | {r.exit_code} | {msg[:220]} |")
    sys.exit(0)
