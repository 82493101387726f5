"""Training curves as a PNG: losses and the validation metrics per epoch, from a run's metrics.csv."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from seqrec.atomic import atomic_write


def plot_training_curves(metrics_csv: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
