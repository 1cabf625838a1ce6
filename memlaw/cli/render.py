"""What the commands print for people: rich tables and coloured tokens. The library computes and
writes files (JSON, Markdown, HTML, JUnit); only the CLIs draw on a terminal."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from memlaw.auditor.audit import AuditResult, Gate, RecordAudit
from memlaw.auditor.reports import COMPARE_ROWS, _gate_block, _summary_rows, _visible

if TYPE_CHECKING:  # the planner (scipy) is not imported by memaudit
    from memlaw.planner.estimate import Estimate

# --------------------------------------------------------------------------------------------
# memaudit


def _style(t: dict) -> str:
    p = t["p"] if t["p"] is not None else 0.0
    if not p > 0.5:
        return "bold white on red" if t["argmax"] != t["id"] else "bold red"
    return "yellow" if p < 0.9 else "green"


def record_text(r: RecordAudit):
    """The record's target, each token coloured by p (rich Text; no markup is interpreted)."""
    from rich.text import Text

    text = Text()
    if r.key:
        text.append(_visible(r.key), style="dim")
        text.append(" ")
    for t in r.tokens:
        text.append(_visible(t["text"]) or "∅", style=_style(t))
    return text


def print_gate(console, result: AuditResult, gate: Gate | None) -> None:
    g = _gate_block(result, gate)
    if not g["active"]:
        return
    desc = (gate or Gate()).describe()
    if g["passed"]:
        console.print(f"gate passed ({desc})", style="bold green", markup=False, highlight=False)
    else:
        console.print(f"gate FAILED ({desc}):", style="bold red", markup=False, highlight=False)
        for f in g["failures"]:
            console.print(f"  {f}", style="red", markup=False, highlight=False)


def print_terminal(console, result: AuditResult, worst: int = 5, *, gate: Gate | None = None) -> None:
    """Summary table, warnings, the worst records with their tokens coloured by p (green ≥ 0.9,
    yellow > 0.5, red ≤ 0.5, reversed red where greedy decoding picks another token), the gate."""
    from rich.table import Table
    from rich.text import Text

    name = Path(result.adapter).name if result.adapter else "model"
    table = Table(title=Text(f"memaudit {name}"), show_header=False, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in _summary_rows(result.summary):
        table.add_row(k, v)
    console.print(table)
    for w in result.warnings:
        console.print(Text(f"warning: {w}", style="yellow"))
    shown = result.worst(worst)
    failing = result.not_locked_records()
    if worst > 0 and shown:
        console.print(Text(f"worst records ({len(shown)} of {failing} not locked):", style="bold"))
        for r in shown:
            locked_n = sum(1 for t in r.tokens if t["p"] is not None and t["p"] > 0.5)
            head = Text(f"#{r.index} {r.where}  ", style="bold")
            head.append("exact" if r.exact else "NOT exact", style="green" if r.exact else "red")
            head.append(f"  coverage {locked_n}/{r.n_tokens}")
            if r.anchor is not None:
                head.append(f"  anchor {r.anchor}")
            console.print(head)
            console.print(Text("  ").append_text(record_text(r)))
            if r.spans:
                spans = ", ".join(f"[{s['start']},{s['end']}) {s['text']!r}" for s in r.spans[:6])
                console.print(Text(f"  failing spans: {spans}" + (" …" if len(r.spans) > 6 else ""), style="dim"))
    elif not failing:
        console.print(Text("every record locked: every target token has p > 0.5", style="green"))
    print_gate(console, result, gate)


def print_comparison(console, before: AuditResult, after: AuditResult, *, title: str = "repair") -> None:
    """Before/after side by side: coverage, exact, locked, mean loss."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), title_justify="left")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    n = after.summary["records"]
    for label, key, fmt in COMPARE_ROWS:
        b, a = before.summary[key], after.summary[key]
        bs, as_ = fmt.format(b), fmt.format(a)
        if key.endswith("_records"):
            bs, as_ = f"{b}/{n}", f"{a}/{n}"
        d = a - b
        change = f"{d:+.4f}" if isinstance(d, float) else f"{d:+d}"
        table.add_row(label, bs, as_, change)
    console.print(table)


# --------------------------------------------------------------------------------------------
# memplan estimate


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def _rank_text(r) -> str:
    return "unreachable" if r is None else str(r)


def render_estimate(est: Estimate, console) -> None:
    """Print an estimate as rich tables for people."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"memplan estimate — {escape(est.corpus['path'])}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("", overflow="fold")
    t.add_row("base model", escape(est.model))
    card = est.card
    t.add_row("law card", escape(f"{card['path']}{' (shipped)' if card['shipped'] else ''}, "
                                 f"{card['data_kind']}, R² {card['r2']:.3f}"))
    t.add_row("records", f"{est.records:,}")
    t.add_row("target tokens ℓ", f"{est.target_tokens:,}")
    t.add_row("L_before", f"{est.loss_before:.4f} nats/token (base model locks {est.base_coverage:.1%} of tokens)")
    t.add_row("max reachable coverage", f"{est.max_coverage:.4f}" + (
        f"  ({est.ceiling.get('blocked_tokens', 0):,} tokens share a context with another continuation)"
        if est.max_coverage < 1 else "  (no shared contexts)"))
    t.add_row(f"target loss (coverage ≥ {est.coverage_planned:g})", f"{est.loss_target:.4f}  ({est.predictor} predictor)")
    t.add_row("ΔL needed", f"{est.delta_needed:.4f}" + ("  (base model already there)" if est.any_rank else "")
              + (f"  (rank chosen for ×{est.headroom:.2f} = {est.headroom * est.delta_needed:.4f}: target headroom)"
                 if est.headroom > 1 else ""))
    raw = "—" if est.rank_raw is None else f"{est.rank_raw:.3g}"
    t.add_row("rank (law)", Text(f"{_rank_text(est.rank)}   (continuous r = {raw})", style="bold"))
    if est.rank_interval is not None:
        lo, hi = est.rank_interval
        lo_r, hi_r = est.rank_interval_raw
        fmt = lambda x: "∞" if x is None or not math.isfinite(x) else f"{x:.3g}"  # noqa: E731
        t.add_row(f"interval ({est.bootstrap['percentiles'][0]}–{est.bootstrap['percentiles'][1]}%)",
                  f"{_rank_text(lo)} – {_rank_text(hi)}   (r = {fmt(lo_r)} – {fmt(hi_r)}, "
                  f"{est.bootstrap['samples']} bootstrap fits)")
    floor = "—" if est.capacity_floor_rank is None else str(est.capacity_floor_rank)
    t.add_row("capacity floor", f"{est.capacity_floor_bits:,.0f} bits / {est.bits_per_param} bits per param = "
                                f"{est.capacity_floor_params:,.0f} params = rank {floor}")
    t.add_row("recommended rank", Text(_rank_text(est.recommended_rank), style="bold green"))
    if est.predicted_loss_after is not None:
        t.add_row("predicted at that rank", f"coverage {est.predicted_coverage:.4f}, L_after {est.predicted_loss_after:.4f}")
    if est.coverage_by_rank:
        t.add_row("predicted coverage by rank", ",  ".join(f"r{x['rank']}: {x['coverage']:.3f}"
                                                             for x in est.coverage_by_rank))
    ppr = "—" if est.params_per_rank is None else f"{est.params_per_rank:,}"
    tp = "—" if est.trainable_params is None else f"{est.trainable_params:,}"
    t.add_row("trainable params", f"{tp}  ({ppr} per rank)")
    if est.adapter_bytes:
        t.add_row("adapter size", f"{_bytes(est.adapter_bytes['fp32'])} fp32, {_bytes(est.adapter_bytes['bf16'])} bf16")
    if est.full_rank:
        t.add_row("template full rank", f"{est.full_rank['min']}–{est.full_rank['max']} over "
                                        f"{est.full_rank['modules']} modules")
    t.add_row("conflicts", str(est.n_conflicts))
    t.add_row("cached", f"{'yes' if est.cached else 'no'} ({est.seconds:.2f} s; measuring took "
                        f"{est.measure_seconds:.2f} s)")
    console.print(t)

    if est.conflicts:
        ct = Table(title=f"conflicting keys (first {min(5, len(est.conflicts))} of {est.n_conflicts})")
        ct.add_column("key", overflow="fold")
        ct.add_column("where", overflow="fold")
        ct.add_column("targets", overflow="fold")
        for c in est.conflicts[:5]:
            ct.add_row(escape(c["key"]), escape(", ".join(c["wheres"])),
                       escape(" | ".join(repr(x) for x in c["targets"])))
        console.print(ct)
    for w in est.warnings:
        console.print(Text(f"warning: {w}", style="yellow"))
    for n in est.notes:
        console.print(Text(f"note: {n}", style="dim"))
    if est.lora_config_python:
        console.print(Text("\npeft.LoraConfig:", style="bold"))
        console.print(Text(est.lora_config_python))
        console.print(Text("or train it with memft:", style="bold"))
        console.print(Text(est.memft_command))
