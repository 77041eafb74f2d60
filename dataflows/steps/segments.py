"""Segment membership in the profile step: evaluated at every applied event, and at every time
a membership changes by time alone.

The profile step owns a customer's memberships (:class:`SegmentState`, part of its snapshot).
At each applied event it steps the membership machine (:func:`features.segments.advance`) on the
document as of the event; before it, it *catches up*: the flips by time alone since the last
evaluation (:func:`features.segments.next_flip`: a cart becoming abandoned, a window emptying,
``days_since_last_seen`` crossing 30, a score crossing its threshold) are realised one by one at
their exact event time, on the state as it was (no event came in between). A tick of the
customer clock catches up to its watermark. So the transitions — their times, order and ids —
follow from the events and their arrival order alone, not from when ticks come or how the stream
was batched; ticks only make them *happen* promptly for a customer who sends nothing more.

The customer clock wakes a customer at the times its events alone predict a flip
(:func:`wake_offsets`: the last event + 30 minutes for an abandoned cart, + each window and
granularity for windows emptying, + each day count a rule compares ``days_since_last_seen`` with;
the last purchase + each day count compared with ``days_since_last_purchase``); other flips (an
older bucket leaving a window, ``tenure_days``, a score crossing as recency grows, the end of a
``min_duration``) are realised at the customer's next event or tick of any kind (labels, idle
snapshots every ``NEXTBEST_IDLE_SNAPSHOT_DAYS``, retention), with their exact time.

Scores and RFM tiers read by rules come from the models and the RFM boundaries published when the
run started (:class:`SegmentContext`), the same for the whole run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from features import profile as pf
from features.registry import BY_NAME, CART_ABANDON_MS
from features.rfm import RfmBoundaries
from features.segments import (
    Membership,
    SegmentSet,
    Transition,
    advance,
    document_at,
    next_flip,
)
from features.segments.rules import comparisons
from features.windows import DAY
from models.features import state_features

#: ``scorer(target, model inputs) -> probability``.
Scorer = Callable[[str, dict[str, float]], float]


class SegmentContext(NamedTuple):
    """What segment rules need beyond the profile: the definitions, the RFM boundaries and the
    scorer (published models, or the priors) as of the start of the run."""

    segments: SegmentSet
    bounds: RfmBoundaries | None = None
    scorer: Scorer | None = None


@dataclass
class SegmentState:
    """A customer's memberships, evaluated up to event time ``at`` (``None``: never), and the
    time of its last exit from each segment it ever left (the segment's exits index)."""

    records: dict[str, Membership] = field(default_factory=dict)
    at: int | None = None
    exits: dict[str, int] = field(default_factory=dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a snapshot from before ``exits`` kept none
        self.__dict__.update({"exits": {}, **state})

    def members(self) -> dict[str, int]:
        """Current memberships: segment -> since (epoch ms)."""
        return {n: m.since for n, m in self.records.items() if m.member and m.since is not None}

    def note(self, transitions: list[Transition]) -> None:
        """Keep the time of each exit among ``transitions``."""
        for t in transitions:
            if t.direction == "exited" and t.at >= self.exits.get(t.segment, t.at):
                self.exits[t.segment] = t.at


def _score_at(ctx: SegmentContext, state: pf.ProfileState) -> Callable[[str, int], float] | None:
    """Scores of the state as of a time; the model inputs are computed once per time."""
    scorer = ctx.scorer
    if scorer is None:
        return None
    inputs: dict[int, dict[str, float]] = {}

    def score_at(target: str, t: int) -> float:
        feats = inputs.get(t)
        if feats is None:
            if len(inputs) > 64:
                inputs.clear()
            feats = inputs[t] = state_features(state, t)
        return scorer(target, feats)

    return score_at


def catch_up(
    ctx: SegmentContext, state: pf.ProfileState, seg: SegmentState, until: int
) -> list[Transition]:
    """Realise the flips by time alone in ``(seg.at, until]``, each at its own time, on the
    state as it is (the caller guarantees no event was applied after ``seg.at``)."""
    if seg.at is None or until <= seg.at:
        return []
    out: list[Transition] = []
    view = pf.view(state, ctx.segments.series)
    score_at = _score_at(ctx, state)
    while True:
        at = seg.at
        # (scores are sampled at day ticks over the whole gap, in one search)
        flip = next_flip(ctx.segments, view, at, seg.records, score_at=score_at,
                         bounds=ctx.bounds, horizon=until - at)  # fmt: skip
        if flip is None or flip > until:
            break
        doc = document_at(ctx.segments, view, flip, ctx.bounds, score_at)
        seg.records, got = advance(ctx.segments, doc, seg.records, flip)
        seg.at = flip
        out.extend(got)
    seg.at = until
    return out


def on_event(
    ctx: SegmentContext, state: pf.ProfileState, seg: SegmentState, ts: int
) -> list[Transition]:
    """Step the memberships right after an event at ``ts`` was applied (a late event is
    evaluated at the last evaluation time: memberships never go back in time)."""
    at = ts if seg.at is None else max(seg.at, ts)
    score_at = _score_at(ctx, state)
    doc = document_at(ctx.segments, pf.view(state, ctx.segments.series), at, ctx.bounds, score_at)
    seg.records, out = advance(ctx.segments, doc, seg.records, at)
    seg.at = at
    return out


def wake_offsets(segments: SegmentSet) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """When the customer clock should wake a customer, after (its last event, its last
    purchase): see the module docstring. Every offset is at or after the flip it stands for.

    >>> from features.segments import load_segments
    >>> after_event, after_purchase = wake_offsets(load_segments())
    >>> 30 * 60_000 in after_event, 30 * 86_400_000 + 1 in after_event, after_purchase
    (True, True, (2592000001,))
    """
    event: set[int] = set()
    purchase: set[int] = set()
    for s in segments.order:
        for rule in (s.entry, s.exit):
            if rule is None:
                continue
            for c in comparisons(rule):
                f = BY_NAME.get(c.feature)
                if c.feature == "cart_abandoned":
                    event.add(CART_ABANDON_MS)
                elif f is not None and f.series is not None:
                    event.add(f.series.window + f.series.gran)
                elif c.feature in ("days_since_last_seen", "days_since_last_purchase"):
                    values = c.value if isinstance(c.value, list | tuple) else [c.value]
                    for v in values:
                        if isinstance(v, int | float) and 0 <= v < 10_000:
                            off = int(v * DAY) + 1
                            (event if c.feature == "days_since_last_seen" else purchase).add(off)
    return tuple(sorted(event)), tuple(sorted(purchase))


def describe(seg: SegmentState) -> dict[str, Any]:
    """The profile document's ``segments`` field: each membership with ``since``."""
    return {n: since for n, since in sorted(seg.members().items())}
