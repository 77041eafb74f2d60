"""The feedback join: decisions and their outcomes in event time -> action-model examples.

Every served decision (:class:`schemas.decisions.DecisionRecord`) waits for its outcomes
(``decision_outcome`` events, matched by ``decision_id``) for the catalogue's attribution window
of each outcome type, counted in event time from the decision's ``ts``. When the event-time
watermark passes the decision's ``ts`` + the *conversion* window, the decision is closed and
becomes one example for its served action's model (target ``action:<id>``): the decision's
logged features (the profile as of the decision: no later event leaks in), label 1 when a
conversion of the served action was attributed to it, else 0, label time ``ts`` + the conversion
window (fixed: the same whatever the order outcomes arrived in).

An outcome is

- **matched** when it names the decision's served action and its ``ts`` is within its type's
  window ``[decision ts, decision ts + window)``; a matched conversion is also reported at once
  (the contact policy's ``after_conversion`` blackout starts then);
- ``outcome_not_served``: it names another action than the one served;
- ``outcome_outside_window``: before the decision, or after its type's window;
- ``outcome_late``: its decision was already closed (the outcome came after the watermark
  passed the window: later than the allowed lateness);
- ``outcome_unknown_decision``: no decision with that id arrived while the outcome waited for
  it (an outcome may come before its decision: decisions and outcomes travel on different
  topics; it waits until the watermark passes its ``ts`` + its window).

Unmatched outcomes are returned with their reason (the dataflow dead-letters and counts them).
Decisions that were degraded, or have no features, yield no example; a decision id seen twice
keeps the first record.

Examples
--------
>>> from schemas.decisions import DecisionRecord
>>> H = 3_600_000
>>> j = DecisionJoin({"impression": H, "click": 24 * H, "conversion": 7 * 24 * H})
>>> d = DecisionRecord(decision_id="d1", ts=0, key="c:1", channel="web", policy="epsilon_greedy",
...                    epsilon=0.1, served="a", served_probability=0.9, selection="greedy",
...                    candidates=[], features={"x": 1.0})
>>> j.decision(d)
[]
>>> j.outcome("d1", "a", "conversion", 5 * H, "e1")
[('conversion', 'c:1', 'a', 18000000)]
>>> j.outcome("d1", "b", "click", 5 * H, "e2")
[('unmatched', 'e2', 'outcome_not_served')]
>>> examples, notes = j.advance(7 * 24 * H)
>>> [(e.target, e.key, e.snapshot_ts, e.label_ts, e.label) for e in examples], notes
([('action:a', 'c:1', 0, 604800000, 1)], [])
>>> j.outcome("d1", "a", "click", 6 * H, "e3")
[('unmatched', 'e3', 'outcome_late')]
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from models.pending import Example
from schemas.decisions import DecisionRecord

#: Why an outcome was not used (a finite set: metric labels and dead-letter reasons).
UNMATCHED: Final = (
    "outcome_unknown_decision",
    "outcome_not_served",
    "outcome_outside_window",
    "outcome_late",
)
#: The prefix of action-model targets.
ACTION_TARGET: Final = "action:"
#: How long (event time) a closed decision's id is remembered, to tell a late outcome from one
#: of an unknown decision.
REMEMBER_MS: Final = 7 * 86_400_000

#: What the join reports: ``("conversion", key, action, ts)`` for a matched conversion, and
#: ``("unmatched", event_id, reason)``.
Note = tuple[str, ...] | tuple[str, str, str, int]


@dataclass
class _Pending:
    record: DecisionRecord
    converted: bool = False


@dataclass
class DecisionJoin:
    """The join state of one shard of decisions (pure; pickles into the flow's snapshots).

    ``windows``: attribution window per outcome type (ms; ``conversion`` is required).
    """

    windows: Mapping[str, int]
    pending: dict[str, _Pending] = field(default_factory=dict)
    closing: list[tuple[int, str]] = field(default_factory=list)  # heap (close ts, id)
    orphans: dict[str, list[tuple[str, str, int, str]]] = field(default_factory=dict)
    orphan_expiry: list[tuple[int, str, int]] = field(default_factory=list)  # (at, id, n)
    closed: dict[str, int] = field(default_factory=dict)  # id -> forget after
    forget: list[tuple[int, str]] = field(default_factory=list)
    watermark: int = -(2**62)

    @property
    def close_after(self) -> int:
        """The conversion window: when a decision closes, after its ``ts``."""
        return self.windows["conversion"]

    def decision(self, rec: DecisionRecord) -> list[Note]:
        """Take a decision; the outcomes that waited for it are matched now."""
        did = rec.decision_id
        if did in self.pending or did in self.closed:
            return []
        self.pending[did] = _Pending(rec)
        heapq.heappush(self.closing, (rec.ts + self.close_after, did))
        notes: list[Note] = []
        for action, kind, ts, event_id in self.orphans.pop(did, []):
            notes.extend(self.outcome(did, action, kind, ts, event_id))
        return notes

    def outcome(
        self, decision_id: str, action: str, kind: str, ts: int, event_id: str
    ) -> list[Note]:
        """Take an outcome: matched, waiting for its decision, or unmatched with the reason."""
        p = self.pending.get(decision_id)
        if p is None:
            if decision_id in self.closed:
                return [("unmatched", event_id, "outcome_late")]
            waiting = self.orphans.setdefault(decision_id, [])
            waiting.append((action, kind, ts, event_id))
            expiry = ts + self.windows.get(kind, self.close_after)
            heapq.heappush(self.orphan_expiry, (expiry, decision_id, len(waiting)))
            return []
        rec = p.record
        if action != rec.served:
            return [("unmatched", event_id, "outcome_not_served")]
        window = self.windows.get(kind, self.close_after)
        if not rec.ts <= ts < rec.ts + window:
            return [("unmatched", event_id, "outcome_outside_window")]
        if kind == "conversion":
            p.converted = True
            return [("conversion", rec.key, action, ts)]
        return []

    def erase(self, keys: set[str]) -> int:
        """Forget the pending decisions of these profile keys (an erasure); how many.

        >>> from schemas.decisions import DecisionRecord
        >>> j = DecisionJoin({"conversion": 10})
        >>> r = DecisionRecord(decision_id="d", ts=0, key="c:1", channel="web",
        ...                    policy="epsilon_greedy", epsilon=0.1, served="a",
        ...                    served_probability=1.0, selection="explore", candidates=[],
        ...                    features={"x": 1.0})
        >>> _ = j.decision(r)
        >>> j.erase({"c:1"}), j.pending, j.advance(100)
        (1, {}, ([], []))
        """
        gone = [did for did, p in self.pending.items() if p.record.key in keys]
        for did in gone:
            del self.pending[did]
        return len(gone)

    def advance(self, watermark: int) -> tuple[list[Example], list[Note]]:
        """Move the watermark: close the decisions whose conversion window it passed (their
        examples, in close order) and give up on outcomes whose decision never came."""
        if watermark <= self.watermark:
            return [], []
        self.watermark = watermark
        examples: list[Example] = []
        while self.closing and self.closing[0][0] <= watermark:
            close_ts, did = heapq.heappop(self.closing)
            p = self.pending.pop(did, None)
            if p is None:  # erased
                continue
            self.closed[did] = close_ts + REMEMBER_MS
            heapq.heappush(self.forget, (close_ts + REMEMBER_MS, did))
            ex = example_of(p.record, p.converted, self.close_after)
            if ex is not None:
                examples.append(ex)
        notes: list[Note] = []
        while self.orphan_expiry and self.orphan_expiry[0][0] <= watermark:
            _, did, _n = heapq.heappop(self.orphan_expiry)
            for _a, _k, _ts, event_id in self.orphans.pop(did, []):
                notes.append(("unmatched", event_id, "outcome_unknown_decision"))
        while self.forget and self.forget[0][0] <= watermark:
            _, did = heapq.heappop(self.forget)
            self.closed.pop(did, None)
        return examples, notes

    def close_all(self) -> tuple[list[Example], list[Note]]:
        """The end of the input: close everything (as if the watermark went to the end)."""
        return self.advance(2**62)


def example_of(rec: DecisionRecord, converted: bool, window: int) -> Example | None:
    """The served action's example of a closed decision (``None``: nothing to learn from: no
    action served, degraded, or no features logged).

    >>> from schemas.decisions import DecisionRecord
    >>> r = DecisionRecord(decision_id="d", ts=10, key="c:1", channel="web",
    ...                    policy="epsilon_greedy", epsilon=0.1, served=None,
    ...                    served_probability=1.0, selection="none", candidates=[], features={})
    >>> example_of(r, False, 5) is None
    True
    """
    if rec.served is None or rec.degraded or not rec.features:
        return None
    return Example(
        ACTION_TARGET + rec.served, rec.key, rec.ts, rec.ts + window, dict(rec.features),
        int(converted),
    )  # fmt: skip
