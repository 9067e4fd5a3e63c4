"""A small progress bar on stderr: redraws in place on a terminal, prints a line now and then
when piped (so logs stay readable). The library reports progress through it; `quiet` silences it.
"""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """`with ProgressBar(total, label) as bar: bar.update(n, loss="0.71")`."""

    def __init__(self, total: int, label: str = "", quiet: bool = False, stream=None,
                 width: int = 28, log_every_s: float = 10.0):
        self.total = max(int(total), 1)
        self.label = label
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.width = width
        self.done = 0
        self.fields: dict[str, str] = {}
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_every_s = log_every_s
        self._last_log = 0.0
        self.started = time.perf_counter()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, **fields) -> None:
        self.done = min(self.done + n, self.total)
        self.fields.update({k: str(v) for k, v in fields.items()})
        now = time.perf_counter()
        if self.quiet:
            return
        if self.interactive:
            self.stream.write("\r" + self._line())
            self.stream.flush()
        elif now - self._last_log >= self.log_every_s or self.done == self.total:
            self._last_log = now
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def _line(self) -> str:
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        extra = "  ".join(f"{k} {v}" for k, v in self.fields.items())
        return f"{self.label} [{bar}] {self.done}/{self.total}  {extra}".rstrip()

    def close(self) -> None:
        if self.interactive and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
