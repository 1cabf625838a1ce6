"""memplan: calibrate the Parametric Memory Law for a base model and plan LoRA ranks with it.

    memplan calibrate --model M --ranks 1,2,4,8 --lengths 64,128,256 --out DIR   run a sweep, fit a card
    memplan merge DIR1 DIR2 … --out DIR         merge sweep shards
    memplan fit POINTS.jsonl --out law.json     fit a law card to sweep points
    memplan law show law.json                   show a law card
    memplan estimate corpus.jsonl [--law CARD]  the rank a corpus needs

The logic lives in memlaw.calibration.sweep and memlaw.planner.estimate; this file only parses.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from memlaw import __version__
# memlaw.card and memlaw.law import scipy (~1 s): loaded in the commands that use them, so that
# --help, --version and a typo'd --model answer at once.
from memlaw.calibration.defaults import (DEFAULT_DELTA, DEFAULT_LAW_FORM, DEFAULT_LENGTHS, DEFAULT_RANKS,
                                         DEFAULT_TARGET_MODULES, DELTA_DEFINITIONS, LAW_FORMS,
                                         default_recipe)
from memlaw.backends import CHOICES as BACKEND_CHOICES
from memlaw.cli.common import console_script, convergence_options, handle_errors, recipe_extras, recipe_options
from memlaw.memft import METHODS
from memlaw.planner.coverage import DEFAULT_PREDICTOR, PREDICTORS
from memlaw.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memplan")
def main():
    """How much LoRA capacity does a corpus need? Calibrate the law, then plan with it."""


# ---------------------------------------------------------------------------------------------
# memplan fit


def _read_sweep_meta(points_path: Path) -> dict | None:
    """The sweep.json a calibration sweep writes next to its points.jsonl, if there is one."""
    meta_path = points_path.parent / "sweep.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the sweep description ({e.__class__.__name__}: {e})",
                        where=str(meta_path), fix="fix or remove sweep.json") from None
    if not isinstance(meta, dict):
        raise UserError("the sweep description is not a JSON object", where=str(meta_path),
                        fix="fix or remove sweep.json")
    return meta


def _coef_table(card) -> Table:
    from memlaw.law import NAMES

    level = f"{card.interval_level:.0%} interval"
    capacity = card.law_form == "capacity"
    form = "capacity  ΔL·ℓ = C·r^α (nats stored at rank r)" if capacity else "Parametric Memory Law  ΔL = C·r^α·ℓ^(−β) + b"
    t = Table(title=f"{form}   ({card.base_model.get('name', '?')})")
    t.add_column("coefficient")
    t.add_column("value", justify="right")
    t.add_column(level, justify="right")
    for k in NAMES[:2] if capacity else NAMES:  # β = 1 and b = 0 are fixed in the capacity form
        iv = card.intervals.get(k)
        t.add_row(k, f"{card.coefficients[k]:.4g}", f"[{iv[0]:.4g}, {iv[1]:.4g}]" if iv else "—")
    t.add_row("R²", f"{card.r2:.4f}", "")
    t.add_row("points", f"{len(card.points)}", f"{card.n_saturated} saturated"
              + (" or near the data's ceiling" if capacity else "")
              + f", {card.n_not_converged} not converged (censored: lower bounds)")
    return t


@main.command("fit")
@click.argument("points_jsonl", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the law card (JSON).")
@click.option("--base-model", default=None, help="Base model name (overrides sweep.json).")
@click.option("--n-boot", default=200, show_default=True, type=click.IntRange(min=0),
              help="Bootstrap resamples for the confidence intervals (0: none).")
@click.option("--seed", default=0, show_default=True, type=int, help="Bootstrap seed.")
@click.option("--delta", type=click.Choice(DELTA_DEFINITIONS), default=DEFAULT_DELTA, show_default=True,
              help="raw: ΔL = L_before − L_after; source: min(L_before, ln N) − L_after for random tokens")
@click.option("--form", "law_form", type=click.Choice(LAW_FORMS), default=DEFAULT_LAW_FORM, show_default=True,
              help="capacity: ΔL·ℓ = C·r^α (the nats a rank stores); pml: the paper's C·r^α·ℓ^(−β) + b")
@click.option("--converge-rel-tol", type=click.FloatRange(min=0), default=None,
              help="convergence test: the last cycle may lower the loss by this share of ΔL "
                   "(default: the sweep recipe's)")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
@handle_errors
def fit_cmd(points_jsonl: Path, out: Path, base_model, n_boot, seed, delta, law_form, converge_rel_tol, force):
    """Fit the law to a sweep's POINTS_JSONL and write a law card.

    If a sweep.json sits next to the points file, the base model, LoRA template, recipe and data
    kind are taken from it.
    """
    if out.exists() and not force:
        raise UserError("the output file exists", where=str(out), fix="pass --force to overwrite it")
    from memlaw.card import build_card, read_points, save_card

    points = read_points(points_jsonl)
    meta = _read_sweep_meta(points_jsonl) or {}

    bm = meta.get("base_model") or {}
    bm = {"name": bm} if isinstance(bm, str) else dict(bm)
    if base_model is not None and base_model != bm.get("name"):
        # the hashes (if any) describe another model: drop them rather than mislabel the card
        bm = {"name": base_model, "config_sha256": None, "weights_sha256": None}
    if not bm.get("name"):
        raise UserError("the base model is unknown", where=str(points_jsonl),
                        fix="pass --base-model NAME (or keep the sweep.json next to the points)")
    bm.setdefault("config_sha256", None)
    bm.setdefault("weights_sha256", None)
    template = {"target_modules": [], "layers": None, "alpha": None, "params_per_rank": None}
    template.update(meta.get("template") or {})

    from memlaw.calibration.sweep import sweep_summary, with_loss_source

    recipe = dict(meta.get("recipe") or {})
    if converge_rel_tol is not None:
        recipe["converge_rel_tol"] = converge_rel_tol
    card = build_card(with_loss_source(points, meta), base_model=bm, template=template, recipe=recipe,
                      data_kind=str(meta.get("data_kind") or "unknown"), n_boot=n_boot, seed=seed,
                      delta_definition=delta, law_form=law_form, sweep=sweep_summary(points, meta))
    save_card(card, out)
    console = Console()
    console.print(_coef_table(card))
    console.print(f"wrote {out}")


# ---------------------------------------------------------------------------------------------
# memplan law show


@main.group("law")
def law_group():
    """Inspect law cards."""


def _kv_table(title: str, d: dict) -> Table:
    t = Table(title=title, show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value", overflow="fold")
    for k, v in d.items():
        t.add_row(str(k), "—" if v is None else (json.dumps(v) if isinstance(v, (list, dict)) else str(v)))
    return t


def _num(x, fmt=".4g") -> str:
    return "—" if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) else format(x, fmt)


@law_group.command("show")
@click.argument("card_path", metavar="CARD", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def law_show(card_path: Path):
    """Show a law card: model, template, recipe, coefficients, domain, coverage, points."""
    from memlaw.card import VALIDATION_META, load_card, named_rank_phrase, validation_phrase

    card = load_card(card_path)
    console = Console()

    console.print(_kv_table(f"law card {card_path}", {
        "data kind": card.data_kind, "schema version": card.schema_version,
        "created": card.created or None, "memlaw version": card.memlaw_version or None}))
    console.print(_kv_table("base model", card.base_model))
    console.print(_kv_table("LoRA template", card.template))
    console.print(_kv_table("recipe", card.recipe or {"—": None}))
    console.print(_coef_table(card))

    dom = Table(title="calibrated domain and coverage")
    dom.add_column("")
    dom.add_column("value", justify="right")
    dom.add_row("rank", f"{_num(card.domain['rank'][0])} – {_num(card.domain['rank'][1])}")
    dom.add_row("length (target tokens)", f"{_num(card.domain['length'][0])} – {_num(card.domain['length'][1])}")
    if card.sweep.get("points_seconds"):
        dom.add_row("sweep time (sum over points)", f"{card.sweep['points_seconds'] / 60:.1f} min")
    for name, v in card.validation.items():
        if name not in VALIDATION_META:
            dom.add_row(f"held-out coverage, `{name}` predictor", validation_phrase(v))
    for t in (card.validation.get("named_rank") or {}).get("targets", {}):
        dom.add_row(f"held-out named rank, `{card.validation['named_rank']['predictor']}` predictor",
                    named_rank_phrase(card.validation, float(t)))
    if card.key_factor.get("digits_only_keys") is not None:
        dom.add_row("key factor (records told apart only by their key's digits)",
                    f"{card.key_factor['digits_only_keys']:.3f} of the law's nats")
    console.print(dom)

    pts = Table(title="sweep points (L_0: L_before; L_B, L_end: L_after at the last two cycles, the convergence "
                      "evidence)")
    for col in ("r", "ℓ", "L_0", "L_B", "L_end", "ΔL", "cov", "steps", "fit", "s"):
        pts.add_column(col, justify="right")
    for p in sorted(card.points, key=lambda p: (p.get("rank") or 0, p.get("length") or 0)):
        lb, la = p.get("loss_before"), p.get("loss_after")
        dl = p.get("delta_loss", lb - la if isinstance(lb, (int, float)) and isinstance(la, (int, float)) else None)
        how = {None: "=", "saturated": "≥ sat", "near_ceiling": "≥ ceil", "not_converged": "≥ unconv"}.get(
            p.get("censored"), str(p.get("censored")))
        pts.add_row(_num(p.get("rank"), "g"), _num(p.get("length"), "g"), _num(lb), _num(p.get("loss_after_B")),
                    _num(la), _num(dl), _num(p.get("coverage"), ".3f"), _num(p.get("steps"), "g"), how,
                    _num(p.get("seconds"), ".1f"))
    console.print(pts)
    console.print("fit: = an observation; ≥ a lower bound on ΔL (sat: every token locked; ceil: holds ≥ 90 % of "
                  "what its records carry; unconv: still improving in the last cycle), which the law may only exceed")


# ---------------------------------------------------------------------------------------------
# memplan calibrate / memplan merge (the logic lives in memlaw.calibration.sweep)


def _sweep_done(result) -> None:
    if result.card_path is not None:
        click.get_current_context().invoke(law_show, card_path=result.card_path)
    for line in result.summary():
        click.echo(line)


_CAL = default_recipe()  # the shipped calibration recipe: one place for its defaults


@main.command("calibrate")
@click.option("--model", default="smollm2-135m", show_default=True, help="tiny, smollm2-135m, an HF id or a path")
@click.option("--ranks", default=",".join(map(str, DEFAULT_RANKS)), show_default=True, help="comma-separated LoRA ranks")
@click.option("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)), show_default=True,
              help="comma-separated target-token counts ℓ")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="sweep folder (points.jsonl, sweep.json, law.json); an unfinished sweep there resumes")
@click.option("--data", default=None, type=click.Path(dir_okay=False),
              help="corpus JSONL to slice (default: random tokens)")
@click.option("--format", "fmt", default="auto", show_default=True, help="--data format: auto, prompt, query, messages, text")
@click.option("--key-field", default=None, help="--data: JSON field holding the key")
@click.option("--target-field", default=None, help="--data: JSON field holding the target")
@click.option("--chunk", default=64, show_default=True, type=int, help="random data: target tokens per record")
@click.option("--data-seed", default=0, show_default=True, type=int, help="random data: seed")
@click.option("--target-modules", default=",".join(DEFAULT_TARGET_MODULES), show_default=True,
              help="comma-separated module names")
@click.option("--layers", default=None, help="comma-separated layer indices, or 'all' (default: the last two)")
@click.option("--alpha", default="2*rank", show_default=True, help="LoRA alpha: a number, or k*rank")
@click.option("--method", type=click.Choice(METHODS), default=_CAL.method, show_default=True)
@click.option("--lr", default=_CAL.lr, show_default=True, type=float)
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="default: all records of a point")
@click.option("--max-steps", default=_CAL.max_steps, show_default=True, type=click.IntRange(min=1),
              help="steps per cycle (the budget B)")
@click.option("--patience", default=_CAL.patience, show_default=True, type=click.IntRange(min=0),
              help="plateau stop (0: off; calibration trains its whole budget)")
@recipe_options
@convergence_options(_CAL)
@click.option("--seed", default=0, show_default=True, type=int, help="adapter init and batch order seed")
@click.option("--shard", default=None, help="i/n: run only grid points whose position ≡ i (mod n)")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, …")
@click.option("--n-boot", default=200, show_default=True, type=click.IntRange(min=0))
@click.option("--plot", is_flag=True, help="also write law.png (needs matplotlib)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@handle_errors
def calibrate_cmd(model, ranks, lengths, out, data, fmt, key_field, target_field, chunk, data_seed, target_modules,
                  layers, alpha, method, lr, batch_size, max_steps, patience, schedule, cycles, until_converged,
                  train_dtype, eos, converge_rel_tol, converge_abs_tol, converge_cov_tol, seed, shard, device, n_boot,
                  plot, quiet):
    """Sweep LoRA ranks × lengths on a base model, each point trained to convergence (the loss at
    budget B and 2B recorded), and fit the Parametric Memory Law (see memlaw.calibration.sweep for
    the recipe, resume, shards and Slurm)."""
    from memlaw.models import check_model_name

    check_model_name(model)  # a typo fails in a second, before the sweep's imports
    from memlaw import api
    from memlaw.cli.common import corpus_spec, quiet_libraries

    if quiet:
        quiet_libraries()
    recipe = api.Recipe(method=method, lr=lr, batch_size=1, max_steps=max_steps, patience=patience, seed=seed,
                        converge_rel_tol=converge_rel_tol, converge_abs_tol=converge_abs_tol,
                        converge_cov_tol=converge_cov_tol,
                        **recipe_extras(schedule, cycles, until_converged, train_dtype, eos, _CAL))
    _sweep_done(api.calibrate(out, model=model, ranks=ranks, lengths=lengths, target_modules=target_modules,
                              layers=layers, alpha=alpha, recipe=recipe, batch_size=batch_size, chunk=chunk,
                              data=corpus_spec(data, fmt, key_field, target_field) if data else None,
                              data_seed=data_seed, shard=shard, n_boot=n_boot, plot=plot,
                              runtime=api.Runtime(device=device), progress=not quiet))


@main.command("merge")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="new sweep folder")
@click.option("--n-boot", default=200, show_default=True, type=click.IntRange(min=0))
@click.option("--plot", is_flag=True, help="also write law.png (needs matplotlib)")
@handle_errors
def merge_cmd(dirs, out, n_boot, plot):
    """Merge sweep folders (e.g. the shards of one sweep) into a new one and fit the law."""
    from memlaw.calibration.sweep import merge_sweeps

    _sweep_done(merge_sweeps(dirs, out, n_boot=n_boot, plot=plot))


# ---------------------------------------------------------------------------------------------
# memplan estimate (the logic lives in memlaw.planner.estimate)

from memlaw.cli.common import corpus_options as _corpus_options  # noqa: E402


@main.command("estimate")
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("--law", "law_path", default=None, type=click.Path(dir_okay=False),
              help="law card JSON (default: the card shipped for --model)")
@click.option("--model", default=None,
              help="base model to measure with (default: the card's); without --law it picks the shipped "
                   "card [default: smollm2-135m]")
@click.option("--coverage", default=1.0, show_default=True, type=float,
              help="share of target tokens to lock, in (0, 1]")
@click.option("--json", "as_json", is_flag=True, help="print JSON to stdout instead of tables")
@_corpus_options
@click.option("--no-cache", is_flag=True, help="measure L_before again, ignoring (and refreshing) the cache")
@click.option("--backend", type=click.Choice(list(BACKEND_CHOICES)), default="auto", show_default=True,
              help="scoring engine for L_before. auto: vllm where it is installed and a GPU is visible, else "
                   "transformers (the notes say why); vllm needs `make install-vllm`")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, … (for measuring)")
@click.option("--predictor", type=click.Choice(PREDICTORS), default=DEFAULT_PREDICTOR, show_default=True,
              help="how a loss reduction becomes coverage: context (each token at the cheapest of its base loss, "
                   "its unigram code and its loss after other records of the corpus: a second scoring pass), "
                   "unigram (the cheapest tokens first, or the corpus's own token frequencies once learnt, "
                   "whichever is cheaper), budget (cheapest first at base-model costs) or boost (one log-odds "
                   "boost for every token); docs/results.md §2 compares them")
@handle_errors
def estimate_cmd(corpus, law_path, model, coverage, as_json, fmt, key_field, target_field, no_cache, backend,
                 device, predictor):
    """The LoRA rank CORPUS needs to reach --coverage, from a calibrated law card: ℓ, L_before,
    ΔL needed, rank with its interval, size on disk, capacity floor, conflicts, a LoraConfig."""
    from memlaw.models import check_model_name

    if model is not None:
        check_model_name(model)  # "did you mean", not "no law card ships for" a typo
    from memlaw import api
    from memlaw.cli.common import corpus_spec
    from memlaw.cli.render import render_estimate as render

    est = api.plan(corpus_spec(corpus, fmt, key_field, target_field), model=model, law=law_path, coverage=coverage,
                   predictor=predictor, runtime=api.Runtime(device=device, backend=backend), use_cache=not no_cache,
                   progress=not as_json)
    if as_json:
        click.echo(json.dumps(est.to_dict(), indent=2, ensure_ascii=False))
    else:
        render(est, Console())


#: the installed command (pyproject.toml [project.scripts])
run = console_script(main)

if __name__ == "__main__":
    run()
