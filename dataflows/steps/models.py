"""The model owners: one per target, learning in a canonical order."""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.operators import StatefulBatchLogic

from dataflows import metrics
from dataflows.config import FlowConfig
from dataflows.erasure import Ack
from dataflows.records import (
    WriteCheckpoint,
)
from dataflows.snapshots import NEVER, Held, ModelSnapshot, dump
from dataflows.steps import RETAIN, Out
from dataflows.steps.clock import CLOCK_SHARDS
from models import labels as lb
from models.action_labels import ACTION_TARGET
from models.online import OnlineModel

#: A day more than a label takes to mature after its label time (the label horizons' watermark
#: lag: the allowed lateness plus two days; see :func:`label_timers` and
#: :func:`models.labels.on_idle`).
RELEASE_MARGIN_MS = lb.DAY_MS


def release_lag_ms(cfg: FlowConfig) -> int:
    """How far behind the customer clock's watermark the model step learns: every example whose
    label time is older has arrived, so they are learned in one canonical order, whatever the
    batching or the number of processes. (Three days with the default lateness; it grows with
    ``NEXTBEST_ALLOWED_LATENESS``, since labels mature that much later.)

    >>> from nextbest.settings import Settings
    >>> release_lag_ms(Settings.from_env({}).flow_config()) / lb.DAY_MS
    3.0069444444444446
    """
    return cfg.horizons.watermark_lag_ms + RELEASE_MARGIN_MS


class ModelLogic(StatefulBatchLogic[Any, Out, Any]):
    """The one owner of a target's online model: learns every matured example (progressive
    validation: scored before learned) and checkpoints every N examples or T seconds.

    Examples are held until the customer clock's watermark (``("time", (shard, watermark))``
    items, see :class:`ClockLogic`; the slowest of its shards, once every shard has reported) is
    :func:`release_lag_ms` past their label time, then learned sorted
    by (label time, customer, snapshot time); the end of the input releases the rest. So the model
    is the same however the stream was batched: a replay learns what living through it learned.
    An example that comes after its place was passed (only if the watermark was wrong) is learned
    with the next release and counted in ``nextbest_model_examples_out_of_order_total``.
    """

    def __init__(self, resume: ModelSnapshot | None, cfg: FlowConfig) -> None:
        # The builder does not learn its key: the model is made for the first example's target.
        snap = resume or ModelSnapshot()
        self.model: OnlineModel | None = snap.model
        self.version = snap.checkpoint_version
        self.since = snap.since
        self.newest_label_ts = snap.newest_label_ts
        self.held: list[Held] = snap.held  # a heap
        self.released_to = snap.released_to
        self.told = snap.told
        self.cfg = cfg
        self.release_lag = release_lag_ms(cfg)
        self.last_checkpoint = time.monotonic()

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Out], bool]:
        republish = False
        erased: list[Out] = []
        told = self.told
        for kind, v in values:
            if kind == "time":  # a clock shard's watermark
                shard, wm = v
                if wm > told.get(shard, NEVER):
                    told[shard] = wm
            elif kind == "reproject":  # Redis lost the checkpoint
                republish = True
            elif kind == "erase":  # examples of an erased person still waiting for their turn
                keys = set(v.forget)
                self.held = [h for h in self.held if h[1] not in keys]
                heapq.heapify(self.held)
                erased.append(Ack(v.request_id, v.part))
            else:
                late = sum(1 for e in v if e.label_ts < self.released_to)
                if late:
                    metrics.EXAMPLES_OUT_OF_ORDER.inc(late)
                for e in v:
                    heapq.heappush(self.held, (e.label_ts, e.key, e.snapshot_ts, lb.Tied(e)))
        if len(told) == CLOCK_SHARDS:
            bound = min(told.values()) - self.release_lag
            if bound > self.released_to:
                self.released_to = bound
        out = self._learn(self.released_to)
        if republish and not out:
            out = self._checkpoint()
        return [*out, *erased], RETAIN

    def _learn(self, bound: int | None) -> list[Out]:
        """Learn the held examples with label time before ``bound`` (all with ``None``)."""
        held = self.held
        ready: list[lb.Example] = []
        while held and (bound is None or held[0][0] < bound):
            ready.append(heapq.heappop(held)[3].example)
        if ready:
            if self.model is None:
                target = ready[0].target
                actions = self.cfg.actions
                least = self.cfg.model_min_examples
                if actions is not None and target.startswith(ACTION_TARGET):
                    least = actions.min_outcomes
                self.model = OnlineModel(target, self.cfg.model_pipeline, min_examples=least)
            for ex in ready:
                self.model.learn(ex)
                self.newest_label_ts = max(self.newest_label_ts, ex.label_ts)
            self.since += len(ready)
            metrics.EXAMPLES.labels(self.model.target).inc(len(ready))
        due = time.monotonic() - self.last_checkpoint >= self.cfg.checkpoint_interval_ms / 1000
        if self.since and (self.since >= self.cfg.checkpoint_every or due or bound is None):
            return self._checkpoint()
        return []

    def notify_at(self) -> datetime | None:
        if not self.since:
            return None
        wait = self.last_checkpoint + self.cfg.checkpoint_interval_ms / 1000 - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=max(wait, 0.0))

    def on_notify(self) -> tuple[Iterable[Out], bool]:
        return (self._checkpoint() if self.since else []), RETAIN

    def on_eof(self) -> tuple[Iterable[Out], bool]:
        return self._learn(None), RETAIN

    def _checkpoint(self) -> list[Out]:
        if self.model is None:
            return []
        self.version += 1
        self.since = 0
        self.last_checkpoint = time.monotonic()
        data = self.model.to_checkpoint(self.version, self.newest_label_ts)
        snap = self.model.metrics_snapshot()
        for name in ("roc_auc", "log_loss", "brier"):
            if snap.get(name) is not None:
                metrics.MODEL_METRIC.labels(self.model.target, name).set(snap[name])
        metrics.MODEL_DRIFTS.labels(self.model.target).set(snap.get("drifts", 0))
        return [WriteCheckpoint(self.model.target, self.version, data)]

    def snapshot(self) -> Any:
        if not self.cfg.recovery:
            return None
        return dump(ModelSnapshot(self.model, self.version, self.since, self.newest_label_ts,
                                  self.held, self.released_to, self.told))  # fmt: skip
