"""`memft`: train a memorising LoRA adapter with MemFT (or plain SFT)."""

from __future__ import annotations

import click

from memlaw.cli.common import (corpus_options, corpus_spec, handle_errors, recipe_extras, recipe_options,
                               template_from, template_options)
from memlaw.memft import METHODS, Recipe, train_adapter
from memlaw.models import DEFAULT_MODEL


@click.group()
def main():
    """Train LoRA adapters that hold a corpus verbatim."""


@main.command("train")
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="tiny, smollm2-135m, an HF id or a path")
@click.option("--rank", type=int, default=8, show_default=True)
@click.option("--method", type=click.Choice(METHODS), default="ot", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="new adapter folder")
@click.option("--lr", type=float, default=Recipe.lr, show_default=True)
@click.option("--batch-size", type=int, default=Recipe.batch_size, show_default=True)
@click.option("--max-steps", type=int, default=Recipe.max_steps, show_default=True)
@click.option("--patience", type=int, default=Recipe.patience, show_default=True,
              help="stop after this many steps without 1% loss improvement")
@click.option("--seed", type=int, default=0, show_default=True)
@recipe_options
@click.option("--lora-dropout", type=float, default=0.0, show_default=True, help="LoRA dropout (the paper: 0.1)")
@corpus_options
@template_options
@click.option("--quiet", is_flag=True, help="no progress bar")
@handle_errors
def train_cmd(corpus, model, rank, method, out, lr, batch_size, max_steps, patience, seed, schedule, cycles,
              train_dtype, eos, lora_dropout, fmt, key_field, target_field, target_modules, layers, alpha, quiet):
    """Train a LoRA adapter on CORPUS until every target token is locked (p > 0.5), the loss
    plateaus, or --max-steps. Writes a PEFT adapter folder plus memlaw.json."""
    recipe = Recipe(method=method, lr=lr, batch_size=batch_size, max_steps=max_steps, patience=patience, seed=seed,
                    **recipe_extras(schedule, cycles, train_dtype, eos, Recipe))
    template = template_from(target_modules, layers, alpha)
    template.dropout = lora_dropout
    side = train_adapter(corpus_spec(corpus, fmt, key_field, target_field), model, rank, out,
                         template=template, recipe=recipe, progress=not quiet)
    f, t = side["final"], side["train"]
    click.echo(f"{out}: coverage {f['coverage']:.4f}, exact {f['exact_records']}/{f['records']}, "
               f"locked {f['locked_records']}/{f['records']}, mean loss {f['mean_loss']:.4f} "
               f"after {t['steps']} steps in {t['seconds']:.1f} s ({t['stop_reason']}"
               + ("" if t.get("converged") is None else f", {'converged' if t['converged'] else 'NOT converged'}")
               + ")")


if __name__ == "__main__":
    main()
