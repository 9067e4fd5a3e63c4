"""Labels: classes from forward returns, masking past the data, the config's round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from numpyconvnext.data.labels import (
    HOLD,
    LONG,
    MASKED,
    SHORT,
    LabelConfig,
    class_balance,
    forward_log_return,
    label_mask,
    make_labels,
)


def frame(close) -> pd.DataFrame:
    return pd.DataFrame({"close": np.asarray(close, dtype=np.float64)})


def test_fixed_threshold_by_hand():
    close = [100.0, 102.0, 101.0, 100.5, 99.0, 100.0]
    labels = make_labels(frame(close), LabelConfig(horizon=2, mode="fixed", threshold=0.01))
    # log(101/100) = .00995 -> hold; log(100.5/102) -> short; log(99/101) -> short;
    # log(100/100.5) = -.005 -> hold; last two: past the data
    assert labels["label"].tolist() == [HOLD, SHORT, SHORT, HOLD, MASKED, MASKED]
    np.testing.assert_allclose(labels["forward_return"][:4], np.log([1.01, 100.5 / 102, 99 / 101,
                                                                     100 / 100.5]))
    assert labels["forward_return"][4:].isna().all()
    up = make_labels(frame([1.0, 1.1, 1.2]), LabelConfig(horizon=1, mode="fixed", threshold=0.05))
    assert up["label"].tolist() == [LONG, LONG, MASKED]


def test_vol_threshold_uses_only_past_returns():
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 500)))
    config = LabelConfig(horizon=5, mode="vol", vol_multiple=0.7, vol_window=50)
    labels = make_labels(frame(close), config)
    t = 300
    sigma = np.std(np.diff(np.log(close[t - 50 : t + 1])), ddof=1)
    assert labels["threshold"][t] == pytest.approx(0.7 * sigma * np.sqrt(5))
    assert (labels["label"][:50] == MASKED).all() and (labels["label"][50:495] != MASKED).all()
    fwd = labels["forward_return"].to_numpy()
    thr = labels["threshold"].to_numpy()
    ok = label_mask(labels)
    np.testing.assert_array_equal(labels["label"][ok] == LONG, fwd[ok] > thr[ok])
    np.testing.assert_array_equal(labels["label"][ok] == SHORT, fwd[ok] < -thr[ok])
    # changing the future beyond t + horizon leaves label t alone
    changed = close.copy()
    changed[t + 6 :] *= 3.0
    assert make_labels(frame(changed), config)["label"][t] == labels["label"][t]


def test_forward_log_return_and_balance():
    close = np.array([1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(forward_log_return(close, 1), [np.log(2)] * 3 + [np.nan])
    assert np.isnan(forward_log_return(close, 10)).all()
    balance = class_balance(np.array([0, 0, 1, 2, -1, -1]))
    np.testing.assert_allclose(balance, [0.5, 0.25, 0.25])


def test_config_round_trip_and_validation():
    config = LabelConfig(horizon=8, mode="fixed", threshold=0.004, vol_multiple=1.0, vol_window=24)
    assert LabelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown"):
        LabelConfig.from_dict({**config.to_dict(), "colour": 1})
    for bad in ({"horizon": 0}, {"mode": "median"}, {"threshold": -1.0}, {"vol_window": 1}):
        with pytest.raises(ValueError):
            LabelConfig(**bad)
