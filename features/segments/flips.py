"""Flip times: the next event time at which a profile's memberships change by time alone.

For a profile view with no new events, the features rules read change with time only in three
ways, and :func:`next_flip` collects every time they can change (its *candidates*):

- **windowed** counts and amounts (``page_views_24h``, ``revenue_30d``, ...): bucket ``k`` of a
  series with granularity ``g`` and window ``W`` counts as of ``t`` exactly when
  ``k*g <= t < (k+1)*g + W - 1`` (:meth:`features.windows.Series.bounds`), so the value changes
  only at those two times of each live bucket;
- **monotone** features, non-decreasing in ``t`` for a fixed view: ``days_since_last_seen``,
  ``days_since_last_purchase``, ``tenure_days`` (null before their reference, then
  ``round((t - ref) / day, 3)`` as rendered) and ``cart_abandoned`` (false, then true
  :data:`~features.registry.CART_ABANDON_MS` after the last event when the cart is not empty).
  A comparison's truth depends only on whether the value is null, below, equal to or above each
  constant the rules compare it with; for every constant ``c`` the exact first times with
  ``value >= c`` and ``value > c`` (and the first non-null time) are found by binary search
  over integer milliseconds of the render's own function, so rounding is honoured to the ms;
- **scores** (``score.<target>``): the caller's ``score_at(target, t)`` is sampled at the
  multiples of ``score_step`` since the epoch (default one day: 00:00 UTC, as the issue allows
  day granularity) and at every other candidate, so a score crossing a threshold is seen at most
  ``score_step`` late, at the same time whenever the evaluations before it happened.

Plus the maturity ``pending + min_duration`` of each pending entry. Every other feature is
constant between events (lifetime values, cart, RFM tiers, top categories, identities).

Between two consecutive candidates every rule's truth is constant, so stepping the membership
machine (:func:`features.segments.machine.advance`) at each candidate in increasing order and
stopping at the first change of the memberships gives the exact flip time (for the non-score
features): the first entry, exit, pending start or pending reset.

Work is bounded: at most ``2 * B + 2 * C + P + S`` candidates, each evaluated once with every
rule, where ``B`` is the number of live buckets of the series the rules read (at most about
``W/g + 1`` = 25 to 31 per series), ``C`` the number of constants compared with monotone
features (each found with at most ``log2(horizon)`` + 1, about 36, feature evaluations), ``P``
the number of pending segments and ``S = score_horizon // score_step`` (score rules only).

Examples
--------
>>> from features.profile import ProfileView
>>> from features.segments.config import parse_segments
>>> s = parse_segments('''
... segments:
...   - name: lapsed_30d
...     description: no visit for 30 days
...     entry: {feature: days_since_last_seen, op: ge, value: 30}
... ''')
>>> DAY = 86_400_000
>>> v = ProfileView(key="c:1", first_seen_ts=0, last_seen_ts=0, events_total=1)
>>> t = next_flip(s, v, as_of=DAY, memberships={}); t == 30 * DAY - 43_200
True
>>> document_at(s, v, t - 1)["days_since_last_seen"], document_at(s, v, t)["days_since_last_seen"]
(29.999, 30.0)
>>> next_flip(s, v, as_of=t, memberships={"lapsed_30d": Membership(True, t)}) is None
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any, Final

from features.profile import ProfileView
from features.registry import BY_NAME
from features.rfm import RfmBoundaries, rfm_fields, rfm_point
from features.segments.catalog import SCORE_PREFIX, TRAIT_PREFIX, feature_type
from features.segments.config import SegmentSet
from features.segments.machine import NOT_MEMBER, Membership, advance
from features.segments.rules import Cmp
from features.windows import DAY

#: How far ahead :func:`next_flip` looks by default.
DEFAULT_HORIZON_MS: Final = 400 * DAY
_RFM: Final = frozenset({"rfm_r", "rfm_f", "rfm_m", "rfm_segment"})
_NEG: Final = float("-inf")

ScoreAt = Callable[[str, int], float]


def document_at(
    segments: SegmentSet,
    view: ProfileView,
    t: int,
    bounds: RfmBoundaries | None = None,
    score_at: ScoreAt | None = None,
) -> dict[str, Any]:
    """The part of the profile document the rules read, as of ``t`` (same values as
    :func:`features.document.profile_document` plus ``scores``, for those fields only)."""
    doc: dict[str, Any] = {}
    need = segments.features
    for name in need:
        f = BY_NAME.get(name)
        if f is not None:
            doc[name] = f.value(view, t)
    if need & _RFM:
        point = rfm_point(view.purchases_total, view.revenue_total, view.last_purchase_ts)
        doc.update(rfm_fields(point, bounds))
    if "has_identities" in need:
        doc["has_identities"] = bool(view.identities)
    if any(n.startswith(TRAIT_PREFIX) for n in need):
        doc["traits"] = {name: {"value": t[0]} for name, t in view.traits.items()}
    targets = [n[len(SCORE_PREFIX) :] for n in need if n.startswith(SCORE_PREFIX)]
    if targets:
        if score_at is None:
            raise ValueError("the rules read scores: pass score_at")
        doc["scores"] = _Scores(sorted(targets), score_at, t)
    return doc


class _Scores(Mapping[str, float]):
    """The scores of a document, each computed when a rule first reads it (an ``all`` whose
    first condition is false never asks for the model)."""

    def __init__(self, targets: list[str], score_at: ScoreAt, t: int) -> None:
        self._targets, self._score_at, self._t = targets, score_at, t
        self._got: dict[str, float] = {}

    def __getitem__(self, target: str) -> float:
        if target not in self._targets:
            raise KeyError(target)
        got = self._got.get(target)
        if got is None:
            got = self._got[target] = self._score_at(target, self._t)
        return got

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)


def _window_times(view: ProfileView, name: str, lo: int, hi: int, out: set[int]) -> None:
    f = BY_NAME[name]
    for s in (f.series, f.minus):
        if s is None:
            continue
        g, w = s.gran, s.window
        for k in view.buckets.get(s.name, {}):
            for t in (k * g, (k + 1) * g + w - 1):
                if lo < t <= hi:
                    out.add(t)


def _key(x: Any) -> float:
    """A monotone feature's value as a number (null lowest, booleans 0/1)."""
    return _NEG if x is None else float(x)


def _at_least(key: Callable[[int], float], x: float, t: int) -> bool:
    return key(t) >= x


def _above(key: Callable[[int], float], x: float, t: int) -> bool:
    return key(t) > x


def _first(pred: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Smallest ``t`` in ``(lo, hi]`` with ``pred(t)``, for ``pred`` false then true; ``None``
    if it is already true at ``lo`` (no change ahead) or still false at ``hi``."""
    if pred(lo) or not pred(hi):
        return None
    a, b = lo, hi  # pred(a) false, pred(b) true
    while b - a > 1:
        mid = (a + b) // 2
        if pred(mid):
            b = mid
        else:
            a = mid
    return b


def _monotone_times(
    view: ProfileView, name: str, cmps: tuple[Cmp, ...], lo: int, hi: int, out: set[int]
) -> None:
    value = BY_NAME[name].value

    def key(t: int) -> float:
        return _key(value(view, t))

    # the value at both ends bounds every crossing: search only the constants in between
    k_lo, k_hi = key(lo), key(hi)
    if k_lo == k_hi:
        return
    found = [_first(lambda t: key(t) > _NEG, lo, hi)] if k_lo == _NEG else []
    consts: set[float] = set()
    for c in cmps:
        if c.op != "exists":
            consts.update(c.value if isinstance(c.value, tuple) else (c.value,))
    for x in consts:
        fx = float(x)
        if k_lo < fx <= k_hi:
            found.append(_first(partial(_at_least, key, fx), lo, hi))
        if k_lo <= fx < k_hi:
            found.append(_first(partial(_above, key, fx), lo, hi))
    out.update(t for t in found if t is not None)


def candidates(
    segments: SegmentSet,
    view: ProfileView,
    as_of: int,
    memberships: Mapping[str, Membership],
    until: int,
    score_step: int = DAY,
) -> list[int]:
    """Every time in ``(as_of, until]`` at which a rule's truth or a pending entry can change
    (see the module docstring), sorted."""
    out: set[int] = set()
    scores = False
    for name in segments.features:
        t = feature_type(name, segments.targets)
        time = None if t is None else t.time
        if time == "window":
            _window_times(view, name, as_of, until, out)
        elif time == "monotone":
            _monotone_times(view, name, segments.constants[name], as_of, until, out)
        elif time == "score":
            scores = True
    if scores:
        # on a fixed grid (multiples of the step since the epoch), not from ``as_of``: a crossing
        # is then found at the same time whenever the catch-ups before it happened
        out.update(range((as_of // score_step + 1) * score_step, until + 1, score_step))
    for seg in segments.order:
        p = memberships.get(seg.name, NOT_MEMBER).pending
        if p is not None and seg.min_duration_ms:
            out.add(min(max(p + seg.min_duration_ms, as_of + 1), until))
    return sorted(t for t in out if as_of < t <= until)


def next_flip(
    segments: SegmentSet,
    view: ProfileView,
    as_of: int,
    memberships: Mapping[str, Membership],
    *,
    score_at: ScoreAt | None = None,
    bounds: RfmBoundaries | None = None,
    horizon: int = DEFAULT_HORIZON_MS,
    score_step: int = DAY,
    score_horizon: int | None = None,
) -> int | None:
    """The earliest event time ``t > as_of`` at which the memberships change by time alone.

    Parameters
    ----------
    segments
        The definitions.
    view
        The profile (no event after ``as_of`` is assumed).
    as_of
        Epoch ms; ``memberships`` must be the records after :func:`~features.segments.machine.
        advance` at ``as_of`` (or at the last event).
    memberships
        The current records by segment name (absent: not a member, nothing pending).
    score_at
        ``score_at(target, t)``: the probability the current model gives the profile as of
        ``t`` (required when rules read scores).
    bounds
        The published RFM boundaries (constant here).
    horizon
        Look no further than ``as_of + horizon``.
    score_step, score_horizon
        With score rules: scores are sampled every ``score_step`` (and at every other
        candidate) up to ``as_of + score_horizon`` (default ``horizon``). A shorter
        ``score_horizon`` bounds the model calls: then, when nothing changes before, the answer
        is ``as_of + score_horizon``, a time to evaluate again at which nothing may change.

    Returns
    -------
    int | None
        The first candidate at which :func:`~features.segments.machine.advance` from
        ``memberships`` gives other records (an entry, an exit, a pending entry started or
        reset), or ``None`` if none up to the horizon. Exact for every non-score feature;
        score crossings are found at most ``score_step`` late.
    """
    reads_scores = any(n.startswith(SCORE_PREFIX) for n in segments.features)
    until = as_of + horizon
    if reads_scores and score_horizon is not None:
        until = min(until, as_of + score_horizon)
    names = set(segments.names)
    now = {k: v for k, v in memberships.items() if k in names and v != NOT_MEMBER}
    times = candidates(segments, view, as_of, now, until, score_step)
    for t in times:
        doc = document_at(segments, view, t, bounds, score_at)
        after, _ = advance(segments, doc, now, t)
        if after != now:
            return t
    if reads_scores and until < as_of + horizon:
        return until
    return None
