"""The RFM owner: the population histograms and their boundaries."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import astuple
from typing import Any

from bytewax.operators import StatefulBatchLogic
from msgspec.structs import replace

from dataflows import metrics
from dataflows.config import FlowConfig
from dataflows.records import (
    Reproject,
    WriteBoundaries,
)
from dataflows.snapshots import RfmSnapshot, dump
from dataflows.steps import RETAIN, Out
from features.rfm import RfmPoint
from models.btyd import BgNbdParams
from models.btyd_histories import DAY_MS, Histories

log = logging.getLogger(__name__)


def _history(p: RfmPoint | None) -> tuple[int, int, int] | None:
    """A point's buy-till-you-die history at day resolution: (purchases, first day, last day)."""
    if p is None:
        return None
    first = p.last_purchase_ts if p.first_ts is None else min(p.first_ts, p.last_purchase_ts)
    return p.frequency, first // DAY_MS, p.last_purchase_ts // DAY_MS


class RfmLogic(StatefulBatchLogic[Any, Out, Any]):
    """The one owner of the customer population: publishes the RFM quintile boundaries as
    customers change and, once per day of event time (the newest purchase's day), fits the
    buy-till-you-die model (:mod:`models.btyd`, BG/NBD) on every customer's purchase history and
    publishes its parameters with the boundaries."""

    def __init__(self, resume: RfmSnapshot | None, cfg: FlowConfig) -> None:
        snap = resume or RfmSnapshot()
        self.population, self.pending, self.newest = snap.population, snap.pending, snap.newest
        # (absent in a snapshot from before: start empty)
        self.histories: Histories = getattr(snap, "histories", None) or Histories()
        self.btyd: BgNbdParams | None = getattr(snap, "btyd", None)
        self.btyd_day: int | None = getattr(snap, "btyd_day", None)
        self.cfg = cfg

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Out], bool]:
        republish = False
        for value in values:
            if isinstance(value, Reproject):  # Redis lost the boundaries
                republish = True
                continue
            old, new = value
            self.pending += 1
            try:
                self.population.update(old, new)
            except ValueError:  # a removal the population never saw: count it, go on
                metrics.RFM_INCONSISTENT.inc()
                continue
            self.histories.update(_history(old), _history(new))
            if new is not None and new.last_purchase_ts > self.newest:
                self.newest = new.last_purchase_ts
        if self._fit_if_a_day_passed():
            republish = True
        if self.pending >= self.cfg.rfm_publish_every or republish:
            return self._publish(), RETAIN
        return [], RETAIN

    def _fit_if_a_day_passed(self) -> bool:
        """Fit the population as of the newest purchase's day, once per day."""
        day = self.newest // DAY_MS
        if self.newest <= 0 or (self.btyd_day is not None and day <= self.btyd_day):
            return False
        t0 = time.perf_counter()
        try:
            params = self.histories.fit_at(day, init=self.btyd)
        except (ValueError, ArithmeticError) as exc:  # a numerical corner: keep the last fit
            log.warning("buy-till-you-die fit as of day %d failed (%s): keeping the last", day, exc)
            metrics.BTYD_FIT_FAILURES.inc()
            params = None
        metrics.BTYD_FIT_SECONDS.set(time.perf_counter() - t0)
        self.btyd_day = day
        if params is None:
            return False
        metrics.BTYD_FITS.inc()
        self.btyd = params
        return True

    def on_eof(self) -> tuple[Iterable[Out], bool]:
        return (self._publish() if self.pending else []), RETAIN

    def _publish(self) -> list[Out]:
        self.pending = 0
        b = self.population.boundaries(computed_at_ms=self.newest)
        if b is None:
            return []
        if self.btyd is not None:
            b = replace(b, btyd=astuple(self.btyd), btyd_day=self.btyd_day)
        return [WriteBoundaries(b.encode())]

    def snapshot(self) -> Any:
        if not self.cfg.recovery:
            return None
        return dump(RfmSnapshot(self.population, self.pending, self.newest, 1, self.histories,
                                self.btyd, self.btyd_day))  # fmt: skip
