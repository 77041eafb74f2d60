"""The identity step: one device, its links, its anonymous profile, routing; or one identifier
(email or phone token, keyed ``a:<token>``), its claims, its own profile, routing to its owner,
conflicts (:mod:`features.identifiers`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bytewax.operators import StatefulBatchLogic

from dataflows import metrics
from dataflows.config import FlowConfig
from dataflows.effects import Route
from dataflows.erasure import Ack, Erase
from dataflows.records import (
    DropProfile,
    Handover,
    IdentifierNote,
    LinkDevice,
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
from features import identifiers as ids
from features.identity import DeviceState, on_event
from schemas.identifiers import is_token, kind_of
from schemas.keys import customer_key, device_key, entity_id


class DeviceLogic(Debounced, StatefulBatchLogic[Any, Out, Any]):
    """Identity step for one device: links, the anonymous profile, routing to customers."""

    def __init__(self, resume: DeviceSnapshot | None, cfg: FlowConfig) -> None:
        self.state: DeviceState | ids.IdentifierState | None
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
        for key, item in values:
            if isinstance(item, Reproject):
                out.extend(self._projection())
                continue
            if isinstance(item, Tick):
                st = self.state
                if st is not None and st.last_ts + self.cfg.retention_ms <= item.watermark:
                    metrics.PROFILES_DROPPED.inc()
                    return [*out, DropProfile(device_key(self._id))], DISCARD
                continue
            if isinstance(item, Erase):  # forget the device (identifier); later events start anew
                kept = self._erase(item, key, out)
                out.append(Ack(item.request_id, item.part))
                metrics.ERASURES.labels("applied").inc()
                if not kept:
                    self.state, self.dirty, anon_changed = None, False, False
                continue
            ev = item.event
            if self.state is None:
                self.state = self._new(key)
            st = self.state
            cfg = self.cfg
            if isinstance(st, DeviceState):
                actions = on_event(st, ev, cfg.lateness_ms, cfg.traits, cfg.consent)
            else:
                actions = ids.on_event(st, ev, cfg.lateness_ms, cfg.traits, cfg.consent)
            for action in actions:
                kind = action[0]
                if kind == "customer":
                    out.append(Route(customer_key(action[1]), item))
                elif kind == "merge":
                    handover = Handover(action[2], item.record.position, ev.ts, item.stream_wm)
                    out.append(Route(customer_key(action[1]), handover))
                elif kind == "link":
                    out.append(WriteLink(self._id, action[1]))
                elif kind == "conflict":
                    _, owner, claimants, new = action
                    if new:
                        metrics.IDENTIFIER_CONFLICTS.labels(kind_of(self._id)).inc()
                    note = IdentifierNote(self._id, owner, claimants, item.record.position)
                    out.extend(Route(customer_key(c), note) for c in claimants)
                elif kind == "anon_changed":
                    anon_changed = True
                elif kind == "late":
                    out.append(late(item))
                elif kind == "duplicate":
                    metrics.DUPLICATES.inc()
                elif kind == "no_consent":
                    metrics.EVENTS_DROPPED.labels("no_consent").inc()
        if anon_changed:
            self.dirty = True
        out.extend(self.flush(force=False))
        # (only ticks or a re-projection for a device with no state: nothing to keep)
        return out, RETAIN if self.state is not None else DISCARD

    def _erase(self, item: Erase, key: str, out: list[Out]) -> bool:
        """Forget the device, or the identifier if the erased customer owns it (its other
        claimants forget the conflict: it names the erased customer); an identifier someone
        else owns only loses the erased customer's claim. True when the state stays."""
        st = self.state
        erased = {k[2:] for k in item.forget if k.startswith("c:")}
        if isinstance(st, ids.IdentifierState) and st.owner is not None and st.owner not in erased:
            st.claims = [c for c in st.claims if c.customer_id not in erased]
            claimants = st.claimants if len(st.claims) > 1 else ()
            note = IdentifierNote(st.token, st.owner if claimants else "", claimants, item.position)
            out.extend(Route(customer_key(c.customer_id), note) for c in st.claims)
            return True
        if isinstance(st, ids.IdentifierState):
            note = IdentifierNote(st.token, "", (), item.position)
            out.extend(Route(customer_key(c.customer_id), note) for c in st.claims
                       if c.customer_id not in erased)  # fmt: skip
        out.append(DropProfile(key))
        return False

    @property
    def _id(self) -> str:
        """The anonymous id or identifier token."""
        st = self.state
        assert st is not None
        return st.anonymous_id if isinstance(st, DeviceState) else st.token

    @staticmethod
    def _new(key: str) -> DeviceState | ids.IdentifierState:
        name = entity_id(key)
        if is_token(name):
            metrics.PROFILES_CREATED.labels("identifier").inc()
            return ids.IdentifierState(name)
        metrics.PROFILES_CREATED.labels("anonymous").inc()
        return DeviceState(name)

    def _projection(self) -> list[Out]:
        """What Redis holds for the device (identifier): its link (owner), else its own
        profile."""
        st = self.state
        if st is None:
            return []
        if isinstance(st, ids.IdentifierState):
            if st.owner is not None:
                every = sorted({c.customer_id for c in st.claims})
                return [WriteLink(st.token, st.owner), *(LinkDevice(c, st.token) for c in every)]
        elif st.links:
            every = sorted({link.customer_id for link in st.links})
            return [WriteLink(st.anonymous_id, st.links[-1].customer_id),
                    *(LinkDevice(c, st.anonymous_id) for c in every)]  # fmt: skip
        self.dirty = True
        return self.flush(force=True)

    def snapshot(self) -> Any:
        return dump(DeviceSnapshot(self.state, self.dirty)) if self.cfg.recovery else None
