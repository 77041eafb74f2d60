"""The identity step: one device, its links, its anonymous profile, routing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bytewax.operators import StatefulBatchLogic

from dataflows import metrics
from dataflows.config import FlowConfig
from dataflows.effects import Route
from dataflows.records import (
    DropProfile,
    Handover,
    Reproject,
    SinkOp,
    Tick,
    WriteLink,
    WriteProfile,
    late,
)
from dataflows.snapshots import DeviceSnapshot, dump
from dataflows.steps import DISCARD, RETAIN, Out
from dataflows.steps.debounce import Debounced
from dataflows.steps.profile import arrival_order
from features.identity import DeviceState, on_event
from schemas.keys import customer_key, device_key


class DeviceLogic(Debounced, StatefulBatchLogic[Any, Out, Any]):
    """Identity step for one device: links, the anonymous profile, routing to customers."""

    def __init__(self, resume: DeviceSnapshot | None, cfg: FlowConfig) -> None:
        self.state: DeviceState | None
        snap = resume or DeviceSnapshot(None)
        self.state, self.dirty = snap.state, snap.dirty
        self.cfg = cfg
        self.interval = cfg.write_interval_ms / 1000

    def pending_write(self) -> SinkOp | None:
        anon = self.state.anon if self.state is not None else None
        return None if anon is None else WriteProfile(anon.key, anon)

    def on_batch(self, values: list[tuple[str, Any]]) -> tuple[Iterable[Out], bool]:
        values.sort(key=lambda kv: arrival_order(kv[1]))
        out: list[Out] = []
        anon_changed = False
        for _, item in values:
            if isinstance(item, Reproject):
                out.extend(self._projection())
                continue
            if isinstance(item, Tick):
                st = self.state
                if st is not None and st.last_ts + self.cfg.retention_ms <= item.watermark:
                    metrics.PROFILES_DROPPED.inc()
                    return [*out, DropProfile(device_key(st.anonymous_id))], DISCARD
                continue
            ev = item.event
            if self.state is None:
                self.state = DeviceState(ev.anonymous_id or "")
                metrics.PROFILES_CREATED.labels("anonymous").inc()
            for action in on_event(self.state, ev, self.cfg.lateness_ms):
                kind = action[0]
                if kind == "customer":
                    out.append(Route(customer_key(action[1]), item))
                elif kind == "merge":
                    handover = Handover(action[2], item.record.position, ev.ts, item.stream_wm)
                    out.append(Route(customer_key(action[1]), handover))
                elif kind == "link":
                    out.append(WriteLink(self.state.anonymous_id, action[1]))
                elif kind == "anon_changed":
                    anon_changed = True
                elif kind == "late":
                    out.append(late(item))
                elif kind == "duplicate":
                    metrics.DUPLICATES.inc()
        if anon_changed:
            self.dirty = True
        out.extend(self.flush(force=False))
        # (only ticks or a re-projection for a device with no state: nothing to keep)
        return out, RETAIN if self.state is not None else DISCARD

    def _projection(self) -> list[Out]:
        """What Redis holds for the device: its link, else its anonymous profile."""
        st = self.state
        if st is None:
            return []
        if st.links:
            return [WriteLink(st.anonymous_id, st.links[-1].customer_id)]
        self.dirty = True
        return self.flush(force=True)

    def snapshot(self) -> Any:
        return dump(DeviceSnapshot(self.state, self.dirty)) if self.cfg.recovery else None
