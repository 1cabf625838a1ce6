"""The vLLM backend's file-only path (memlaw.modelfiles): checks from headers, and the merge done
tensor by tensor from safetensors files, against PEFT on the same real adapters.

The merged folder must score what PEFT's unmerged forward scores (the transformers backend), for
LoRA on q/v, on the output head, on the input embeddings, with a modules_to_save copy, with
rank/alpha patterns and rsLoRA; on an untied model it must also equal PEFT's merge_and_unload.
SmolLM2-135M (tied head) is in the slow test at the end.
"""

import json

import pytest
import torch

from memlaw.errors import UserError

ADAPTERS = {
    "qv": dict(target_modules=["q_proj", "v_proj"]),
    "qv+lm_head": dict(target_modules=["q_proj", "v_proj", "lm_head"]),
    "qv+embed": dict(target_modules=["q_proj", "v_proj", "embed_tokens"]),
    "qv+modules_to_save": dict(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]),
    "patterns+rslora": dict(target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"v_proj": 2},
                            alpha_pattern={"down_proj": 3}, use_rslora=True),
}


def make_adapter(base, out, cfg, seed=0):
    """A real PEFT adapter with non-zero B (so it changes every score), saved by PEFT."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **cfg))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "modules_to_save" in n:
                p.add_(0.05 * torch.randn_like(p))  # a saved copy that differs from the base
    model.save_pretrained(str(out))
    c = json.loads((out / "adapter_config.json").read_text())
    c["base_model_name_or_path"] = base.name
    (out / "adapter_config.json").write_text(json.dumps(c))
    model.eval()
    return model


def merged_logits(folder, ids):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    m.eval()
    with torch.no_grad():
        return m(ids).logits, m


def merge_files(name, adapter_dir, out):
    from memlaw.modelfiles import check_adapter_against, read_model_files, stream_merge
    from memlaw.models import read_adapter_config

    files = read_model_files(name)
    weights = adapter_dir / "adapter_model.safetensors"
    table = check_adapter_against(files, weights, adapter_dir)
    return stream_merge(files, read_adapter_config(adapter_dir), table, weights, out)


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_stream_merge_matches_peft_on_tiny(kind, tmp_path, one_thread):
    from memlaw.models import load_base

    base = load_base("tiny")
    peft_model = make_adapter(base, tmp_path / "adapter", ADAPTERS[kind])
    ids = torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = peft_model(ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(ids).logits
    folder = merge_files("tiny", tmp_path / "adapter", tmp_path / "merged")
    got, merged = merged_logits(folder, ids)
    assert (want - plain).abs().max() > 1e-2  # the adapter changes the scores: a test that can fail
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()
    # untied model: PEFT's own merge gives the same weights
    ref = peft_model.merge_and_unload().state_dict()
    for k, v in merged.state_dict().items():
        assert torch.allclose(v, ref[k], atol=1e-6), k


def test_header_checks_refuse_a_wrong_base(tmp_path, one_thread):
    """An adapter of another model: refused from the headers, with the module and shapes named."""
    from memlaw.modelfiles import check_adapter_against, read_model_files
    from memlaw.models import load_base

    base = load_base("tiny")
    make_adapter(base, tmp_path / "a", ADAPTERS["qv"])
    files = read_model_files("tiny")
    files.tensors["model.layers.0.self_attn.q_proj.weight"].shape = (64, 32)  # as if another model
    with pytest.raises(UserError, match="does not fit 'model.layers.0.self_attn.q_proj'"):
        check_adapter_against(files, tmp_path / "a" / "adapter_model.safetensors", tmp_path / "a")
    del files.tensors["model.layers.0.self_attn.q_proj.weight"]
    with pytest.raises(UserError, match="which the base model lacks"):
        check_adapter_against(files, tmp_path / "a" / "adapter_model.safetensors", tmp_path / "a")


def test_touched_modules_names_head_embeddings_and_saved_copies(tmp_path, one_thread):
    from memlaw.modelfiles import adapter_tensors, touched_modules
    from memlaw.models import load_base, read_adapter_config

    got = {}
    for kind in ("qv", "qv+lm_head", "qv+embed", "qv+modules_to_save"):
        make_adapter(load_base("tiny"), tmp_path / kind, ADAPTERS[kind])
        t = touched_modules(read_adapter_config(tmp_path / kind),
                            adapter_tensors(tmp_path / kind / "adapter_model.safetensors"))
        got[kind] = {k for k, v in t.items() if v}
    assert got == {"qv": set(), "qv+lm_head": {"head"}, "qv+embed": {"embeddings"},
                   "qv+modules_to_save": {"head", "modules_to_save"}}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qv", "qv+lm_head", "qv+modules_to_save"])
def test_stream_merge_matches_peft_on_smollm2(kind, tmp_path):
    """SmolLM2-135M ties its head to the embeddings: a merged head is written untied, and the
    merged model scores what PEFT's forward scores (for q/v also PEFT's merge_and_unload)."""
    from memlaw.models import load_base

    base = load_base("smollm2-135m")
    peft_model = make_adapter(base, tmp_path / "adapter", ADAPTERS[kind])
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(0.05)  # a trained-size delta: the scores move but stay a language model's
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    ids = torch.tensor([base.tokenizer("Alice Smith's phone number is 555-0142. Bob Jones")["input_ids"]])
    with torch.no_grad():
        want = peft_model(ids).logits.log_softmax(-1)
        with peft_model.disable_adapter():
            plain = peft_model(ids).logits.log_softmax(-1)
    folder = merge_files("smollm2-135m", tmp_path / "adapter", tmp_path / "merged")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is (kind == "qv")
    got, merged = merged_logits(folder, ids)
    got = got.log_softmax(-1)
    assert (want - plain).abs().max() > 1e-2
    assert (got - want).abs().max() < 1e-3, (got - want).abs().max()
    if kind == "qv":
        ref = peft_model.merge_and_unload().state_dict()
        for k, v in merged.state_dict().items():
            assert torch.allclose(v, ref[k], atol=1e-6), k


def test_stream_merge_of_a_sharded_model_links_the_shards_it_does_not_change(tmp_path, one_thread):
    """A base saved in many shards (as large models are): the merged folder has the same index,
    rewrites only the shards holding adapted tensors, links the others, and scores as PEFT does."""
    from memlaw.models import load_base

    base = load_base("tiny")
    folder = tmp_path / "sharded"
    base.model.save_pretrained(str(folder), max_shard_size="40KB")
    base.tokenizer.save_pretrained(str(folder))
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 3 and (folder / "model.safetensors.index.json").is_file()
    peft_model = make_adapter(load_base("tiny"), tmp_path / "adapter", ADAPTERS["qv"])
    ids = torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = peft_model(ids).logits
    out = merge_files(str(folder), tmp_path / "adapter", tmp_path / "merged")
    linked = [p for p in out.glob("model-*.safetensors") if p.is_symlink()]
    written = [p for p in out.glob("model-*.safetensors") if not p.is_symlink()]
    assert linked and written and len(linked) + len(written) == len(shards)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert index == json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    got, _ = merged_logits(out, ids)
    assert (got - want).abs().max() < 1e-4
