"""The feedback join: decision records and their outcomes -> action-model examples.

Decisions and ``decision_outcome`` events are keyed by a shard of their ``decision_id``
(:data:`FEEDBACK_SHARDS` keys ``feedback:<n>``), so a decision and its outcomes meet in one
state whatever identity the visitor has by then. Every shard hears the stream's newest event
time (as the clocks do) and closes its decisions when the watermark (newest minus the allowed
lateness) passes their conversion window (:class:`models.action_labels.DecisionJoin`).

Out: :class:`~dataflows.effects.Examples` for the action models' owners (target
``action:<id>``, learned like churn and propensity), :class:`~dataflows.records.WriteConversion`
for a matched conversion (the contact policy's blackout), and unmatched outcomes as dead letters
with their reason.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any, Final

from bytewax.operators import StatefulBatchLogic

from dataflows import metrics
from dataflows.config import FlowConfig
from dataflows.effects import Examples
from dataflows.erasure import Ack
from dataflows.records import DecisionIn, In, Rejected, WriteConversion
from dataflows.snapshots import dump
from dataflows.steps import RETAIN, Out
from models.action_labels import DecisionJoin
from schemas.events import DecodeError

#: Shards of the join (keys ``feedback:0`` .. ``feedback:15``).
FEEDBACK_SHARDS: Final = 16
_KEYS: Final = tuple(f"feedback:{i}" for i in range(FEEDBACK_SHARDS))


def shard_key(decision_id: str) -> str:
    """The join shard of a decision id (stable across runs and processes).

    >>> shard_key("d-1"), shard_key("d-1") == shard_key("d-1")
    ('feedback:11', True)
    """
    return _KEYS[zlib.crc32(decision_id.encode()) % FEEDBACK_SHARDS]


def key_feedback(item: DecisionIn | In) -> tuple[str, Any]:
    """Key a decision or an outcome event by its decision's shard."""
    if isinstance(item, DecisionIn):
        return shard_key(item.decision.decision_id), ("decision", item)
    return shard_key(item.event.decision_id or ""), ("outcome", item)


def broadcast_time(newest: int) -> list[tuple[str, Any]]:
    """Every shard hears the stream's newest event time."""
    return [(k, ("time", newest)) for k in _KEYS]


def is_outcome(item: In) -> bool:
    """An outcome event (it also goes on to its profile, as activity)."""
    return item.event.type == "decision_outcome"


class FeedbackLogic(StatefulBatchLogic[Any, Out, Any]):
    """One shard of the join (see the module docstring)."""

    def __init__(self, resume: tuple[DecisionJoin, dict[str, In], int] | None,
                 cfg: FlowConfig) -> None:  # fmt: skip
        assert cfg.actions is not None
        self.cfg = cfg
        join, records, newest = resume or (DecisionJoin(dict(cfg.actions.attribution_ms)), {},
                                           -(2**62))  # fmt: skip
        self.join = join
        self.newest = newest
        #: outcome event id -> its record, while the outcome waits (for its dead letter)
        self.records: dict[str, In] = records
        self.conversion_ttl = cfg.actions_keep_ms

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Out], bool]:
        out: list[Out] = []
        notes: list[Any] = []
        for kind, v in values:
            if kind == "time":
                self.newest = max(self.newest, v)
            elif kind == "erase":  # decisions and outcomes of an erased person
                self.join.erase(set(v.forget))
                for event_id, rec in list(self.records.items()):
                    if rec.event.key in v.forget:
                        del self.records[event_id]
                out.append(Ack(v.request_id, v.part))
            elif kind == "decision":
                notes.extend(self.join.decision(v.decision))
            else:
                ev = v.event
                self.records[ev.event_id] = v
                got = self.join.outcome(
                    ev.decision_id, ev.action_id, ev.outcome, ev.ts, ev.event_id
                )
                metrics.OUTCOMES.labels(ev.outcome or "none", self._action(ev.action_id)).inc()
                notes.extend(got)
        examples, expired = self.join.advance(self.newest - self.cfg.lateness_ms)
        notes.extend(expired)
        out.extend(self._effects(notes))
        if examples:
            by_target: dict[str, list[Any]] = {}
            for ex in examples:
                by_target.setdefault(ex.target, []).append(ex)
            out.extend(Examples(t, exs) for t, exs in by_target.items())
        self._trim()
        return out, RETAIN

    def on_eof(self) -> tuple[Iterable[Out], bool]:
        examples, notes = self.join.close_all()
        out: list[Out] = list(self._effects(notes))
        by_target: dict[str, list[Any]] = {}
        for ex in examples:
            by_target.setdefault(ex.target, []).append(ex)
        out.extend(Examples(t, exs) for t, exs in by_target.items())
        return out, RETAIN

    def _action(self, action_id: str | None) -> str:
        """The action as a metric label: a catalogue action, else ``unknown`` (bounded)."""
        assert self.cfg.actions is not None
        return action_id if action_id in self.cfg.actions.ids else "unknown"

    def _effects(self, notes: list[Any]) -> Iterable[Out]:
        for note in notes:
            if note[0] == "conversion":
                _, key, action, ts = note
                yield WriteConversion(key, action, ts, self.conversion_ttl)
                continue
            _, event_id, reason = note
            metrics.OUTCOMES_UNMATCHED.labels(reason).inc()
            item = self.records.pop(event_id, None)
            if item is not None:
                metrics.EVENTS_DEAD_LETTERED.labels(reason).inc()
                yield Rejected(item.record, DecodeError(reason, "see the feedback join's rules"))

    def _trim(self) -> None:
        """Forget the records of outcomes that no longer wait for anything."""
        waiting = {e for outs in self.join.orphans.values() for *_x, e in outs}
        for event_id in [e for e in self.records if e not in waiting]:
            del self.records[event_id]

    def snapshot(self) -> Any:
        if not self.cfg.recovery:
            return None
        return dump((self.join, self.records, self.newest))  # type: ignore[arg-type]
