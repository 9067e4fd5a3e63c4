"""Live signals: the latest closed candles from Bybit -> the checkpoint's features -> one decision
per newly closed candle. Public market data only: nothing here places an order.

The loop (``run_live``):

  1. fetch the last ``history_bars`` closed candles (``get_klines`` up to the clock's now; a
     candle counts as closed when ``open + interval <= now``, and Bybit's still-forming one is
     dropped by the client using the server's time);
  2. decide (``inference.decide``, the very path ``backtest`` uses) for every candle that
     closed since the last line and emit one JSON line each, plus a human line on the log. On
     the first round: with a state file that names the last candle signalled (see
     ``live_state``), every candle closed since then, oldest first (at most
     ``max_catch_up_bars``); without one, only the newest;
  3. sleep until the next candle closes, plus ``close_delay_s`` (the exchange needs a moment to
     publish it); if the expected candle is not there yet, poll again after ``poll_s``.

Restarts: the state file is rewritten (atomically) before each line is printed, so no candle is
ever signalled twice; a crash between the two writes loses that one line rather than repeating
it. A line for a candle that was not the newest closed one when it was printed (a catch-up
after a restart, or after a long outage) carries ``"late": true``.

Paper trading (``paper=True``, ``live --paper``): every candle that gets a line is also traded
on a simulated account (``paper.PaperAccount``) exactly as ``backtest`` trades it: the hold
rule, the fill at the next open with fees and slippage, the ATR stop and take-profit, and on a
perpetual the funding settled at each candle's open (from Bybit's funding history, fetched
with the candles). The account lives in the state file and is written in the same atomic write
as the candle's ``last_emitted``: a candle's fills are never applied twice nor lost, and a
restart continues the account exactly where it was (catching up on the candles closed
meanwhile). The line then carries ``"paper"``: equity, cash, position (with its stop and
take-profit), the target for the next open, this candle's fills and closed trades, funding.
An account that fell more than ``max_catch_up_bars`` candles behind cannot continue exactly
and is an error. Still no orders: the fills are simulated.

Network trouble never ends the loop: the client already retries a request with backoff; when it
gives up, the loop logs one line and tries again after ``retry_min_s * 2^k`` seconds (capped at
``retry_max_s``; after HTTP 403, an IP ban, at least the client's ``forbidden_wait_s``). An
impossible upstream row (Bybit's own data) is retried ``bad_row_attempts`` times, then skipped
with a warning: it gets no line, the loop goes on. After the first good round a short answer
(fewer candles than the model needs) is transient too. A parameter error (unknown symbol or
interval) or a market younger than the history the model needs on the first round is not
transient and raises ``LiveParameterError``. At the first good answer the local clock is
compared with the server's and a skew over ``CLOCK_SKEW_WARN_S`` is warned about. ``clock``
(epoch seconds) and ``sleep`` are injectable, so tests run several candle closes instantly
against a fake server whose clock they advance.

History: features need ``WARMUP_BARS`` (EMA 200) plus one window; on top we fetch
``HISTORY_MARGIN_BARS`` so that the exponential averages, seeded at the start of the fetched
history, have forgotten their seed: the seed's weight in EMA 200 after m bars is
``(1 - 2/201)^m``, about 0.25% for m = 600.

JSON line (one per closed candle; ``"time"`` is the candle's open time, as in candle files)::

    {"time": "2024-05-01T13:00:00Z", "close_time": "2024-05-01T14:00:00Z",
     "symbol": "BTCUSDT", "interval": "1h", "close": 63120.5,
     "probabilities": {"long": 0.64, "short": 0.21, "hold": 0.15},   # null for regression
     "predicted_return": null,                                       # regression: log return
     "signal": "LONG", "confidence": 0.64,
     "size": {"units": 0.0321, "fraction": 0.2026, "equity": 10000.0},
     "stop_distance": 412.3, "stop_price": 62708.2,                  # stop_price null for HOLD
     "late": false,                                # a newer candle had closed when printed
     "emitted_at": "2024-05-01T14:00:03.120Z"}     # the local clock when the line was printed
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from numpyconvnext.data.bybit import BybitError, BybitParameterError, BybitResponseError
from numpyconvnext.data.intervals import interval_to_ms, next_open_ms, normalize_interval

from .inference import DEFAULT_EQUITY, Decisions, decide, preprocessing_of
from .live_state import LiveState, iso_utc_ms
from .paper import PaperAccount, format_paper
from .signals import Signal
from .strategy import Strategy

HISTORY_MARGIN_BARS = 600
DEFAULT_CLOSE_DELAY_S = 3.0
DEFAULT_BAD_ROW_ATTEMPTS = 3
DEFAULT_MAX_CATCH_UP_BARS = 5000
CLOCK_SKEW_WARN_S = 2.0


class LiveError(RuntimeError):
    """``once`` could not fetch its candles (the network or Bybit failed); one readable line."""


class LiveParameterError(ValueError):
    """A mistake retrying cannot fix (unknown symbol or interval, too little history)."""


@dataclass(frozen=True)
class LiveSettings:
    """Decision settings shared by every round: the strategy (the same definition ``backtest``
    and ``evaluate`` trade; see ``strategy.Strategy``) and the equity sizes refer to."""

    strategy: Strategy = Strategy()
    equity: float = DEFAULT_EQUITY


def history_bars(model) -> int:
    """Closed candles fetched each round: warm-up + window + ``HISTORY_MARGIN_BARS``."""
    return preprocessing_of(model).min_candles + HISTORY_MARGIN_BARS


def fetch_closed_candles(client, symbol: str, interval: str, count: int, now_s: float,
                         skip_open_ms: frozenset[int] = frozenset()) -> pd.DataFrame:
    """The last ``count`` candles closed by ``now_s`` (epoch seconds), oldest first, without the
    rows whose open time is in ``skip_open_ms`` (bad upstream rows given up on)."""
    name = normalize_interval(interval)
    now_ms = int(now_s * 1000)
    step_ms = interval_to_ms(name)
    slack_ms = 3 * 86_400_000 if name == "1M" else 0  # months are longer than their mean
    start_ms = now_ms - (count + 2) * step_ms - slack_ms
    if skip_open_ms:
        candles = client.get_klines(symbol, name, start_ms, now_ms, skip_open_ms=skip_open_ms)
    else:
        candles = client.get_klines(symbol, name, start_ms, now_ms)
    if len(candles):
        opens = pd.DatetimeIndex(candles["timestamp"]).as_unit("ns").asi8 // 1_000_000
        closes = np.array([next_open_ms(int(t), name) for t in opens[-2:]])
        closed = np.ones(len(candles), dtype=bool)
        closed[-len(closes):] = closes <= now_ms  # only the newest rows can still be forming
        candles = candles[closed]
    return candles.iloc[-count:].reset_index(drop=True)


def _iso(stamp: pd.Timestamp) -> str:
    return pd.Timestamp(stamp).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: float, digits: int = 6) -> float | None:
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def signal_record(decisions: Decisions, i: int, symbol: str, interval: str, *, late: bool = False,
                  emitted_at: str | None = None) -> dict:
    """The JSON-able record of decision ``i`` (the schema is in the module docstring).

    ``emitted_at`` defaults to now (``iso_utc_ms``)."""
    stamp = decisions.timestamp[i]
    close_ms = next_open_ms(int(stamp.value // 1_000_000), interval)
    signal = Signal(int(decisions.signal[i]))
    distance = decisions.stop_distance[i]
    close = float(decisions.close[i])
    stop_price = None
    if signal != Signal.HOLD and np.isfinite(distance):
        stop_price = close - distance if signal == Signal.LONG else close + distance
    probabilities = None
    if decisions.probabilities is not None:
        p = decisions.probabilities[i]
        probabilities = {"long": _number(p[0]), "short": _number(p[1]), "hold": _number(p[2])}
    predicted = None
    if decisions.predicted_return is not None:
        predicted = _number(decisions.predicted_return[i], 8)
    return {
        "time": _iso(stamp),
        "close_time": _iso(pd.Timestamp(close_ms, unit="ms", tz="UTC")),
        "symbol": symbol.upper(),
        "interval": interval,
        "close": close,
        "probabilities": probabilities,
        "predicted_return": predicted,
        "signal": signal.name,
        "confidence": _number(decisions.confidence[i]),
        "size": {"units": _number(decisions.units[i], 8), "fraction": _number(decisions.fraction[i]),
                 "equity": decisions.equity},
        "stop_distance": _number(distance, 8),
        "stop_price": None if stop_price is None else _number(stop_price, 8),
        "late": bool(late),
        "emitted_at": emitted_at or iso_utc_ms(pd.Timestamp.now(tz="UTC")),
    }


def format_human(record: dict) -> str:
    """One line for people: time, close, signal, probabilities, size."""
    if record["probabilities"] is not None:
        p = record["probabilities"]
        detail = f"p long {p['long']:.2f} short {p['short']:.2f} hold {p['hold']:.2f}"
    else:
        detail = f"predicted return {100 * record['predicted_return']:+.3f}%"
    size = record["size"]
    line = (f"{record['close_time'][:16].replace('T', ' ')} UTC {record['symbol']} {record['interval']} "
            f"close {record['close']:,.6g}: {record['signal']:<5} ({detail})")
    if record.get("late"):
        line += " [late]"
    if record["signal"] != "HOLD":
        line += (f" -> {size['units']:.6g} units = {100 * size['fraction']:.1f}% of equity "
                 f"{size['equity']:,.0f}")
        if record["stop_price"] is not None:
            line += f", stop {record['stop_price']:,.6g}"
    return line


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _stdout(line: str) -> None:
    print(line, flush=True)


def run_live(
    model,
    client,
    symbol: str,
    interval: str,
    *,
    settings: LiveSettings | None = None,
    once: bool = False,
    state: LiveState | None = None,
    emit: Callable[[str], None] = _stdout,
    log: Callable[[str], None] = _stderr,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    close_delay_s: float = DEFAULT_CLOSE_DELAY_S,
    poll_s: float | None = None,
    retry_min_s: float = 5.0,
    retry_max_s: float = 300.0,
    bad_row_attempts: int = DEFAULT_BAD_ROW_ATTEMPTS,
    max_catch_up_bars: int = DEFAULT_MAX_CATCH_UP_BARS,
    max_lines: int | None = None,
    paper: bool = False,
) -> int:
    """Emit one JSON line per newly closed candle until interrupted; returns the lines emitted.

    ``once``: one fetch, the lines it brings (the newest closed candle, or with ``state``
    every candle closed since the last one signalled), return; a network failure (after the
    client's own retries) raises ``LiveError`` instead of waiting for another round.
    ``state``: a ``LiveState`` saved before every line (see the module docstring); None keeps
    nothing between runs. ``max_lines`` stops after that many lines (tests).
    ``paper``: also trade the strategy on the paper account kept in ``state`` (see
    ``paper_account`` and the module docstring); each line then carries ``"paper"``.
    ``clock`` (epoch seconds, default ``time.time``) and ``sleep`` (default ``time.sleep``) drive
    all waiting; ``poll_s`` is the wait when an expected candle is late (default: a sixtieth of
    the interval, 2..30 s). ``KeyboardInterrupt`` propagates (the CLI turns it into exit 0).
    """
    clock = clock or time.time
    sleep = sleep or time.sleep
    settings = settings or LiveSettings()
    name = normalize_interval(interval)
    step_ms = interval_to_ms(name)
    step_s = step_ms / 1000.0
    poll_s = poll_s if poll_s is not None else min(30.0, max(2.0, step_s / 60.0))
    prep = preprocessing_of(model)
    count = prep.min_candles + HISTORY_MARGIN_BARS
    last_time: pd.Timestamp | None = state.last_emitted if state is not None else None
    account = paper_account(model, state, settings, paper)
    emitted = 0
    failures = 0
    succeeded = False
    skip: set[int] = set()
    bad_seen: dict[int, int] = {}
    while True:
        wanted = count
        if last_time is not None:  # after a restart or an outage: history for each missed one
            missed = int((clock() * 1000 - last_time.value // 1_000_000) // step_ms) - 2
            wanted += min(max(missed, 0), max_catch_up_bars)
        try:
            candles = fetch_closed_candles(client, symbol, name, wanted, clock(), frozenset(skip))
            if len(candles) < prep.min_candles:
                message = (f"Bybit has only {len(candles)} closed {symbol} {name} candles; the "
                           f"model needs {prep.min_candles} (warm-up {prep.warmup_bars} + window "
                           f"{prep.window})")
                if not succeeded:
                    raise LiveParameterError(message)
                raise BybitResponseError(f"a short answer: {message}")
            funding = _paper_funding(client, symbol, account, candles, last_time)
        except BybitParameterError as error:
            raise LiveParameterError(f"Bybit rejected {symbol} {name}: {error}") from None
        except (BybitError, BybitResponseError, OSError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            if once:
                raise LiveError(f"cannot fetch {symbol} {name} candles: {reason}") from None
            bad_ms = getattr(error, "open_ms", None)
            if bad_ms is not None:
                bad_seen[bad_ms] = bad_seen.get(bad_ms, 0) + 1
                if bad_seen[bad_ms] >= bad_row_attempts:
                    skip.add(bad_ms)
                    log(f"warning: skipping Bybit's {_iso(pd.Timestamp(bad_ms, unit='ms', tz='UTC'))} "
                        f"candle after {bad_seen[bad_ms]} attempts ({reason}); it gets no signal")
                    continue
            failures += 1
            wait_s = min(retry_max_s, retry_min_s * 2.0 ** (failures - 1))
            if getattr(error, "forbidden", False):  # an IP ban: minutes, not seconds
                wait_s = max(wait_s, float(getattr(client, "forbidden_wait_s", 0.0)))
            log(f"fetch failed ({reason}); retry {failures} in {wait_s:.0f} s")
            sleep(wait_s)
            continue
        if not succeeded:
            _check_clock(client, clock(), log)
        succeeded = True
        failures = 0
        stamps = pd.DatetimeIndex(candles["timestamp"])
        if last_time is None:
            new = np.array([len(candles) - 1])
        else:
            new = np.flatnonzero(stamps > last_time)
            new = new[new >= prep.first_decision_index]
            if account is not None and (stamps[0] > last_time or len(new) > max_catch_up_bars):
                raise LiveParameterError(
                    f"the paper account's last candle ({_iso(last_time)}) is more than "
                    f"{max_catch_up_bars} candles ago: it cannot continue exactly; start a new "
                    f"account (another --out, or delete {state.path})")
            if len(new) > max_catch_up_bars:
                log(f"warning: {len(new)} candles closed since the last line; signalling the "
                    f"newest {max_catch_up_bars}")
                new = new[-max_catch_up_bars:]
        if len(new):
            decisions = decide(model, candles, new, strategy=settings.strategy,
                               equity=settings.equity, symbol=symbol)
            rates = _rates(account, stamps[new], funding)
            for i in range(len(decisions)):
                now = pd.Timestamp(clock(), unit="s", tz="UTC")
                record = signal_record(decisions, i, symbol, name,
                                       late=bool(new[i] < len(candles) - 1),
                                       emitted_at=iso_utc_ms(now))
                if account is not None:  # the candle's fills, before the state records it done
                    step = account.step(candles.iloc[new[i]], decisions.signal[i],
                                        decisions.fraction[i], decisions.stop_distance[i],
                                        decisions.atr[i], rates[i])
                    record["paper"] = account.record(step)
                    record["size"].update(equity=step.equity, units=_number(
                        decisions.fraction[i] * step.equity / decisions.close[i], 8))
                    state.paper = account.to_dict()
                if state is not None:  # recorded first: a crash now loses a line, never repeats
                    state.last_emitted = pd.Timestamp(decisions.timestamp[i])
                    state.save(now)
                emit(json.dumps(record, allow_nan=False))
                log(format_human(record))
                if account is not None:
                    log(format_paper(record["paper"]))
                emitted += 1
                if max_lines is not None and emitted >= max_lines:
                    return emitted
            last_time = stamps[-1]
        elif last_time is not None and once:
            log(f"no {symbol} {name} candle has closed since the last line ({_iso(last_time)})")
        if last_time is None or stamps[-1] > last_time:
            last_time = stamps[-1]
        if once:
            return emitted
        # the candle after the newest closed one closes at next_open(next_open(newest open))
        newest_ms = max([int(stamps[-1].value // 1_000_000), *skip])  # a skipped one is past
        wake_s = next_open_ms(next_open_ms(newest_ms, name), name) / 1000.0 + close_delay_s
        delay_s = wake_s - clock()
        if delay_s < poll_s and not len(new):  # the expected candle is late: poll
            delay_s = poll_s
        sleep(max(delay_s, 0.0))


def paper_account(model, state: LiveState | None, settings: LiveSettings,
                  paper: bool = True) -> PaperAccount | None:
    """The paper account kept in ``state``, or a new one of ``settings.equity``; None when not
    ``paper``.

    ValueError (one line): ``paper`` without a state; an account that trades another strategy
    than ``settings.strategy`` (with the checkpoint's choices filled in) or is out of step with
    the state's last candle; a state that holds an account when not ``paper`` (signalling
    without it would leave it behind for good).
    """
    if not paper:
        if state is not None and state.paper is not None:
            raise ValueError(f"state file {state.path} holds a paper account: run with --paper "
                             "to keep trading it, or use another --out")
        return None
    if state is None:
        raise ValueError("paper trading keeps its account in the state file: it needs one "
                         "(drop --no-state)")
    strategy = settings.strategy.with_checkpoint(getattr(model, "metadata", None))
    if state.paper is None:
        return PaperAccount.start(strategy, settings.equity)
    try:
        account = PaperAccount.from_dict(state.paper)
    except ValueError as error:
        raise ValueError(f"state file {state.path}: {error}; delete it to start afresh") from None
    if account.strategy != strategy:
        raise ValueError(f"state file {state.path}: the paper account trades "
                         f"{account.strategy.describe()}, not {strategy.describe()}: pass the "
                         "strategy flags it started with, or use another --out")
    if account.last_bar != state.last_emitted:
        raise ValueError(f"state file {state.path}: the paper account's last candle "
                         f"({account.last_bar}) is not the last one signalled "
                         f"({state.last_emitted}); delete the file to start afresh")
    return account


def _paper_funding(client, symbol: str, account: PaperAccount | None, candles: pd.DataFrame,
                   last_time: pd.Timestamp | None) -> pd.DataFrame | None:
    """The settlements a paper account on a perpetual pays after the last candle done
    (``last_time``), up to the newest candle's open (None: spot, no account, nothing new)."""
    if account is None or account.strategy.long_only or not len(candles):
        return None
    newest = pd.Timestamp(candles["timestamp"].iloc[-1])
    since = last_time if last_time is not None else newest
    if newest <= since:
        return None
    return client.get_funding_history(symbol, since + pd.Timedelta(milliseconds=1), newest,
                                      getattr(client, "category", "linear"))


def _rates(account: PaperAccount | None, opens: pd.DatetimeIndex,
           funding: pd.DataFrame | None) -> np.ndarray:
    """The funding rate charged at each of ``opens`` (see ``data.funding.funding_per_bar``):
    the settlements after the account's last candle up to each one's open."""
    from numpyconvnext.data.funding import funding_per_bar

    if account is None or account.last_bar is None:
        return funding_per_bar(opens, funding)
    return funding_per_bar(pd.DatetimeIndex([account.last_bar]).append(opens), funding)[1:]


def _check_clock(client, now_s: float, log: Callable[[str], None]) -> None:
    """Warn when the local clock and the server's (at its last answer) differ by > 2 s."""
    server_ms = getattr(client, "last_server_time_ms", None)
    if server_ms is None:
        return
    skew_s = now_s - server_ms / 1000.0
    if abs(skew_s) > CLOCK_SKEW_WARN_S:
        side = "ahead of" if skew_s > 0 else "behind"
        log(f"warning: the local clock is {abs(skew_s):.1f} s {side} Bybit's; candles are judged "
            "closed by the local clock: sync it (NTP)")
