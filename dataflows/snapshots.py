"""Recovery snapshots of the keyed steps: versioned structs, pickled.

Bytewax stores what a step's ``snapshot()`` returns and hands it back to the step's builder on a
resume. Each step's state is one dataclass here with a ``v`` (format version); the loaders also
read the positional tuples written before these structs existed (format 0), so a recovery
directory of an older nextbest resumes. Recovery state is still tied to the Bytewax version and to
the step ids. ``tests/test_snapshots.py`` loads snapshots written by the format-0 code.

>>> from features.clock import EventClock
>>> snap = load_clock(dump(ClockSnapshot(EventClock(5), 7, ["c:1"])), 10)
>>> snap.pending, snap.queue, snap.shard, snap.v
(7, ['c:1'], 0, 2)
>>> load_clock(pickle.dumps((EventClock(5), 7)), 10).pending  # format 0
7
"""

from __future__ import annotations

import heapq
import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from features import rfm
from features.clock import EventClock
from features.identifiers import IdentifierState
from features.identity import DeviceState
from features.profile import ProfileState
from models import labels as lb
from models.btyd import BgNbdParams
from models.btyd_histories import Histories
from models.online import OnlineModel

if TYPE_CHECKING:
    from dataflows.steps.segments import SegmentState

#: A held example in a model owner's heap: its learning order, then the example.
Held = tuple[int, str, int, lb.Tied]

#: ``released_to`` before any release.
NEVER: int = -(2**62)


@dataclass
class ClockSnapshot:
    """A clock shard: the clock, the newest event time of the previous call, the keys still
    to re-project, the shard (format 1 had one owner: it resumes as shard 0)."""

    clock: EventClock
    pending: int | None = None
    queue: list[str] = field(default_factory=list)
    shard: int = 0
    v: int = 2


@dataclass
class DeviceSnapshot:
    """One device of the identity step."""

    state: DeviceState | IdentifierState | None
    dirty: bool = False
    v: int = 1


@dataclass
class ProfileSnapshot:
    """One customer of the profile step (format 2 added the segment memberships)."""

    state: ProfileState | None
    labels: lb.PendingLabels | None
    dirty: bool = False
    segments: SegmentState | None = None
    v: int = 2


@dataclass
class ModelSnapshot:
    """A model owner: the model, its checkpoint numbering, the held examples."""

    model: OnlineModel | None = None
    checkpoint_version: int = 0
    since: int = 0
    newest_label_ts: int = 0
    held: list[Held] = field(default_factory=list)
    released_to: int = NEVER
    #: the newest watermark each clock shard reported (format 1 had none: filled in a round)
    told: dict[int, int] = field(default_factory=dict)
    v: int = 2


@dataclass
class RfmSnapshot:
    """The RFM owner."""

    population: rfm.RfmPopulation = field(default_factory=rfm.RfmPopulation)
    pending: int = 0
    newest: int = 0
    v: int = 1
    #: the buy-till-you-die histories, the last fit and its day (absent in older snapshots)
    histories: Histories = field(default_factory=Histories)
    btyd: BgNbdParams | None = None
    btyd_day: int | None = None


Snapshot = ClockSnapshot | DeviceSnapshot | ProfileSnapshot | ModelSnapshot | RfmSnapshot


def dump(snapshot: Snapshot) -> bytes:
    """The bytes Bytewax stores."""
    return pickle.dumps(snapshot)


def _load(raw: bytes | None) -> Any:
    return pickle.loads(raw) if raw else None


def load_clock(raw: bytes | None, lateness_ms: int) -> ClockSnapshot:
    """A clock's snapshot (format 0: a bare clock, or ``(clock, pending[, queue])``)."""
    got = _load(raw)
    if got is None:
        return ClockSnapshot(EventClock(lateness_ms))
    if isinstance(got, ClockSnapshot):
        if got.v < 2:  # one owner: resumed as shard 0 (its class default)
            got.v = 2
        return got
    if isinstance(got, EventClock):
        return ClockSnapshot(got)
    return ClockSnapshot(*got)


def load_device(raw: bytes | None) -> DeviceSnapshot:
    """A device's snapshot (format 0: ``(state, dirty)``)."""
    got = _load(raw)
    if got is None or isinstance(got, DeviceSnapshot):
        return got or DeviceSnapshot(None)
    return DeviceSnapshot(*got)


def load_profile(raw: bytes | None) -> ProfileSnapshot:
    """A customer's snapshot (format 0: ``(state, labels, dirty)``)."""
    got = _load(raw)
    if got is None or isinstance(got, ProfileSnapshot):
        return got or ProfileSnapshot(None, None)
    return ProfileSnapshot(*got)


def load_model(raw: bytes | None) -> ModelSnapshot:
    """A model owner's snapshot (format 0: ``(model, version, since, newest_label_ts[, held,
    released_to])``, held examples bare or wrapped)."""
    got = _load(raw)
    if got is None:
        return ModelSnapshot()
    if isinstance(got, ModelSnapshot):
        if got.v < 2:  # before the clock shards
            got.told, got.v = {}, 2
        return got
    snap = ModelSnapshot(*got)
    if snap.held and isinstance(snap.held[0][3], lb.Example):  # held before Tied existed
        snap.held = [(a, b, c, lb.Tied(e)) for a, b, c, e in snap.held]  # type: ignore[arg-type]
        heapq.heapify(snap.held)
    return snap


def load_any(raw: bytes | None) -> Any:
    """A snapshot stored as one pickled value (the product knowledge's steps)."""
    return _load(raw)


def load_feedback(raw: bytes | None) -> Any:
    """A feedback join shard's snapshot: ``(join, waiting outcome records, newest ts)``."""
    return _load(raw)


def load_rfm(raw: bytes | None) -> RfmSnapshot:
    """The RFM owner's snapshot (format 0: ``(population, pending, newest)``)."""
    got = _load(raw)
    if got is None or isinstance(got, RfmSnapshot):
        return got or RfmSnapshot()
    return RfmSnapshot(*got)
