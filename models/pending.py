"""What the labelling policy (:mod:`models.labels`) keeps and produces: the horizons, a
customer's snapshots pending their labels (:class:`PendingLabels`, which lives in Bytewax
snapshots) and the labelled :class:`Example`.

The classes keep ``models.labels`` as their module: recovery snapshots and held examples name
them ``models.labels.<name>`` in their pickles (their doctests run from there).
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import msgspec

from models.targets import NAMES, REGISTRY

DAY_MS: Final = 86_400_000
#: The targets, in the order their examples are emitted (see :mod:`models.targets`).
TARGETS: Final = NAMES
#: ``last_day`` before any snapshot.
NO_DAY: Final = -(2**62)


_DEFAULT_HORIZONS: Final = tuple((t.name, t.default_horizon_days * DAY_MS) for t in REGISTRY)


class Horizons(NamedTuple):
    """The label horizon (ms) of each target and the watermark lag that sizes the pending bound.

    >>> h = Horizons.of_ms(churn=5, propensity=2, lag=0)
    >>> h.of("churn"), h.of("propensity"), Horizons().of("churn") == 90 * DAY_MS
    (5, 2, True)
    """

    by_target: tuple[tuple[str, int], ...] = _DEFAULT_HORIZONS
    #: How far the watermark may trail the customer's events (the clock's lateness).
    watermark_lag_ms: int = DAY_MS

    @classmethod
    def of_ms(cls, lag: int = DAY_MS, **horizons_ms: int) -> Horizons:
        """Horizons from ``target=ms`` keywords (every target of the registry)."""
        missing = [t for t in TARGETS if t not in horizons_ms]
        if missing:
            raise ValueError(f"no horizon for {missing}")
        return cls(tuple((t, horizons_ms[t]) for t in TARGETS), lag)

    def of(self, target: str) -> int:
        """The horizon of a target."""
        for name, ms in self.by_target:
            if name == target:
                return ms
        raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")

    def max_pending(self, target: str) -> int:
        """Hard cap of pending snapshots: ``ceil((H + lag) / 1 day) + 1``."""
        return -(-(self.of(target) + max(0, self.watermark_lag_ms)) // DAY_MS) + 1


DEFAULT_HORIZONS: Final = Horizons()


class Example(msgspec.Struct, frozen=True):
    """A labelled training example.

    ``features`` are those of the snapshot (as of ``snapshot_ts``, before its event),
    ``label_ts`` is when the label became known in event time (the resolving purchase's ts, or
    ``snapshot_ts + H`` when the horizon passed), ``label`` is 0 or 1.
    """

    target: str
    key: str
    snapshot_ts: int
    label_ts: int
    features: dict[str, float]
    label: int


class Tied:
    """An example in the held heap. Two examples with the same (label time, customer, snapshot
    time) — a far-future event can make them — are ordered by label, then by their encoded
    features: an order of their own, not of their arrival (and never a TypeError).

    >>> a = Example("churn", "c:1", 0, 5, {"x": 1.0}, 1)
    >>> b = Example("churn", "c:1", 0, 5, {"x": 0.5}, 1)
    >>> sorted([Tied(a), Tied(b)])[0].example is b
    True
    """

    __slots__ = ("example",)

    def __init__(self, example: Example) -> None:
        self.example = example

    def __getstate__(self) -> Example:
        return self.example

    def __setstate__(self, example: Example) -> None:
        self.example = example

    def _order(self) -> tuple[int, bytes]:
        return self.example.label, msgspec.json.encode(sorted(self.example.features.items()))

    def __lt__(self, other: Tied) -> bool:
        return self._order() < other._order()


_INTERNED: dict[tuple[str, ...], tuple[str, ...]] = {}


def _intern(names: tuple[str, ...]) -> tuple[str, ...]:
    got = _INTERNED.get(names)
    if got is not None:
        return got
    if len(_INTERNED) < 64:
        _INTERNED[names] = names
    return names


class Snapshot(NamedTuple):
    """Features of a customer at ``ts``, stored compactly (names shared, values as doubles)."""

    ts: int
    names: tuple[str, ...]
    values: array[float]

    @classmethod
    def of(cls, ts: int, features: Mapping[str, float]) -> Snapshot:
        """A snapshot of a feature dict."""
        return cls(ts, _intern(tuple(features)), array("d", features.values()))

    def features(self) -> dict[str, float]:
        """The feature dict back (a new dict, same key order)."""
        return dict(zip(self.names, self.values, strict=True))


#: A pending snapshot: (deadline, snapshot); it matures when ``watermark >= deadline``.
Pending = tuple[int, Snapshot]


def _empty() -> dict[str, list[Pending]]:
    return {t: [] for t in TARGETS}


@dataclass(slots=True)
class PendingLabels:
    """One customer's snapshots waiting for their labels; pickles (lives in Bytewax state).

    ``pending[target]`` holds ``(deadline, snapshot)`` sorted by snapshot time, where
    ``deadline = snapshot.ts + H + 1`` (the horizon in force when the snapshot was taken);
    ``last_day`` is the UTC day of the newest snapshot (or, before the first, of the first
    event: the schedule's start); ``skipped`` counts snapshots not kept because a target was at
    its cap (see "Bounds" in the module docstring); ``bought`` the times of the purchases that
    may fall in a pending snapshot's window (labels are given when the window closes).
    """

    key: str
    last_day: int = NO_DAY
    pending: dict[str, list[Pending]] = field(default_factory=_empty)
    skipped: int = 0
    bought: list[int] = field(default_factory=list)

    def __setstate__(self, state: object) -> None:
        # a pickle from before ``bought`` (no purchases kept then) reads as having none
        slots = state[1] if isinstance(state, tuple) else state
        assert isinstance(slots, dict)
        for name in ("key", "last_day", "pending", "skipped"):
            setattr(self, name, slots[name])
        self.bought = list(slots.get("bought", []))


# Pickles (recovery snapshots, held examples) name these classes ``models.labels.<name>``, where
# they were defined before this module was split from it; ``models.labels`` re-exports them.
for _cls in (Horizons, Example, Tied, Snapshot, PendingLabels):
    _cls.__module__ = "models.labels"
del _cls
