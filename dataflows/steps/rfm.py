"""The RFM owner: the population histograms and their boundaries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bytewax.operators import StatefulBatchLogic

from dataflows import metrics
from dataflows.config import FlowConfig
from dataflows.records import (
    Reproject,
    WriteBoundaries,
)
from dataflows.snapshots import RfmSnapshot, dump
from dataflows.steps import RETAIN, Out


class RfmLogic(StatefulBatchLogic[Any, Out, Any]):
    """The one owner of the RFM population: publishes quintile boundaries as customers change."""

    def __init__(self, resume: RfmSnapshot | None, cfg: FlowConfig) -> None:
        snap = resume or RfmSnapshot()
        self.population, self.pending, self.newest = snap.population, snap.pending, snap.newest
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
            if new is not None and new.last_purchase_ts > self.newest:
                self.newest = new.last_purchase_ts
        if self.pending >= self.cfg.rfm_publish_every or republish:
            return self._publish(), RETAIN
        return [], RETAIN

    def on_eof(self) -> tuple[Iterable[Out], bool]:
        return (self._publish() if self.pending else []), RETAIN

    def _publish(self) -> list[Out]:
        self.pending = 0
        b = self.population.boundaries(computed_at_ms=self.newest)
        return [] if b is None else [WriteBoundaries(b.encode())]

    def snapshot(self) -> Any:
        if not self.cfg.recovery:
            return None
        return dump(RfmSnapshot(self.population, self.pending, self.newest))
