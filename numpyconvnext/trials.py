"""The trials log: every configuration tried on a data set, so the deflated Sharpe knows N.

``reports/trials.jsonl`` (or ``$NUMPYCONVNEXT_TRIALS_LOG``) holds one JSON object a line,
appended and never rewritten:

    {"time": ..., "dataset": "BTCUSDT|linear|1h", "command": "evaluate" | "train",
     "kind": "pooled_test" | "validation", "config": {...}, "sharpe": 0.42 (annualised),
     "sharpe_per_bar": 0.0045, "bars": 14255, "run": "<report or model folder>"}

``train`` appends one line per confidence threshold it tried on the validation block (kind
"validation"); ``evaluate`` appends one line per threshold on the grid, traded at that fixed value
over the pooled test blocks, plus one for the strategy as evaluated (kind "pooled_test").

The deflated Sharpe (``stats.deflated_sharpe_ratio``) then takes

    N = the number of lines for the data set (every kind: each is a configuration someone looked
        at on this market), and
    V = max(sample variance of the per-bar Sharpes of its "pooled_test" lines, 1 / (T - 1)):
        the spread of comparable trials, floored by the sampling variance of a Sharpe estimated
        from T bars (configurations that share one model are correlated and would understate
        the spread of truly independent tries).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from numpyconvnext.jsonable import jsonable

TRIALS_NAME = "trials.jsonl"
TRIALS_ENV = "NUMPYCONVNEXT_TRIALS_LOG"


def default_trials_log() -> Path:
    """``$NUMPYCONVNEXT_TRIALS_LOG`` if set, else ``reports/trials.jsonl`` (relative to the
    working directory, beside the evaluation reports)."""
    return Path(os.environ.get(TRIALS_ENV) or Path("reports") / TRIALS_NAME)


def dataset_key(source: dict) -> str:
    """``SYMBOL|category|interval``: the market a trial looked at (a longer or newer file of the
    same market is the same data set for the purpose of counting tries)."""
    return f"{source.get('symbol', 'data')}|{source.get('category', 'linear')}|{source.get('interval', '')}"


def append_trials(path: str | Path, entries: list[dict]) -> None:
    """Append ``entries`` (each gets a ``time``) as JSON lines, flushed to disk."""
    if not entries:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = "".join(json.dumps({"time": stamp, **jsonable(entry)}) + "\n" for entry in entries)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_trials(path: str | Path, dataset: str | None = None) -> list[dict]:
    """The logged trials (of one data set if given); a missing file is an empty log. A damaged
    line (e.g. a write cut short by a crash) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and (dataset is None or entry.get("dataset") == dataset):
            entries.append(entry)
    return entries


@dataclass(frozen=True)
class TrialCount:
    """N and V of the deflated Sharpe and where they came from."""

    n_trials: int
    variance: float
    logged_variance: float | None
    by_command: dict
    path: str
    dataset: str

    def describe(self, n_obs: int) -> str:
        parts = ", ".join(f"{n} from {command} runs" for command, n in sorted(self.by_command.items()))
        logged = ("no two comparable trials yet" if self.logged_variance is None
                  else f"variance of the logged pooled-test Sharpes {self.logged_variance:.3g}")
        return (f"N = {self.n_trials} trials logged for {self.dataset} in {self.path} ({parts}); "
                f"V = max({logged}, 1/(T-1) = {1.0 / max(n_obs - 1, 1):.3g}) = {self.variance:.3g} "
                f"(per-bar Sharpes, T = {n_obs} bars)")


def count_trials(entries: list[dict], n_obs: int, path: str | Path, dataset: str) -> TrialCount:
    """N and V (see the module docstring) from the logged ``entries`` of one data set."""
    by_command: dict[str, int] = {}
    for entry in entries:
        by_command[entry.get("command", "?")] = by_command.get(entry.get("command", "?"), 0) + 1
    comparable = np.array([e["sharpe_per_bar"] for e in entries if e.get("kind") == "pooled_test"
                           and isinstance(e.get("sharpe_per_bar"), int | float)], dtype=np.float64)
    logged = float(np.var(comparable, ddof=1)) if comparable.size >= 2 else None
    floor = 1.0 / max(n_obs - 1, 1)
    variance = floor if logged is None or not math.isfinite(logged) else max(logged, floor)
    return TrialCount(max(len(entries), 1), variance, logged, by_command, str(path), dataset)
