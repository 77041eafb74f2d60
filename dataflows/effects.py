"""What the keyed steps emit: typed effects instead of tagged tuples.

A step returns a list of effects; :mod:`dataflows.flow` sends each kind on by its type: the sink
operations (:data:`~dataflows.records.SinkOp`) to Redis, :class:`~dataflows.records.Rejected`
to the dead letters, :class:`Route` to a customer's profile step, :class:`RfmChange` to the RFM
owner, :class:`Examples` to the model owners.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from dataflows.erasure import Ack, WriteStatus
from dataflows.records import (
    DropProfile,
    ExitSegment,
    IndexSegment,
    LinkDevice,
    Rejected,
    SegmentEvent,
    SinkOp,
    WriteBoundaries,
    WriteCheckpoint,
    WriteConversion,
    WriteLink,
    WritePopular,
    WriteProduct,
    WriteProfile,
    WriteSegments,
)
from features.popularity import Note
from features.rfm import RfmPoint
from models.labels import Example

#: The types of the sink operations (for ``isinstance``).
SINK_OPS: Final = (
    WriteProfile,
    DropProfile,
    WriteLink,
    LinkDevice,
    WriteBoundaries,
    WriteCheckpoint,
    WriteSegments,
    IndexSegment,
    ExitSegment,
    WriteConversion,
    WriteProduct,
    WritePopular,
    WriteStatus,
)


class Route(NamedTuple):
    """Hand ``item`` (an event or a hand-over) to the profile step of customer ``key``."""

    key: str
    item: Any


class RfmChange(NamedTuple):
    """A customer's RFM point changed (``None``: no point)."""

    old: RfmPoint | None
    new: RfmPoint | None


class Examples(NamedTuple):
    """Labelled examples of one target, for its model owner."""

    target: str
    examples: list[Example]


Effect = SinkOp | Rejected | Route | RfmChange | Examples | SegmentEvent | Note | Ack


def sink_op(effect: Effect) -> SinkOp | None:
    """The effect if it is a sink operation."""
    return effect if isinstance(effect, SINK_OPS) else None


def rejected(effect: Effect) -> Rejected | None:
    """The effect if it is a dead letter."""
    return effect if isinstance(effect, Rejected) else None


def segment_event(effect: Effect) -> SegmentEvent | None:
    """The effect if it is a segment transition."""
    return effect if isinstance(effect, SegmentEvent) else None
