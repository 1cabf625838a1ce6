"""`memaudit`: does this LoRA adapter really hold its corpus? Score it, report, gate CI, repair.

    memaudit runs/pb-r8
    memaudit path/to/adapter --corpus data.jsonl --base-model ORG/MODEL \\
        --min-coverage 0.99 --min-exact 1.0 --json audit.json --markdown audit.md --html audit.html --junit audit.xml
    memaudit runs/pb-r2 --repair-out runs/pb-r2-fixed --method ot

Exit codes: 0 every given threshold holds, 1 a threshold fails, 2 bad input or usage,
130 interrupted (SIGINT, Ctrl-C), 143 terminated (SIGTERM): an interrupted audit is never read as a
failed gate.
"""

from __future__ import annotations

import os
from pathlib import Path

# torch's OpenMP threads spin while they wait for each other: on a machine whose cores other
# processes also use (a shared CI runner), a spinning thread holds the core its peer needs, and
# scoring took 1.4-1.6x longer (docs/performance.md). Sleeping waits cost next to nothing on an
# idle machine. Set before torch is imported (libgomp reads it once); an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click
from click.core import ParameterSource

from memlaw import __version__
from memlaw.backends import CHOICES as BACKEND_CHOICES
from memlaw.backends import takes_vllm_options
from memlaw.cli.common import console_script, corpus_options, corpus_spec, handle_errors, quiet_libraries
from memlaw.errors import UserError
from memlaw.auditor.repair import repair_defaults  # noqa: F401 (moved there; imported by name elsewhere)
from memlaw.memft import METHODS, Recipe

REPAIR_ONLY = ("method", "repair_steps", "lr", "batch_size")


def _check_outputs(adapter_dir: Path, corpus: str | None, reports: dict) -> None:
    """Report paths must differ from each other and from what the audit reads."""
    seen: dict[Path, str] = {}
    protected = {}
    if adapter_dir.is_dir():
        protected.update({p.resolve(): f"a file of the adapter {adapter_dir}" for p in adapter_dir.iterdir()})
    if corpus:
        protected[Path(corpus).resolve()] = "the corpus"
    for opt, p in reports.items():
        if p is None:
            continue
        rp = Path(p).resolve()
        if rp in protected:
            raise UserError(f"{opt} {p} is {protected[rp]}", fix="write the report somewhere else")
        if rp in seen:
            raise UserError(f"{opt} and {seen[rp]} both write {p}", fix="give each report its own file")
        if rp.is_dir():
            raise UserError(f"{opt} {p} is a directory", fix="pass a file path")
        seen[rp] = opt


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memaudit")
@click.argument("adapter_dir", type=click.Path(path_type=Path))
@click.option("--corpus", type=click.Path(dir_okay=False), default=None,
              help="JSONL corpus to audit against (default: the one recorded in the adapter's memlaw.json)")
@corpus_options
@click.option("--base-model", default=None,
              help="base model (default: base_model_name_or_path from adapter_config.json)")
@click.option("--force-base", is_flag=True,
              help="audit even when the base model or tokenizer differs from the one the adapter records")
@click.option("--allow-pickle", is_flag=True, help="allow a pickle adapter file (.bin/.pt), which can run code")
@click.option("--trust-remote-code", is_flag=True, help="let the base model run its own code from the hub")
@click.option("--min-coverage", type=float, default=None, help="gate: locked tokens / all tokens, in [0, 1]")
@click.option("--min-exact", type=float, default=None, help="gate: fraction of exact records, in [0, 1]")
@click.option("--min-locked", type=float, default=None, help="gate: fraction of locked records, in [0, 1]")
@click.option("--max-mean-loss", type=float, default=None, help="gate: mean target-token loss (nats)")
@click.option("--fail-on-no-effect", is_flag=True,
              help="gate: fail when the adapter has no measurable effect (every target token within 1e-3 nats "
                   "of the base model's log p; otherwise a warning)")
@click.option("--effect-check/--no-effect-check", default=True, show_default=True,
              help="compare the adapter with its base model (scores from the base-loss cache of `memplan "
                   "estimate` on this corpus, else one more scoring pass)")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="write the full per-token audit as JSON")
@click.option("--json-tokens/--no-json-tokens", default=True, show_default=True,
              help="per-token detail in the JSON report (off: records, spans and anchors only, ~10x smaller)")
@click.option("--markdown", type=click.Path(path_type=Path), default=None, help="write a Markdown report (PR comment)")
@click.option("--html", "html_out", type=click.Path(path_type=Path), default=None,
              help="write a self-contained HTML heat map")
@click.option("--junit", type=click.Path(path_type=Path), default=None,
              help="write JUnit XML: a testcase per gate threshold and per record, failing exactly when the gate does")
@click.option("--worst", type=click.IntRange(min=0), default=5, show_default=True,
              help="records shown in the terminal (and 2× in Markdown)")
@click.option("--repair-out", type=click.Path(path_type=Path), default=None,
              help="repair with MemFT into this NEW folder, then audit the result")
@click.option("--method", type=click.Choice(METHODS), default="sft", show_default=True,
              help="repair objective (sft: repaired most with no extra locality cost over 3 seeds, docs/results.md §6)")
@click.option("--repair-steps", type=click.IntRange(min=1), default=300, show_default=True,
              help="repair budget in training steps")
@click.option("--lr", type=float, default=Recipe.lr, show_default=True,
              help="repair learning rate (default: the adapter's own, from its memlaw.json, or its base model's "
                   "law card)")
@click.option("--batch-size", type=click.IntRange(min=1), default=Recipe.batch_size, show_default=True,
              help="repair batch size (default: as --lr)")
@click.option("--backend", type=click.Choice(list(BACKEND_CHOICES)), default="auto", show_default=True,
              help="scoring engine. auto: vllm where it is installed and a GPU is visible, else transformers "
                   "(says why). vllm agrees with transformers (tests/test_vllm.py)")
@click.option("--vllm-mode", type=click.Choice(["auto", "lora", "merged"]), default="auto", show_default=True,
              help="vllm: lora = the adapter as a LoRARequest (one sequence at a time: vLLM's batched LoRA "
                   "prompt_logprobs crashes); merged = merged into the weights from the safetensors files "
                   "(batched, faster); auto = lora, except merged on a GPU for adapters that touch lm_head, the "
                   "embeddings or carry modules_to_save (vLLM #51594 drops those deltas there)")
@click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="vllm: GPUs to split the model over (a model larger than one GPU)")
@click.option("--precision", default="float32", show_default=True,
              help="transformers scoring: float32; bf16 (a bfloat16 pass, ~2x faster on a CPU with AVX512-BF16, then "
                   "float32 again for every record with a token near a verdict boundary: the same verdicts, other "
                   "numbers within ~0.3 nats; needs --no-effect-check); auto (bf16 where the device has bfloat16 "
                   "matmul instructions and --no-effect-check is given, else float32)")
@click.option("--quiet", is_flag=True, help="no progress bars; print only the summary and the gate")
@click.pass_context
@handle_errors
def main(ctx, adapter_dir, corpus, fmt, key_field, target_field, base_model, force_base, allow_pickle,
         trust_remote_code, min_coverage, min_exact, min_locked, max_mean_loss, fail_on_no_effect, effect_check,
         json_out, json_tokens, markdown, html_out, junit, worst, repair_out, method, repair_steps, lr, batch_size,
         backend, vllm_mode, tensor_parallel_size, precision, quiet):
    """Audit the PEFT LoRA adapter in ADAPTER_DIR (a folder, or a Hugging Face Hub id such as
    user/adapter) token by token against its corpus: coverage
    (tokens with p > 0.5), exact and locked records, failing spans. Exit 0 when every given
    threshold holds, 1 when one fails, 2 on bad input, 130 on Ctrl-C, 143 on SIGTERM. With
    --repair-out, continue training it with MemFT into a new folder and audit that (the exit code
    is the repaired adapter's gate)."""
    import warnings

    from rich.console import Console

    if quiet:
        quiet_libraries()

    # PEFT calls a transformers property that warns about its own deprecation: noise for our users.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    from memlaw import api
    from memlaw.auditor.reports import write_reports
    from memlaw.cli.render import print_comparison, print_gate, print_terminal
    from memlaw.models import resolve_adapter

    gate = api.Gate(min_coverage=min_coverage, min_exact=min_exact, min_locked=min_locked,
                    max_mean_loss=max_mean_loss, fail_on_no_effect=fail_on_no_effect)
    if precision not in ("float32", "bf16", "auto"):
        raise UserError(f"unknown --precision '{precision}'", fix="use float32, bf16 or auto")
    if precision == "bf16" and effect_check:
        raise UserError("--precision bf16 needs --no-effect-check: the no-effect check compares with the base model "
                        "to 1e-3 nats, finer than a bf16 pass resolves", fix="add --no-effect-check, or drop --precision")
    if precision != "float32" and repair_out is not None:
        raise UserError("--precision applies to an audit, not a repair", fix="drop --precision")
    if fail_on_no_effect and not effect_check:
        raise UserError("--fail-on-no-effect needs the effect check", fix="drop --no-effect-check")
    if repair_out is None:
        given = [p for p in REPAIR_ONLY if ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} applies to a repair only", fix="add --repair-out DIR")
    elif lr <= 0:
        raise UserError(f"--lr must be > 0, got {lr}")
    if corpus is None and (key_field or target_field or fmt != "auto"):
        raise UserError("--format/--key-field/--target-field need --corpus",
                        fix="pass --corpus FILE (the corpus recorded in memlaw.json keeps its own options)")
    reports = {"--json": json_out, "--markdown": markdown, "--html": html_out, "--junit": junit}
    adapter_dir, hub_id = resolve_adapter(adapter_dir, allow_pickle=allow_pickle)  # a folder, or fetched by hub id
    _check_outputs(adapter_dir, corpus, reports)
    spec = corpus_spec(corpus, fmt, key_field, target_field) if corpus else None
    console = Console(highlight=False)
    for opt in ("vllm_mode", "tensor_parallel_size"):
        if not takes_vllm_options(backend) and ctx.get_parameter_source(opt) == ParameterSource.COMMANDLINE:
            raise UserError(f"--{opt.replace('_', '-')} applies to --backend vllm only", fix="add --backend vllm")
    common = dict(base_model=base_model, force_base=force_base, progress=not quiet, effect_check=effect_check,
                  runtime=api.Runtime(device="cpu", backend=backend, vllm_mode=vllm_mode,
                                      tensor_parallel_size=tensor_parallel_size, precision=precision,
                                      trust_remote_code=trust_remote_code, allow_pickle=allow_pickle))

    if repair_out is not None:
        given = {p for p in ("lr", "batch_size") if ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE}
        found = repair_defaults(adapter_dir) if given != {"lr", "batch_size"} else None
        if found:
            values, source = found
            lr = lr if "lr" in given else values.get("lr", lr)
            if "batch_size" not in given and "batch_size" in values:
                batch_size = values["batch_size"] or 64  # "all": all records, up to 64 (as memft train)
            if not quiet:
                console.print(f"[memlaw] repair with --lr {lr:g} --batch-size {batch_size}, from {source} "
                              "(pass them to change)", markup=False, style="dim")

        def show_before(before):
            if not quiet:
                print_terminal(console, before, worst=worst)
                console.print(f"repairing ({method}, at most {repair_steps} steps) → {repair_out}",
                              markup=False)

        rep = api.repair(adapter_dir, repair_out, spec, method=method, steps=repair_steps, lr=lr,
                         batch_size=batch_size, gate=gate, on_before=show_before, **common)
        result = rep.after
        print_comparison(console, rep.before, rep.after,
                         title=f"repair {adapter_dir} → {rep.out} ({method}, {rep.steps} steps, {rep.stop_reason})")
        if not quiet:
            print_terminal(console, result, worst=worst, gate=gate)
        else:
            print_gate(console, result, gate)
    else:
        # streamed: the records go to a spool file, whatever the corpus size (issue #18)
        result = api.audit(adapter_dir, spec, keep_records=False, **common)
        result.adapter = hub_id or result.adapter  # a hub adapter by its id, not its cache folder
        if quiet:
            s = result.summary
            click.echo(f"{hub_id or adapter_dir}: coverage {s['coverage']:.4f}, exact {s['exact_records']}/{s['records']}, "
                       f"locked {s['locked_records']}/{s['records']}, mean loss {s['mean_loss']:.4f}")
            for w in result.warnings:
                click.echo(f"warning: {w}", err=True)
            print_gate(console, result, gate)
        else:
            print_terminal(console, result, worst=worst, gate=gate)

    if result.backend_note and not quiet:
        console.print(f"note: {result.backend_note}", markup=False, style="dim")
    try:
        written = write_reports(result, json_path=json_out, markdown=markdown, html_path=html_out, junit=junit,
                                gate=gate, worst=max(worst * 2, 10), json_tokens=json_tokens)
    finally:
        result.close()
    if not quiet:
        for p in written:
            console.print(f"wrote {p}", markup=False)
    if not gate.passed(result.summary):
        raise SystemExit(1)


#: the installed command (pyproject.toml [project.scripts])
run = console_script(main)

if __name__ == "__main__":
    run()
