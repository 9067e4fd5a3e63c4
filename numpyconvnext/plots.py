"""Pictures for people who would rather look than read (optional `plot` extra: matplotlib).

Every function returns the written path, or None when matplotlib is not installed, so callers
never fail for want of it. Figures are drawn off-screen (Agg) and written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from numpyconvnext.checkpoint import atomic_write


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write(Path(path), lambda handle: handle.write(buffer.getvalue()))
    return Path(path)


def training_curves(history: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Loss (train vs validation) and accuracy (train vs validation) per epoch, side by side."""
    plt = _pyplot()
    if plt is None or not history:
        return None
    epochs = [row["epoch"] for row in history]

    def column(name):
        return [np.nan if row.get(name) is None else row[name] for row in history]

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, column("train_loss"), marker="o", label="train")
    loss_ax.plot(epochs, column("val_loss"), marker="o", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    acc_ax.plot(epochs, column("train_accuracy"), marker="o", label="train")
    acc_ax.plot(epochs, column("val_accuracy"), marker="o", label="validation")
    if any(v is not None for v in column("val_direction_accuracy")):
        acc_ax.plot(epochs, column("val_direction_accuracy"), marker=".", linestyle="--",
                    label="validation direction")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    result = _save(fig, path)
    plt.close(fig)
    return result


def equity_and_drawdown(curves: dict[str, pd.Series], path: str | Path, title: str = "") -> Path | None:
    """Equity curves (name -> Series indexed by time) on top, their drawdowns below.

    When the curves span more than a factor of 4 the equity axis is logarithmic, so a curve that
    stays near its start stays readable beside one that grows sevenfold.
    """
    plt = _pyplot()
    if plt is None or not curves:
        return None
    fig, (equity_ax, drawdown_ax) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    for name, equity in curves.items():
        equity = pd.Series(equity).astype(float)
        equity_ax.plot(equity.index, equity.to_numpy(), label=name, linewidth=1.2)
        drawdown = equity / equity.cummax() - 1.0
        drawdown_ax.plot(drawdown.index, 100 * drawdown.to_numpy(), label=name, linewidth=1.0)
    values = np.concatenate([pd.Series(c).astype(float).to_numpy() for c in curves.values()])
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) and values.max() / values.min() > 4:
        equity_ax.set_yscale("log")
    equity_ax.set(ylabel="equity" + (" (log scale)" if equity_ax.get_yscale() == "log" else ""),
                  title=title or "Equity")
    drawdown_ax.set(ylabel="drawdown (%)", xlabel="time (UTC)")
    for ax in (equity_ax, drawdown_ax):
        ax.grid(alpha=0.3)
    equity_ax.legend(loc="best", fontsize="small")
    fig.autofmt_xdate()
    result = _save(fig, path)
    plt.close(fig)
    return result


def bar_chart(values: dict[str, list[float]], labels: list[str], path: str | Path, ylabel: str,
              title: str = "") -> Path | None:
    """Grouped bars: one group per label (e.g. fold), one bar per series name (e.g. strategy)."""
    plt = _pyplot()
    if plt is None or not values:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(labels) + 3), 3.8))
    width = 0.8 / len(values)
    positions = np.arange(len(labels))
    for k, (name, series) in enumerate(values.items()):
        ax.bar(positions + (k - (len(values) - 1) / 2) * width, series, width, label=name)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(positions, labels)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    result = _save(fig, path)
    plt.close(fig)
    return result
