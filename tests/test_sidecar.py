"""memlaw.json as one type (memlaw.sidecar.Sidecar): the file format stays what it was, unknown keys
survive a read and a write, and a sidecar read and written back is the same file, byte for byte."""

from __future__ import annotations

import json

import pytest

from memlaw.sidecar import FILENAME, Sidecar

#: what memft wrote before the Sidecar type existed, in its order (values shortened)
MEMFT = {
    "memlaw_version": "0.3.0",
    "created": "2026-11-01T10:00:00+00:00",
    "corpus": {"path": "/data/kv.jsonl", "sha256": "ab" * 32, "fmt": "auto", "key_field": None, "target_field": None},
    "base_model": {"name": "tiny", "config_sha256": "c" * 64, "weights_sha256": "d" * 64},
    "rank": 4,
    "template": {"target_modules": ["q_proj", "v_proj"], "layers": None, "alpha": "2*rank", "dropout": 0.0},
    "params_per_rank": 512,
    "recipe": {"method": "sft", "lr": 0.01, "batch_size": 24, "eos": True},
    "init_adapter": None,
    "train": {"steps": 30, "seconds": 1.5, "stop_reason": "all_locked", "history": []},
    "final": {"records": 24, "coverage": 1.0},
}


def file_bytes(d: dict) -> bytes:
    """How memlaw has always written memlaw.json (memlaw.io.atomic_write_json)."""
    return (json.dumps(d, indent=2, allow_nan=False) + "\n").encode()


def test_memft_sidecar_is_written_as_before(tmp_path):
    fresh = Sidecar(**{k: v for k, v in MEMFT.items()})
    assert fresh.to_dict() == MEMFT and list(fresh.to_dict()) == list(MEMFT)
    assert "repaired_from" not in fresh.to_dict()  # unset: not written
    assert fresh.to_dict()["init_adapter"] is None  # memft records "trained from scratch" as null
    fresh.write(tmp_path)
    assert (tmp_path / FILENAME).read_bytes() == file_bytes(MEMFT)


def test_round_trip_keeps_unknown_keys_and_order(tmp_path):
    data = {"note": "from another tool", **MEMFT, "objective": {"kind": "memft-ot", "tau": 0.5}}
    (tmp_path / FILENAME).write_bytes(file_bytes(data))
    side, problem = Sidecar.read(tmp_path)
    assert problem is None
    assert side.extra == {"note": "from another tool", "objective": {"kind": "memft-ot", "tau": 0.5}}
    assert side.rank == 4 and side.eos and side.base_model_name == "tiny"
    assert side.to_dict() == data and list(side.to_dict()) == list(data)
    assert Sidecar.from_dict(side.to_dict()) == side
    out = tmp_path / "again"
    out.mkdir()
    side.write(out)
    assert (out / FILENAME).read_bytes() == (tmp_path / FILENAME).read_bytes()


def test_old_format_reads_and_keeps_its_shape(tmp_path):
    """A sidecar from an earlier memlaw: fewer keys, one this version no longer writes, a null rank."""
    old = {"memlaw_version": "0.1.0", "corpus": {"path": "/data/old.jsonl"}, "base_model": {"name": "tiny"},
           "rank": None, "recipe": {"lr": 0.002, "batch_size": "all"}, "stop_rule": "plateau"}
    (tmp_path / FILENAME).write_bytes(file_bytes(old))
    side, problem = Sidecar.read(tmp_path)
    assert problem is None
    assert side.corpus == {"path": "/data/old.jsonl"} and side.created is None and side.final is None
    assert side.extra == {"stop_rule": "plateau"} and not side.eos
    # written back: the same keys (the null rank too, it was in the file), nothing added
    assert side.to_dict() == old and list(side.to_dict()) == list(old)


def test_update_keeps_the_file_order_and_appends_new_keys():
    """What repair does: the input's sidecar, every field set anew, repaired_from added."""
    data = {**MEMFT, "objective": "x"}
    new = Sidecar.from_dict(data).updated(rank=8, repaired_from={"method": "sft"})
    assert list(new.to_dict()) == [*data, "repaired_from"]
    assert new.to_dict()["rank"] == 8 and new.extra == {"objective": "x"}
    assert Sidecar.from_dict(data).rank == 4  # the original is untouched
    # from nothing (a plain PEFT adapter): the field order, as the dict repair built before
    plain = Sidecar().updated(**{k: v for k, v in MEMFT.items()}, repaired_from={})
    assert list(plain.to_dict()) == [*MEMFT, "repaired_from"]
    # a field set to None is written as null (an adapter_config.json without "r" gives rank None)
    assert Sidecar().updated(rank=None).to_dict() == {"rank": None} and Sidecar().to_dict() == {}
    with pytest.raises(TypeError):
        Sidecar().updated(ranks=3)


@pytest.mark.parametrize("content, why", [
    ("{not json", "unreadable (JSONDecodeError)"),
    ("[1, 2]", "is not a JSON object"),
    (b"\xff\xfe", "unreadable (UnicodeDecodeError)"),
])
def test_unreadable_sidecar_is_a_reason_not_an_error(tmp_path, content, why):
    p = tmp_path / FILENAME
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    side, problem = Sidecar.read(tmp_path)
    assert side is None and why in problem and str(p) in problem


def test_absent_sidecar_and_untrusted_types(tmp_path):
    assert Sidecar.read(tmp_path) == (None, None)
    odd = Sidecar.from_dict({"recipe": "sft", "base_model": ["tiny"]})
    assert odd.recipe_dict == {} and not odd.eos and odd.base_model_name is None
    with pytest.raises(ValueError):
        Sidecar(extra={"rank": 3})
