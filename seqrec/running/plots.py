"""PNG plots of a run: training curves (losses and validation metrics per epoch) and the return per
round of improve-over-time."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from seqrec.running.atomic import atomic_write


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no screen needed), imported when first plotting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, png: Path) -> None:
    """Lay out, write atomically and close a figure."""
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    pyplot().close(fig)


def plot_training_curves(metrics_csv: Path, png: Path) -> None:
    plt = pyplot()
    m = pd.read_csv(metrics_csv)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for col in ("ce", "td"):
        axes[0].plot(m["epoch"], m[col], marker="o", label=col)
    axes[0].set(title="training loss (log scale)", xlabel="epoch", yscale="log")
    for kind, ax in (("click", axes[1]), ("purchase", axes[2])):
        for head in ("ssl", "q"):
            col = f"valid/{head}/{kind}/NDCG@10"
            if col in m:
                ax.plot(m["epoch"], m[col], marker="o", label=f"{head} head")
        ax.set(title=f"validation {kind} NDCG@10", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    save_png(fig, png)


def plot_improvement(table: pd.DataFrame, oracle: float, png: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.errorbar(table["round"], table["return"], yerr=table["return_ci95"], marker="o", capsize=3,
                label="model (greedy)")
    ax.axhline(oracle, color="gray", ls="--", label="greedy oracle")
    ax.set(xlabel="round", ylabel="mean return per session", title="improve over time")
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, png)
