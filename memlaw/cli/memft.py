"""`memft`: train a memorising LoRA adapter with MemFT (or plain SFT).

Exit codes: 0 trained, 2 bad input or usage, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import click
from click.core import ParameterSource

from memlaw import __version__
from memlaw.cli.common import (CONVERGENCE_KEYS, console_script, convergence_options, corpus_options, corpus_spec,
                               handle_errors, quiet_libraries, recipe_options, template_from, template_options)
from memlaw.errors import UserError
from memlaw.api import MAX_DEFAULT_BATCH, RECIPE_KEYS  # their one place; imported by name from here too
from memlaw.memft import METHODS, Recipe
from memlaw.models import DEFAULT_MODEL


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memft")
def main():
    """Train LoRA adapters that hold a corpus verbatim."""


def check_recipe_flags(rank: int, lr: float, batch_size: int, max_steps: int, patience: int) -> None:
    """Every numeric flag checked before anything loads, each error naming the one flag that is wrong."""
    if rank < 1:
        raise UserError(f"--rank must be ≥ 1, got {rank}", fix="e.g. --rank 8; `memplan estimate` suggests one")
    if not lr > 0:  # also catches nan
        raise UserError(f"--lr must be > 0, got {lr:g}", fix="e.g. --lr 1e-2")
    if batch_size < 1:
        raise UserError(f"--batch-size must be ≥ 1, got {batch_size}")
    if max_steps < 0:
        raise UserError(f"--max-steps must be ≥ 0, got {max_steps}")
    if patience < 0:
        raise UserError(f"--patience must be ≥ 0 (0: no plateau stop), got {patience}")


def card_defaults(model: str) -> dict | None:
    """:func:`memlaw.api.card_defaults` as flag values (strings), plus ``card``: its file name."""
    from memlaw.api import card_defaults as typed

    found = typed(model)
    if found is None:
        return None
    t = found["template"]
    return {"target_modules": ",".join(t.target_modules),
            "layers": ",".join(str(i) for i in t.layers) if t.layers is not None else None,
            "alpha": str(t.alpha), **found["recipe"], "card": found["card"]}


def check_layers(model: str, layers: str | None) -> None:
    """--layers against the model's layer count (read from its config, weights not loaded)."""
    from memlaw.models import num_layers

    if not layers:
        return
    wanted = [int(x) for x in layers.split(",") if x.strip()]
    n = num_layers(model)
    if n is None:
        return  # unknown without loading: make_lora_model still refuses a template that matches nothing
    bad = [i for i in wanted if not 0 <= i < n]
    if bad:
        raise UserError(f"--layers {layers}: {model} has {n} layers, numbered 0 to {n - 1}; "
                        f"{', '.join(map(str, bad))} is out of range", fix=f"e.g. --layers {n - 2},{n - 1}")


def _flag(key: str, value) -> str:
    if isinstance(value, bool):  # the one boolean recipe key: --until-converged / --all-cycles
        return "--until-converged" if value else "--all-cycles"
    return f"--{key.replace('_', '-')} {value}"


@main.command("train")
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="tiny, smollm2-135m, an HF id or a path")
@click.option("--rank", type=int, default=8, show_default=True)
@click.option("--method", type=click.Choice(METHODS), default=Recipe.method, show_default=True,
              help="sft, or MemFT's ot / sw / curriculum (default: the card's, for a model that has one)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="new adapter folder")
@click.option("--lr", type=float, default=Recipe.lr, show_default=True,
              help="learning rate (default: the shipped law card's, for a model that has one)")
@click.option("--batch-size", type=int, default=Recipe.batch_size, show_default=True,
              help="records per step (default: the card's, all records up to 64, for a model that has one)")
@click.option("--max-steps", type=int, default=Recipe.max_steps, show_default=True)
@click.option("--patience", type=int, default=Recipe.patience, show_default=True,
              help="stop after this many steps without 1% loss improvement")
@click.option("--seed", type=int, default=0, show_default=True)
@recipe_options
@convergence_options()
@click.option("--lora-dropout", type=float, default=0.0, show_default=True, help="LoRA dropout (the paper: 0.1)")
@corpus_options
@template_options
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:N, or auto (cuda when a GPU is visible)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.pass_context
@handle_errors
def train_cmd(ctx, corpus, model, rank, method, out, lr, batch_size, max_steps, patience, seed, schedule, cycles,
              until_converged, train_dtype, eos, converge_rel_tol, converge_abs_tol, converge_cov_tol, lora_dropout,
              fmt, key_field, target_field, target_modules, layers, alpha, device, quiet):
    """Train a LoRA adapter on CORPUS until every target token is locked (p > 0.5), the loss
    plateaus, or --max-steps. Writes a PEFT adapter folder plus memlaw.json.

    For a model with a shipped law card (smollm2-135m, tiny) the template (--target-modules,
    --layers, --alpha) and the recipe (--method, --lr, --batch-size: all records per step, at most
    64, --max-steps, --patience, --schedule, --cycles, --until-converged, --train-dtype, the
    --converge-*-tol of its convergence test) default to the card's: the calibrated ones, and the
    fast template on a CPU. Other models default to every linear layer of every layer and memlaw's
    Recipe defaults."""
    from memlaw import api
    from memlaw.models import check_model_name

    if quiet:
        quiet_libraries()
    check_recipe_flags(rank, lr, batch_size, max_steps, patience)
    check_model_name(model)
    fields = ("target_modules", "layers", "alpha", "lr", "batch_size", *RECIPE_KEYS)
    given = {p for p in fields if ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE}
    defaults = card_defaults(model) if given != set(fields) else None
    rest = {"method": method, "max_steps": max_steps, "patience": patience, "schedule": schedule or Recipe.schedule,
            "cycles": cycles or Recipe.cycles, "train_dtype": train_dtype or Recipe.train_dtype,
            "until_converged": Recipe.until_converged if until_converged is None else until_converged}
    for key, value in zip(CONVERGENCE_KEYS, (converge_rel_tol, converge_abs_tol, converge_cov_tol)):
        rest[key] = getattr(Recipe, key) if value is None else value
    spec = corpus_spec(corpus, fmt, key_field, target_field)
    if defaults:
        target_modules = target_modules if "target_modules" in given else defaults["target_modules"]
        layers = layers if "layers" in given else defaults["layers"]
        alpha = alpha if "alpha" in given else defaults["alpha"]
        lr = lr if "lr" in given else defaults["lr"]
        if "batch_size" not in given:  # the card trains on all records per step
            batch_size = defaults["batch_size"] or min(MAX_DEFAULT_BATCH, max(1, len(spec.read())))
        for key in RECIPE_KEYS:
            if key not in given and key in defaults:
                rest[key] = defaults[key]
    template = template_from(target_modules, layers, alpha)
    check_layers(model, layers)
    if defaults and not quiet:
        extra = " ".join(_flag(k, rest[k]) for k in RECIPE_KEYS if k in defaults and k not in given)
        click.echo(f"[memlaw] defaults from the law card {defaults['card']}: --target-modules {target_modules} "
                   f"--layers {layers} --alpha {alpha} --lr {lr:g} --batch-size {batch_size} {extra} "
                   "(pass them to change)", err=True)
    recipe = Recipe(lr=lr, batch_size=batch_size, seed=seed, eos=bool(eos), **rest)
    template.dropout = lora_dropout
    side = api.train(spec, out, model=model, rank=rank, template=template, recipe=recipe,
                     runtime=api.Runtime(device=device), progress=not quiet).sidecar
    f, t = side["final"], side["train"]
    click.echo(f"{out}: coverage {f['coverage']:.4f}, exact {f['exact_records']}/{f['records']}, "
               f"locked {f['locked_records']}/{f['records']}, mean loss {f['mean_loss']:.4f} "
               f"after {t['steps']} steps in {t['seconds']:.1f} s ({t['stop_reason']}"
               + ("" if t.get("converged") is None else f", {'converged' if t['converged'] else 'NOT converged'}")
               + ")")


#: the installed command (pyproject.toml [project.scripts])
run = console_script(main)

if __name__ == "__main__":
    run()
