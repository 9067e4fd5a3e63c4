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
