"""Pictures: written when matplotlib is there, skipped silently (None) when it is not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from numpyconvnext import plots


def test_without_matplotlib_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "_pyplot", lambda: None)
    assert plots.training_curves([{"epoch": 1, "train_loss": 1.0}], tmp_path / "a.png") is None
    assert plots.equity_and_drawdown({"m": pd.Series([1.0, 2.0])}, tmp_path / "b.png") is None
    assert list(tmp_path.iterdir()) == []


def test_pictures_are_png_files(tmp_path):
    pytest.importorskip("matplotlib", reason="the optional plot extra (matplotlib) is not installed")
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_accuracy": 0.3 + e / 20,
                "val_accuracy": 0.3 + e / 30, "val_direction_accuracy": None} for e in (1, 2, 3)]
    index = pd.date_range("2024-01-01", periods=50, freq="h", tz="UTC")
    curve = pd.Series(np.linspace(1.0, 1.2, 50) + np.sin(np.arange(50)) / 50, index=index)
    paths = [
        plots.training_curves(history, tmp_path / "curves.png", title="t"),
        plots.equity_and_drawdown({"model": curve, "buy & hold": curve * 0.9}, tmp_path / "eq.png"),
        plots.bar_chart({"model": [0.5, -0.2], "momentum": [0.1, 0.3]}, ["fold 1", "fold 2"],
                        tmp_path / "bars.png", ylabel="Sharpe"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
