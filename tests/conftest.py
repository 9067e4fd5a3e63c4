"""Shared pytest fixtures."""

import pytest


# --- data layer: a fake Bybit server (see tests/bybit_server.py) -----------------------------
@pytest.fixture
def fake_bybit():
    """A running FakeBybit over 3,000 synthetic 1h candles (the last one still forming)."""
    from bybit_server import FakeBybit

    from numpyconvnext.data.synthetic import synthetic_candles

    with FakeBybit(synthetic_candles(3000, "1h", seed=7, start="2023-01-01")) as fake:
        yield fake


@pytest.fixture(autouse=True, scope="session")
def _trials_log_outside_the_repository(tmp_path_factory):
    """Runs of train/evaluate append to a trials log; tests keep it out of ./reports."""
    import os

    from numpyconvnext.trials import TRIALS_ENV

    previous = os.environ.get(TRIALS_ENV)
    os.environ[TRIALS_ENV] = str(tmp_path_factory.mktemp("trials") / "trials.jsonl")
    yield
    if previous is None:
        os.environ.pop(TRIALS_ENV, None)
    else:
        os.environ[TRIALS_ENV] = previous
