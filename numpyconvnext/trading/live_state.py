"""What ``live`` remembers between runs: one JSON state file per (model, symbol, interval,
category) in its output folder, rewritten atomically (temp file, fsync, rename) after every
signal, so a restart continues exactly where the last run stopped.

File ``{out}/{model stem}-{8 hex of the model's path}_{SYMBOL}_{category}_{interval}.state.json``::

    {"version": 1,
     "model": "/abs/path/models/run/model.npz", "symbol": "BTCUSDT", "interval": "1h",
     "category": "linear",
     "last_emitted": "2024-05-01T13:00:00Z",   # open time of the newest candle signalled
     "updated_at": "2024-05-01T14:00:03.120Z",
     "paper": null}

``paper`` is the account of ``live --paper`` (``paper.PaperAccount.to_dict()``: cash,
position, equity, open stop, trades), null without one. It lives in the same file as
``last_emitted`` so that applying a candle's fills and recording that candle as done is one
atomic write. Keys this version does not know are
kept as they are on rewrite, so an older program never drops a newer one's fields.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from numpyconvnext.checkpoint import atomic_write

STATE_VERSION = 1
_KNOWN = {"version", "model", "symbol", "interval", "category", "last_emitted", "updated_at",
          "paper"}


class LiveStateError(ValueError):
    """A state file that cannot be used (unreadable, or another run's); one readable line."""


def state_path(out_dir: str | os.PathLike, model_path: str | os.PathLike, symbol: str,
               interval: str, category: str) -> Path:
    """The state file of one (model, symbol, interval, category) in ``out_dir``."""
    model = Path(model_path).resolve()
    tag = hashlib.sha256(str(model).encode()).hexdigest()[:8]
    return Path(out_dir) / f"{model.stem}-{tag}_{symbol.upper()}_{category}_{interval}.state.json"


def iso_utc_ms(stamp: pd.Timestamp) -> str:
    """``2024-05-01T14:00:03.120Z``: a UTC time to the millisecond."""
    return pd.Timestamp(stamp).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class LiveState:
    """One run's memory; ``load`` it, change ``last_emitted`` / ``paper``, ``save`` it."""

    path: Path
    model: str
    symbol: str
    interval: str
    category: str
    last_emitted: pd.Timestamp | None = None
    paper: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: str | os.PathLike, symbol: str,
             interval: str, category: str) -> LiveState:
        """The state at ``path``, or a fresh one when there is no file yet.

        Raises ``LiveStateError`` when the file is unreadable or belongs to another
        (model, symbol, interval, category).
        """
        path = Path(path)
        fresh = cls(path, str(Path(model).resolve()), symbol.upper(), interval, category)
        if not path.exists():
            return fresh
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            last = data.get("last_emitted")
            last = None if last is None else pd.Timestamp(last).tz_convert("UTC")
        except (OSError, ValueError, TypeError) as error:
            raise LiveStateError(f"state file {path} is unreadable ({error}); delete it to "
                                 "start afresh") from None
        if data.get("version", STATE_VERSION) > STATE_VERSION:
            raise LiveStateError(f"state file {path} is version {data['version']}; this program "
                                 f"reads version {STATE_VERSION}")
        mine = {"symbol": fresh.symbol, "interval": interval, "category": category}
        for key, want in mine.items():
            if data.get(key, want) != want:
                raise LiveStateError(f"state file {path} is for {key} {data.get(key)!r}, not "
                                     f"{want!r}")
        fresh.last_emitted = last
        fresh.paper = data.get("paper")
        fresh.extra = {k: v for k, v in data.items() if k not in _KNOWN}
        return fresh

    def to_dict(self, now: pd.Timestamp | None = None) -> dict:
        now = pd.Timestamp.now(tz="UTC") if now is None else now
        return {"version": STATE_VERSION, "model": self.model, "symbol": self.symbol,
                "interval": self.interval, "category": self.category,
                "last_emitted": (None if self.last_emitted is None
                                 else self.last_emitted.strftime("%Y-%m-%dT%H:%M:%SZ")),
                "updated_at": iso_utc_ms(now), "paper": self.paper, **self.extra}

    def save(self, now: pd.Timestamp | None = None) -> None:
        """Write the state atomically: the old file or the whole new one, never a part."""
        text = json.dumps(self.to_dict(now), indent=1, allow_nan=False) + "\n"
        atomic_write(self.path, lambda handle: handle.write(text.encode()))
