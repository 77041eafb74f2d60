"""The decision log contract: one record per next-best-action decision served.

Serving writes one :class:`DecisionRecord` per answered request (to the ``decisions`` topic,
keyed by the profile key, or to a JSONL file in embedded mode). The dataflow joins outcomes
(``decision_outcome`` events, :data:`schemas.events.OUTCOME_TYPES`) to it, and off-policy
evaluation reads it: every record carries the candidates with their arbitration terms and the
probability with which the logging policy would have served each of them, so any other policy
can be evaluated from the log alone.

``ts`` is the time the decision was made *as of* (the request's ``as_of`` or the wall clock),
RFC 3339 UTC on the wire, epoch milliseconds in the struct.

Examples
--------
>>> c = Candidate(action_id="free_shipping", propensity=0.05, source="prior", value=8.0,
...               weight=1.0, priority=0.4, probability=0.9)
>>> r = DecisionRecord(decision_id="d-1", ts=1767323045000, key="c:42", customer_id="42",
...                    channel="web", policy="epsilon_greedy", epsilon=0.1,
...                    served="free_shipping", served_probability=0.9, selection="greedy",
...                    candidates=[c], features={"log_purchases_total": 0.69})
>>> line = encode_decision(r)
>>> line[:60]
b'{"decision_id":"d-1","ts":"2026-01-02T03:04:05Z","key":"c:42'
>>> decode_decision(line) == r
True
>>> decode_decision(b'{"decision_id": 3}')  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
schemas.decisions.DecisionDecodeError: not a decision record: Expected `str`, got `int` ...
"""

from __future__ import annotations

from typing import Final

import msgspec

from schemas.events import format_ts, parse_ts

#: How a served action was selected: the policy's best, an exploration draw, or the channel's
#: fallback (nothing eligible, or the decision degraded).
SELECTIONS: Final = ("greedy", "exploration", "fallback", "none")
#: Where a candidate's propensity came from.
PROPENSITY_SOURCES: Final = ("model", "prior")


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """One eligible action with its arbitration terms: ``priority`` = ``propensity`` x
    ``value`` x ``weight``; ``probability``: the chance the logging policy serves it first."""

    action_id: str
    propensity: float
    source: str
    value: float
    weight: float
    priority: float
    probability: float


class DecisionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One decision as logged (see the module docstring).

    ``candidates`` are ranked by priority (highest first); ``served`` is the action shown first
    (``None`` when nothing was eligible and the channel has no fallback);
    ``served_probability`` the probability it had under the policy (1.0 for a fallback);
    ``features`` the model inputs the propensities were computed from (the join uses these,
    never later state); ``model_versions`` the action models' versions (absent: the prior).
    """

    decision_id: str
    ts: int
    key: str
    channel: str
    policy: str
    epsilon: float
    served: str | None
    served_probability: float
    selection: str
    candidates: list[Candidate]
    features: dict[str, float]
    customer_id: str | None = None
    anonymous_id: str | None = None
    model_versions: dict[str, int] = msgspec.field(default_factory=dict)
    degraded: bool = False
    reason: str | None = None
    catalog: str = ""
    type: str = "decision"


class DecisionDecodeError(ValueError):
    """Bytes that are not a decision record."""


_ENCODER: Final = msgspec.json.Encoder()


def encode_decision(r: DecisionRecord) -> bytes:
    """One JSON line (no newline) of a record, ``ts`` as RFC 3339 UTC."""
    d = msgspec.to_builtins(r)
    d["ts"] = format_ts(r.ts)
    out: bytes = _ENCODER.encode(d)
    return out


def decode_decision(data: bytes | str) -> DecisionRecord:
    """A record from its JSON (``ts`` RFC 3339 or epoch ms); :class:`DecisionDecodeError` when
    it is not one."""
    try:
        raw = msgspec.json.decode(data)
        if isinstance(raw, dict) and isinstance(raw.get("ts"), str | int):
            ts = parse_ts(raw["ts"])
            if ts is None:
                raise DecisionDecodeError(f"not a decision record: bad ts {str(raw['ts'])[:40]!r}")
            raw["ts"] = ts
        rec = msgspec.convert(raw, DecisionRecord)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecisionDecodeError(f"not a decision record: {exc}") from None
    if rec.type != "decision":
        raise DecisionDecodeError(f"not a decision record: type {rec.type[:40]!r}")
    return rec
