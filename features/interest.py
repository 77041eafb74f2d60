"""Category interest: exponentially decayed scores per category (half-life 7 days).

An event adds ``weight * 2 ** (-(t - ts) / HALF_LIFE_MS)`` to its category's score as of ``t``:
``product_view`` 1.0, ``add_to_cart`` 3.0, ``purchase`` 5.0 per item line carrying a category
(a purchase without item lines: 5.0 to its own ``category``), any other event carrying a
``category`` 0.5. Category names are cut to 40 characters (and 60 UTF-8 bytes); at most 20
categories are kept: when a 21st appears the lowest (as of that event; ties: the greatest name) is
dropped.

Scores are stored relative to a reference time ``ref`` that only moves forward in steps of
:data:`ANCHOR_MS` (32 half-lives), so adding an event costs one power of two and moving the
reference multiplies every score by an exact power of two (no rounding). Scores as of ``t`` are
``stored * 2 ** ((ref - t) / HALF_LIFE_MS)``.

Examples
--------
>>> from schemas.events import Event, Item
>>> e = Event(event_id="1", type="purchase", ts=0, customer_id="c", total=3.0,
...           items=[Item(product_id="p", category="shoes"), Item(product_id="q", category="bags")])
>>> contributions(e)
[('shoes', 5.0), ('bags', 5.0)]
>>> decay(8.0, 0, 2 * HALF_LIFE_MS)
2.0
>>> ranked({"b": 1.0, "a": 1.0, "c": 3.0})
[('c', 3.0), ('a', 1.0), ('b', 1.0)]
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from features.windows import DAY
from schemas.events import Event

HALF_LIFE_MS: Final = 7 * DAY
#: The reference time of the stored scores is a multiple of this (32 half-lives, 224 days).
ANCHOR_MS: Final = 32 * HALF_LIFE_MS
MAX_CATEGORIES: Final = 20
MAX_CATEGORY_CHARS: Final = 40
MAX_CATEGORY_BYTES: Final = 60
WEIGHTS: Final = {"product_view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
#: Weight of any other event type that carries a ``category``.
OTHER_WEIGHT: Final = 0.5


@lru_cache(maxsize=4096)
def _cut(raw: str) -> str:
    name = raw[:MAX_CATEGORY_CHARS]
    while len(name.encode()) > MAX_CATEGORY_BYTES:
        name = name[:-1]
    return name


def category_name(raw: str) -> str:
    """The stored name of a category: at most 40 characters and 60 UTF-8 bytes.

    >>> category_name("x" * 50) == "x" * 40, len(category_name("é" * 40).encode())
    (True, 60)
    """
    if len(raw) <= 15:  # 15 characters are at most 60 UTF-8 bytes
        return raw
    return _cut(raw)


def contributions(event: Event) -> list[tuple[str, float]]:
    """The ``(category, weight)`` pairs an event adds (empty for most events)."""
    t = event.type
    if t == "purchase":
        if event.items:
            return [(category_name(it.category), 5.0) for it in event.items if it.category]
        return [(category_name(event.category), 5.0)] if event.category else []
    if event.category:
        return [(category_name(event.category), WEIGHTS.get(t, OTHER_WEIGHT))]
    return []


def anchor(ts: int) -> int:
    """The reference time used for scores once the newest event is at ``ts``.

    >>> anchor(ANCHOR_MS + 5) == ANCHOR_MS
    True
    """
    return ts // ANCHOR_MS * ANCHOR_MS


def rescale(scores: dict[str, float], old_ref: int, new_ref: int) -> None:
    """Move scores from ``old_ref`` to a later ``new_ref`` (exact: a power-of-two factor)."""
    factor = 2.0 ** -((new_ref - old_ref) // HALF_LIFE_MS)
    for c in scores:
        scores[c] *= factor


def decay(score: float, ref: int, as_of: int) -> float:
    """A score stored relative to ``ref``, as of ``as_of``."""
    return score * float(2.0 ** min((ref - as_of) / HALF_LIFE_MS, 64.0))


def ranked(scores: dict[str, float]) -> list[tuple[str, float]]:
    """Categories from the highest score down; ties by name."""
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def drop_lowest(scores: dict[str, float]) -> None:
    """Drop categories beyond :data:`MAX_CATEGORIES`: the lowest score, ties the greatest name."""
    while len(scores) > MAX_CATEGORIES:
        victim = max(scores.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        del scores[victim]


def combine(
    a: dict[str, float], a_ref: int, b: dict[str, float], b_ref: int
) -> tuple[dict[str, float], int]:
    """Scores of two histories together, at the later reference, capped at 20 categories.

    >>> combine({"x": 1.0}, ANCHOR_MS, {"x": 2.0 ** 32, "y": 1.0}, 0)
    ({'x': 2.0, 'y': 2.3283064365386963e-10}, 19353600000)
    """
    ref = max(a_ref, b_ref)
    fa = 2.0 ** -((ref - a_ref) // HALF_LIFE_MS)
    fb = 2.0 ** -((ref - b_ref) // HALF_LIFE_MS)
    out: dict[str, float] = {}
    for c in sorted(a.keys() | b.keys()):
        out[c] = a.get(c, 0.0) * fa + b.get(c, 0.0) * fb
    drop_lowest(out)
    return out, ref
