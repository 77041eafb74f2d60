"""Segments: rules declared as data, membership as a pure state machine, flip times.

The API the dataflow and serving use:

- :func:`load_segments` (``path`` or ``None`` for the built-in file, ``targets`` =
  ``models.targets.NAMES``) -> :class:`SegmentSet`, or a :class:`SegmentConfigError` naming the
  file, line, segment and field;
- :func:`advance` ``(segments, doc, memberships, at)`` -> new memberships and the
  :class:`Transition` records (entries and exits with their reason), on every profile change and
  at every flip time; :func:`transition_id` for the record's deterministic id;
- :func:`next_flip` ``(segments, view, as_of, memberships, score_at=..., bounds=...)`` -> the
  next event time at which a membership changes by time alone (the customer clock's timer), or
  ``None``;
- :func:`evaluate` ``(segments, doc, memberships)`` -> each segment's rule truths and the values
  read (read-only, for serving and explanations).

Modules: :mod:`~features.segments.catalog` (what rules read), :mod:`~features.segments.rules`
(the rule format), :mod:`~features.segments.config` (the YAML loader),
:mod:`~features.segments.machine` (membership), :mod:`~features.segments.flips` (flip times),
:mod:`~features.segments.schema` (the JSON Schema of the file).

>>> s = load_segments()
>>> s.names[:4], len(s)
(('cart_abandoned', 'at_risk', 'lapsed_30d', 'high_intent'), 8)
"""

from __future__ import annotations

from features.segments.catalog import DEFAULT_TARGETS, MissingFeatureError, catalog, read
from features.segments.config import (
    Segment,
    SegmentConfigError,
    SegmentSet,
    builtin_path,
    load_segments,
    parse_duration,
    parse_segments,
)
from features.segments.flips import DEFAULT_HORIZON_MS, candidates, document_at, next_flip
from features.segments.machine import (
    ENTERED,
    EXITED,
    NOT_MEMBER,
    Decision,
    Membership,
    Transition,
    advance,
    decide,
    evaluate,
    step,
    transition_id,
)
from features.segments.rules import Rule, RuleError, parse_rule

__all__ = [
    "DEFAULT_HORIZON_MS",
    "DEFAULT_TARGETS",
    "ENTERED",
    "EXITED",
    "NOT_MEMBER",
    "Decision",
    "Membership",
    "MissingFeatureError",
    "Rule",
    "RuleError",
    "Segment",
    "SegmentConfigError",
    "SegmentSet",
    "Transition",
    "advance",
    "builtin_path",
    "candidates",
    "catalog",
    "decide",
    "document_at",
    "evaluate",
    "load_segments",
    "next_flip",
    "parse_duration",
    "parse_rule",
    "parse_segments",
    "read",
    "step",
    "transition_id",
]
