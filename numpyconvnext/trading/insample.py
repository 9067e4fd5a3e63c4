"""Which decisions a checkpoint has already seen: its training and validation spans.

A part (train or validation) of a run is a range of window ends ``[first, last]``. The model
read the bars ``first - (window - 1) .. last`` as inputs and the bars up to ``last + horizon``
through the labels, so in time its span is

    [first_time - (window - 1) bars,  last_time + horizon bars]

A decision whose bar falls inside a span is IN-SAMPLE: the model (or its calibration, chosen on
the validation block) was fitted on that very stretch of prices, so its results there say
nothing about how it trades on new data. The recorded test period starts a purge gap of
window + horizon bars after the validation windows and is never inside a span.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from numpyconvnext.data.intervals import interval_to_timedelta

PARTS = {"train": "training", "val": "validation"}


@dataclass(frozen=True)
class Overlap:
    """Decisions of a run inside one part's span: the part and the first and last such bar."""

    part: str
    first: pd.Timestamp
    last: pd.Timestamp
    decisions: int

    def describe(self) -> str:
        return (f"{PARTS.get(self.part, self.part)} {self.first:%Y-%m-%d %H:%M} .. "
                f"{self.last:%Y-%m-%d %H:%M} ({self.decisions} decisions)")


def training_spans(metadata: dict) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """``{part: (start, end)}`` in time for the checkpoint's train and validation parts (see the
    module docstring); empty when the checkpoint records no split."""
    split = metadata.get("split") or {}
    prep = metadata.get("preprocessing") or {}
    interval = metadata.get("interval")
    if not split or not interval or "window" not in prep:
        return {}
    step = interval_to_timedelta(interval)
    window = int(prep["window"])
    horizon = int((prep.get("label_config") or {}).get("horizon", 0))
    spans = {}
    for part in PARTS:
        bounds = split.get(part)
        if bounds:
            spans[part] = (pd.Timestamp(bounds["first_time"]) - (window - 1) * step,
                           pd.Timestamp(bounds["last_time"]) + horizon * step)
    return spans


def in_sample_mask(metadata: dict, times: pd.DatetimeIndex) -> np.ndarray:
    """True for every time inside a train or validation span."""
    stamps = pd.DatetimeIndex(times)
    mask = np.zeros(len(stamps), dtype=bool)
    for start, end in training_spans(metadata).values():
        mask |= np.asarray((stamps >= start) & (stamps <= end))
    return mask


def in_sample_overlaps(metadata: dict, decision_times: pd.DatetimeIndex) -> list[Overlap]:
    """The parts whose spans hold some of ``decision_times``, with the overlapping range."""
    stamps = pd.DatetimeIndex(decision_times)
    out = []
    for part, (start, end) in training_spans(metadata).items():
        inside = stamps[(stamps >= start) & (stamps <= end)]
        if len(inside):
            out.append(Overlap(part, inside[0], inside[-1], len(inside)))
    return out


def first_out_of_sample_time(metadata: dict) -> pd.Timestamp | None:
    """The first bar time after every span (the validation span's end + 1 bar), or None."""
    spans = training_spans(metadata)
    if not spans:
        return None
    return max(end for _, end in spans.values()) + interval_to_timedelta(metadata["interval"])


def banner(overlaps: list[Overlap]) -> str:
    """The IN-SAMPLE warning line, or "" when nothing overlaps."""
    if not overlaps:
        return ""
    return ("IN-SAMPLE: decisions overlap the model's " + "; ".join(o.describe() for o in overlaps)
            + " - the model was fitted on these bars, so these figures are not out-of-sample")
