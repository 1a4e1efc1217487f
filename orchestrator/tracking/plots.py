"""Matplotlib figures logged as MLflow artifacts (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(epochs: list[int], mean: list[float], std: list[float], title: str, out: Path) -> Path:
    """Fold-mean validation loss ± std over epochs."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    m, s = np.asarray(mean), np.asarray(std)
    ax.plot(epochs, m, label="validation loss, fold mean")
    ax.fill_between(epochs, m - s, m + s, alpha=0.3, label="± std over folds")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def parity(ref: np.ndarray, pred: np.ndarray, unit: str, what: str, out: Path) -> Path:
    """Predicted versus reference values with the MAE in the title."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(ref, pred, s=4, alpha=0.5)
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"reference {what} ({unit})")
    ax.set_ylabel(f"predicted {what} ({unit})")
    ax.set_title(f"{what}: MAE {np.abs(pred - ref).mean():.3g} {unit}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
