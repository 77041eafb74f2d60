"""The quality of an online model as it learns: rolling metrics, drift, history.

Metrics: over a rolling window of the last ``window`` (default 1000) scored examples, the exact
ROC AUC, log loss and Brier score (:mod:`models.evaluation`), plus cumulative counts (examples,
positives, negatives). The absolute error ``|y - p|`` of each scored example feeds an ADWIN
drift detector, a label day at a time: the errors of the examples whose ``label_ts`` falls in a
UTC day are given, in customer order (key, snapshot time), when the first label of a later day
arrives. (Labels come in bursts within a day: purchases resolve positives as they happen, the
horizon matures negatives at day ticks; in arrival order ADWIN saw that mix as hundreds of
"drifts" a year.) A day in which ADWIN detects a *rise* of the mean error (it also flags drops,
e.g. while the model learns: those are ignored) increments ``drifts``, is logged, and is recorded
as ``(examples_seen, label_ts)`` of the example that closed the day (the last 50 are kept).
Every ``history_every`` examples a metrics snapshot is appended to a history of the last 50.

:class:`ModelQuality` is the part of :class:`models.online.OnlineModel` that keeps them (a base
class: its state is the model's own attributes, so pickles and checkpoints are those of the
model); the model's learning, scoring and checkpoints are in :mod:`models.online`.
"""

from __future__ import annotations

import logging
import zlib
from collections import deque
from typing import Any, Final

import numpy as np

from models.evaluation import brier, log_loss, roc_auc
from models.labels import DAY_MS as _DAY_MS
from models.labels import Example

#: Logged as the model (``models.online``), as before this module was split from it.
log = logging.getLogger("models.online")

HISTORY_LEN: Final = 50
#: Probabilities are clipped to this for the metrics (a finite log loss).
_EPS: Final = 1e-7


#: Keys of a metric snapshot (and of each history entry).
_HISTORY_KEYS: Final = (
    "examples_seen",
    "positives",
    "negatives",
    "label_ts",
    "window",
    "roc_auc",
    "log_loss",
    "brier",
    "drifts",
)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


class ModelQuality:
    """Rolling metrics and the label-day drift detector of an online model (a base class of
    :class:`models.online.OnlineModel`, which creates the attributes below)."""

    target: str
    pipeline: str
    examples_seen: int
    positives: int
    negatives: int
    last_label_ts: int | None
    drifts: int
    drift_events: deque[tuple[int, int]]
    _recent: deque[tuple[int, float]]
    _detector: Any
    _error_day: int | None
    _day_errors: list[tuple[int, int, float]]

    def _track_error(self, error: float, example: Example) -> None:
        """Keep an error with its label day; a later day feeds the open one to the detector."""
        day = example.label_ts // _DAY_MS
        if self._error_day is not None and day > self._error_day:
            self._close_error_day(example.label_ts)
        if self._error_day is None or day > self._error_day:
            self._error_day = day
        # (a label of an earlier day than the open one joins the open day; the customer is kept
        # as a hash of its key, only to order the day: the model holds no id, which an erasure
        # could not reach in a published checkpoint)
        self._day_errors.append((zlib.crc32(example.key.encode()), example.snapshot_ts, error))

    def _close_error_day(self, label_ts: int) -> None:
        detector = self._detector
        drifted = False
        # in customer order, not arrival order: positives and negatives mixed as they are
        # (a snapshot from before the hash held the key itself)
        day = [(zlib.crc32(k.encode()) if isinstance(k, str) else k, t, e)
               for k, t, e in self._day_errors]  # fmt: skip
        for _key, _ts, error in sorted(day):
            before = detector.estimation
            detector.update(error)
            # ADWIN flags any change of the mean error; a drop (the model got better, as it does
            # while it learns) is not a drift worth an alarm
            drifted |= bool(detector.drift_detected and detector.estimation > before)
        self._day_errors = []
        if drifted:
            self.drifts += 1
            self.drift_events.append((self.examples_seen, label_ts))
            log.info(
                "drift detected: model=%s pipeline=%s examples_seen=%d label_ts=%d",
                self.target,
                self.pipeline,
                self.examples_seen,
                label_ts,
            )

    def _metrics(self) -> dict[str, Any]:
        auc = ll = bs = None
        if self._recent:
            arr = np.asarray(self._recent, dtype=np.float64)
            y, p = arr[:, 0], np.clip(arr[:, 1], _EPS, 1.0 - _EPS)
            if 0 < y.sum() < y.size:
                auc = roc_auc(y, p)
            ll = log_loss(y, p)
            bs = brier(y, p)
        return {
            "examples_seen": self.examples_seen,
            "positives": self.positives,
            "negatives": self.negatives,
            "label_ts": self.last_label_ts,
            "window": len(self._recent),
            "roc_auc": _round(auc),
            "log_loss": _round(ll),
            "brier": _round(bs),
            "drifts": self.drifts,
        }
