"""Shared pytest fixtures, and the hypothesis seed every run prints."""

import ipaddress
import os
import random
import socket
import subprocess
from pathlib import Path

import pytest


def _run_seed() -> tuple[int, str]:
    """The seed all property tests of this run draw from, and where it came from.

    HYPOTHESIS_SEED wins; otherwise the checked-out commit decides, so rerunning a commit
    replays exactly the same examples (a failure is never a one-off) while every new commit
    explores new ones; outside a git checkout, a random seed.
    """
    if os.environ.get("HYPOTHESIS_SEED"):
        return int(os.environ["HYPOTHESIS_SEED"]), "HYPOTHESIS_SEED"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = ""
    if head:
        return int(head[:8], 16), f"commit {head[:10]}"
    return random.SystemRandom().randrange(2**32), "random"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # before hypothesis's own pytest_configure reads the option
    if config.getoption("hypothesis_seed", default=None) is None:
        seed, origin = _run_seed()
        config.option.hypothesis_seed = str(seed)
        config._hypothesis_seed_origin = origin
    else:
        config._hypothesis_seed_origin = "--hypothesis-seed"


def _seed_line(config) -> str:
    seed = config.getoption("hypothesis_seed")
    return (f"hypothesis seed: {seed} (from {config._hypothesis_seed_origin}; "
            f"replay with HYPOTHESIS_SEED={seed} or --hypothesis-seed={seed})")


def pytest_report_header(config):
    return _seed_line(config)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus != 0:
        terminalreporter.write_line(_seed_line(config))


# --- no test touches the internet ------------------------------------------------------------------
# Children (CLI runs) get a closed loopback port as their default Bybit URL; in this process any
# lookup of a public host name or TCP connection to a public address fails the test that made it
# (the client would otherwise treat the refusal as "unreachable" and pass quietly).
OFFLINE_BYBIT_URL = "http://127.0.0.1:9"
_internet_attempts: list[str] = []
_real_getaddrinfo, _real_connect = socket.getaddrinfo, socket.socket.connect  # before the patch
_LOCAL_NAMES = {"localhost", socket.gethostname(), socket.getfqdn()}


def _is_public(host) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_global
    except ValueError:  # a name: only the machine's own names are local
        return str(host).lower() not in _LOCAL_NAMES


def _offline_getaddrinfo(host, *args, **kwargs):
    if host is not None and _is_public(host):
        _internet_attempts.append(f"DNS lookup of {host}")
        raise socket.gaierror(socket.EAI_NONAME, f"tests are offline: {host}")
    return _real_getaddrinfo(host, *args, **kwargs)


def _offline_connect(self, address):
    if self.type == socket.SOCK_STREAM and isinstance(address, tuple) and _is_public(address[0]):
        _internet_attempts.append(f"TCP connection to {address[0]}:{address[1]}")
        raise ConnectionRefusedError(f"tests are offline: {address[0]}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def _offline():
    from numpyconvnext.data.bybit import URL_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(URL_ENV, OFFLINE_BYBIT_URL)
        patch.setattr(socket, "getaddrinfo", _offline_getaddrinfo)
        patch.setattr(socket.socket, "connect", _offline_connect)
        yield


@pytest.fixture(autouse=True)
def _no_internet(_offline):
    del _internet_attempts[:]
    yield
    assert not _internet_attempts, f"the test tried to reach the internet: {_internet_attempts}"


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
    from numpyconvnext.trials import TRIALS_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TRIALS_ENV, str(tmp_path_factory.mktemp("trials") / "trials.jsonl"))
        yield
