"""Segment membership as a pure state machine in event time: evaluate, step, advance.

Per customer and segment a :class:`Membership` record: ``member`` and ``since`` (when it
entered), or, for a segment with ``min_duration``, ``pending`` (since when its entry condition
has held without a break). Given the record and the rules' truths at an event time ``t``,
:func:`step` returns the new record and the transition, if any:

- a member **exits** at ``t`` when the exit rule holds (no exit rule: when the entry rule does
  not hold);
- a non-member's entry condition is "the entry rule holds and the exit rule does not" (so
  overlapping rules never flap); without ``min_duration`` it **enters** at ``t``; with one the
  record becomes pending at ``t`` and it enters at ``pending + min_duration`` once a step at or
  after that time finds the condition still true (a step finding it false clears ``pending``).
  For exact times the caller steps at every flip time (:func:`features.segments.flips.next_flip`).

:func:`advance` steps every segment in evaluation order on one profile document, so a rule
``{segment: X}`` reads X's membership as of the same time. Deterministic: no wall clock.

Examples
--------
>>> from features.segments.config import parse_segments
>>> s = parse_segments('''
... segments:
...   - name: at_risk
...     description: churn high
...     entry: {feature: score.churn, op: ge, value: 0.7}
...     exit: {feature: score.churn, op: lt, value: 0.6}
... ''')
>>> doc = lambda p: {"scores": {"churn": {"probability": p}}}
>>> m, out = advance(s, doc(0.75), {}, at=1_000)
>>> m["at_risk"], [(t.direction, t.at) for t in out]
(Membership(member=True, since=1000, pending=None), [('entered', 1000)])
>>> advance(s, doc(0.65), m, at=2_000)[1]           # hysteresis: still a member
[]
>>> m, out = advance(s, doc(0.55), m, at=3_000)
>>> m, out[0].direction, out[0].reason["rule"], out[0].reason["values"]
({}, 'exited', 'exit', {'score.churn': 0.55})
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

from features.segments.catalog import read
from features.segments.config import Segment, SegmentSet
from features.segments.rules import Rule, features_of, holds, segments_of

Direction = Literal["entered", "exited"]
ENTERED: Final = "entered"
EXITED: Final = "exited"


@dataclass(frozen=True, slots=True)
class Membership:
    """One customer's record for one segment (the absent record is ``Membership()``)."""

    member: bool = False
    #: when it entered (members)
    since: int | None = None
    #: since when the entry condition has held, waiting for ``min_duration`` (non-members)
    pending: int | None = None


NOT_MEMBER: Final = Membership()


@dataclass(frozen=True, slots=True)
class Transition:
    """An entry or exit at event time ``at``; ``reason``: the rule that decided (``"entry"`` or
    ``"exit"``), its text (``condition``) and the ``values`` of every feature and segment
    membership the segment's rules read, as of the evaluation."""

    segment: str
    direction: Direction
    at: int
    reason: dict[str, Any]


class Decision(NamedTuple):
    """The truths of one segment's rules on one document (``exit`` ``None``: no exit rule) and
    the values they read."""

    entry: bool
    exit: bool | None
    values: dict[str, Any]


def transition_id(customer: str, segment: str, direction: str, at: int) -> str:
    """Deterministic id of a transition (32 hex digits), equal across replays and resumes.

    >>> transition_id("c:42", "at_risk", "entered", 1_000)
    '5dc08d4036e4361c0ef05a81c36880a9'
    """
    raw = f"{customer}\x1f{segment}\x1f{direction}\x1f{at}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)
def _reads(seg: Segment) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The features and segments a segment's rules read, sorted (computed once per segment)."""
    names: set[str] = set()
    refs: set[str] = set()
    for rule in seg.rules:
        names |= features_of(rule)
        refs |= segments_of(rule)
    return tuple(sorted(names)), tuple(sorted(refs))


def _values(
    seg: Segment, doc: Mapping[str, Any], members: Mapping[str, Membership]
) -> dict[str, Any]:
    names, refs = _reads(seg)
    out: dict[str, Any] = {n: read(doc, n) for n in names}
    for r in refs:
        out[f"segment.{r}"] = members.get(r, NOT_MEMBER).member
    return out


def decide(
    seg: Segment,
    doc: Mapping[str, Any],
    members: Mapping[str, Membership],
    with_values: bool = True,
) -> Decision:
    """The truths of one segment's rules on a document, given the other segments' memberships
    (and, ``with_values``, every value they read; else ``values`` is empty)."""

    def value(name: str) -> Any:
        return read(doc, name)

    def member(name: str) -> bool:
        return members.get(name, NOT_MEMBER).member

    entry = holds(seg.entry, value, member)
    exit_ = None if seg.exit is None else holds(seg.exit, value, member)
    return Decision(entry, exit_, _values(seg, doc, members) if with_values else {})


def evaluate(
    segments: SegmentSet, doc: Mapping[str, Any], memberships: Mapping[str, Membership]
) -> dict[str, Decision]:
    """Every segment's :class:`Decision` on a profile document, reading the given memberships for
    ``{segment: X}`` (read-only: nothing is stepped; see :func:`advance`).

    ``doc`` is the profile document as serving returns it: :func:`features.profile.render` plus
    the RFM fields (:func:`features.document.profile_document`) plus ``scores`` (per target, a
    mapping with ``probability``) when rules read scores.
    """
    return {s.name: decide(s, doc, memberships) for s in segments.order}


def step(
    seg: Segment, record: Membership, entry: bool, exit_: bool | None, at: int
) -> tuple[Membership, Direction | None, int]:
    """The new record, the direction of a transition (or ``None``) and its time.

    >>> from features.segments.rules import parse_rule
    >>> seg = Segment("x", "x", parse_rule({"feature": "cart_items", "op": "gt", "value": 0},
    ...               "entry"), min_duration_ms=100)
    >>> r, d, t = step(seg, NOT_MEMBER, True, None, at=10); r, d
    (Membership(member=False, since=None, pending=10), None)
    >>> step(seg, r, True, None, at=250)                 # entered at 10 + 100, found at 250
    (Membership(member=True, since=110, pending=None), 'entered', 110)
    >>> step(seg, r, False, None, at=50)[0]             # broken before 110: no longer pending
    Membership(member=False, since=None, pending=None)
    """
    if record.member:
        leave = (not entry) if exit_ is None else exit_
        return (NOT_MEMBER, EXITED, at) if leave else (record, None, at)
    if not entry or exit_:
        return NOT_MEMBER, None, at
    d = seg.min_duration_ms
    start = at if d == 0 else (record.pending if record.pending is not None else at)
    when = start + d
    if when <= at:
        return Membership(True, when), ENTERED, when
    return Membership(False, None, start), None, at


def _rule_text(rule: Rule | None) -> str:
    return "" if rule is None else rule.text()


def advance(
    segments: SegmentSet,
    doc: Mapping[str, Any],
    memberships: Mapping[str, Membership],
    at: int,
) -> tuple[dict[str, Membership], list[Transition]]:
    """Step every segment at event time ``at`` on the document as of ``at``.

    Returns the new memberships (only non-trivial records: members and pending ones) and the
    transitions, in evaluation order. Segments are stepped in :attr:`SegmentSet.order`, so a
    rule ``{segment: X}`` reads X's membership after X's step at ``at``. Records of segments not
    in the set are dropped.
    """
    members: dict[str, Membership] = {}
    out: list[Transition] = []

    def value(name: str) -> Any:
        return read(doc, name)

    def member(name: str) -> bool:
        return members.get(name, NOT_MEMBER).member

    for seg in segments.order:
        old = memberships.get(seg.name, NOT_MEMBER)
        # Only the rules :func:`step` looks at (a rule not read may read a score for nothing):
        # a member with an exit rule needs only that; a non-member the exit rule only if the
        # entry rule holds. (The values read go into a transition's reason.)
        exit_: bool | None
        if old.member and seg.exit is not None:
            entry, exit_ = True, holds(seg.exit, value, member)
        else:
            entry = holds(seg.entry, value, member)
            exit_ = None if seg.exit is None or not entry else holds(seg.exit, value, member)
        new, direction, when = step(seg, old, entry, exit_, at)
        if new != NOT_MEMBER:
            members[seg.name] = new
        if direction is not None:
            by_exit = direction == EXITED and seg.exit is not None
            rule = "exit" if by_exit else "entry"
            cond = _rule_text(seg.exit) if by_exit else _rule_text(seg.entry)
            if direction == EXITED and seg.exit is None:
                cond = "not " + cond
            values = _values(seg, doc, members)
            reason: dict[str, Any] = {"rule": rule, "condition": cond, "values": values}
            if direction == ENTERED and seg.min_duration_ms:
                reason["held_since"] = when - seg.min_duration_ms
            out.append(Transition(seg.name, direction, when, reason))
    return members, out
