"""Decode and key: the stateless steps at the head of the flow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dataflows import metrics
from dataflows.erasure import EraseIn
from dataflows.records import (
    DecisionIn,
    In,
    RawRecord,
    Rejected,
    decode_record,
)
from dataflows.steps import Keyed
from features.identity import needs_identity
from schemas.events import DecodeError
from schemas.identifiers import UNSALTED, IdentifierHasher
from schemas.keys import customer_key, device_key, is_device


def make_decoder(
    source_label: str, max_future_ms: int = 0, ids: IdentifierHasher = UNSALTED
) -> Callable[[list[RawRecord]], list[Any]]:
    """Batch decoder that counts what it sees (one call per source batch); identifiers are
    hashed with ``ids``."""
    read_counter = metrics.EVENTS_READ.labels(source_label)

    def decode_batch(batch: list[RawRecord]) -> list[In | DecisionIn | EraseIn | Rejected]:
        out = [decode_record(r, max_future_ms, ids) for r in batch]
        read_counter.inc(len(batch))
        for item in out:
            if isinstance(item, Rejected):
                metrics.EVENTS_DEAD_LETTERED.labels(item.error.reason).inc()
            elif isinstance(item, DecisionIn):
                metrics.DECISIONS_READ.inc()
            elif isinstance(item, EraseIn):
                metrics.ERASURES.labels("read").inc()
            else:
                metrics.EVENTS_ACCEPTED.labels(item.event.type).inc()
        return out

    return decode_batch


def is_erasure(item: Any) -> bool:
    """Branch predicate: an erasure request (see :mod:`dataflows.erasure`)."""
    return isinstance(item, EraseIn)


def is_decision(item: In | DecisionIn | Rejected) -> bool:
    """Branch predicate: a decision record (for the feedback join)."""
    return isinstance(item, DecisionIn)


def decisions_off(item: DecisionIn) -> Rejected:
    """A decision record in a flow without an action catalogue: a dead letter."""
    return Rejected(item.record, DecodeError("decisions_off", "no action catalogue in this flow"))


def is_event(item: In | Rejected) -> bool:
    """Branch predicate: decoded events go on, rejects go to the dead-letter output."""
    return isinstance(item, In)


def key_events(batch: list[In]) -> list[Keyed]:
    """Key each event: ``a:<anonymous_id>`` for the identity step (anonymous-only events and
    login/signup links), ``a:<token>`` for an event with only an email or phone (its token),
    else ``c:<customer_id>``; an event with a ``customer_id`` and identifiers also goes to each
    identifier's key as a claim (:mod:`features.identifiers`). The key also travels in the
    value."""
    out: list[Keyed] = []
    for item in batch:
        ev = item.event
        if needs_identity(ev):
            key = device_key(ev.anonymous_id or "")
        elif ev.customer_id is None:  # only an email or phone: the identifier resolves it
            key = device_key(ev.email or ev.phone or "")
        else:
            key = customer_key(ev.customer_id)
        out.append((key, (key, item)))
        if ev.customer_id is not None:  # a claim of each identifier it carries
            for token in (ev.email, ev.phone):
                if token is not None:
                    claim = device_key(token)
                    out.append((claim, (claim, item)))
    return out


def is_device_item(kv: Keyed) -> bool:
    """Branch predicate: items keyed by device go to the identity step."""
    return is_device(kv[0])
