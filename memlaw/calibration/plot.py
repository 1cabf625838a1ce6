"""law.png: ΔL against rank, one colour per length, the fitted law dashed (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memlaw.card import LawCard

# ---------------------------------------------------------------------------------------------
# plot


def plot_card(card: LawCard, path) -> str | None:
    """ΔL against r (log-log), one colour per ℓ: measured points (hollow: saturated, a lower bound)
    and the fitted curves. Returns None when written, else a one-line note why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'memlaw[plot]')"
    law = card.law()
    pts = card.points
    lengths = sorted({float(p["length"]) for p in pts})
    r_lo, r_hi = card.domain["rank"]
    rr = np.geomspace(r_lo, r_hi, 100)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("viridis")
    for i, n in enumerate(lengths):
        color = cmap(i / max(1, len(lengths) - 1))
        mine = [p for p in pts if float(p["length"]) == n]
        for sat in (False, True):
            sel = [p for p in mine if bool(p.get("saturated")) == sat and p["delta_loss"] > 0]
            if sel:
                ax.scatter([p["rank"] for p in sel], [p["delta_loss"] for p in sel], s=36, zorder=3,
                           facecolors="none" if sat else color, edgecolors=color,
                           label=None if sat else f"ℓ = {n:g}")
        pred = law.predict(rr, n)
        ok = pred > 0
        ax.plot(rr[ok], pred[ok], color=color, lw=1.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.set_xticks(sorted({float(p["rank"]) for p in pts}))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("ΔL = L_before − L_after (nats/token)")
    c = card.coefficients
    ax.set_title(f"{card.base_model.get('name', '?')}: ΔL = {c['C']:.3g}·r^{c['alpha']:.3g}·ℓ^(−{c['beta']:.3g}) "
                 f"+ {c['b']:.3g}   R² = {card.r2:.3f}", fontsize=9)
    ax.legend(fontsize=8, title="hollow: saturated (a lower bound)" if card.n_saturated else None,
              title_fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return None
