"""The popularity board: every product's latest ranking values, and the top lists (global,
trending, per category) computed from them; one owner in the dataflow
(:class:`dataflows.steps.products.BoardLogic`).

>>> b = Board()
>>> _ = b.note(Note("a", "x", 3.0, 0.0, 10, 1))
>>> b.lists()["all"]
[['a', 3.0, 'x']]
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from features.products import DAY

#: Products per published list.
LIST_SIZE: Final = 50


@dataclass(frozen=True, slots=True)
class Note:
    """What the board keeps of a product: its latest projection's ranking values."""

    product_id: str
    category: str
    lpop: float
    trending: float
    last_seen: int
    touches: int


def note_of(doc: Mapping[str, Any]) -> Note:
    """The board's note of a projected product."""
    return Note(
        doc["id"],
        doc.get("category") or "",
        float(doc["lpop"]),
        float(doc.get("trending") or 0.0),
        int(doc.get("last_seen") or 0),
        int(doc.get("touches") or 0),
    )


@dataclass(slots=True)
class Board:
    """Every product's latest note, and the top lists computed from them.

    A note replaces the kept one only when its product has received more touches (the
    ``touches`` count only grows), so the board's content, and the lists, are the same
    whatever order the notes came in.

    >>> b = Board()
    >>> for n in [Note("a", "x", 3.0, 0.0, 10, 1), Note("b", "y", 5.0, 2.0, 20, 2),
    ...           Note("a", "x", 1.0, 0.0, 5, 0)]:
    ...     _ = b.note(n)
    >>> lists = b.lists()
    >>> [i[0] for i in lists["all"]], [i[0] for i in lists["c:x"]], [i[0] for i in lists["trend"]]
    (['b', 'a'], ['a'], ['b'])
    """

    notes: dict[str, Note] = field(default_factory=dict)
    by_category: dict[str, dict[str, Note]] = field(default_factory=dict)
    newest: int = -(2**62)

    def note(self, n: Note) -> bool:
        """Keep ``n`` if it is newer than the kept note of its product; True when kept."""
        old = self.notes.get(n.product_id)
        if old is not None and (old.touches, old.last_seen) >= (n.touches, n.last_seen):
            return False
        if old is not None and old.category != n.category:
            cat = self.by_category.get(old.category)
            if cat is not None:
                cat.pop(n.product_id, None)
                if not cat:
                    del self.by_category[old.category]
        self.notes[n.product_id] = n
        self.by_category.setdefault(n.category, {})[n.product_id] = n
        self.newest = max(self.newest, n.last_seen)
        return True

    def lists(self, categories: Iterable[str] | None = None) -> dict[str, list[list[Any]]]:
        """Top lists: ``all`` (popularity), ``trend`` (trending over the last 24 h of the
        newest note) and ``c:<category>`` for the given categories (default: every one).
        Entries are ``[product, lpop, category]`` (``trend``: ``[product, trending, category,
        last_seen]``); ties by product id."""
        out: dict[str, list[list[Any]]] = {}

        def top(notes: Iterable[Note]) -> list[list[Any]]:
            best = heapq.nsmallest(LIST_SIZE, notes, key=lambda n: (-n.lpop, n.product_id))
            return [[n.product_id, n.lpop, n.category] for n in best if n.lpop > -math.inf]

        out["all"] = top(self.notes.values())
        since = self.newest - DAY
        hot = (n for n in self.notes.values() if n.trending > 0 and n.last_seen > since)
        best = heapq.nsmallest(LIST_SIZE, hot, key=lambda n: (-n.trending, n.product_id))
        out["trend"] = [[n.product_id, n.trending, n.category, n.last_seen] for n in best]
        cats = self.by_category if categories is None else categories
        for c in cats:
            members = self.by_category.get(c)
            if members:
                out["c:" + c] = top(members.values())
        return out
