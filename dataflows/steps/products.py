"""Product knowledge: sessions -> touches and pairs -> product states -> the popularity board.

Three keyed steps (see :mod:`features.products` for what is counted and why the result does not
depend on arrival order or batching):

``baskets``
    :data:`SHARDS` keys ``basket:<n>`` by a stable hash of the event's session
    (:func:`features.products.session_key`). Each remembers its open sessions' distinct products
    and turns a product event into touches (the product was viewed, carted or bought) and pairs
    (viewed or carted in the same session; bought in the same order), sent to the products'
    shards. Event ids seen within a day are remembered: a duplicate counts once.
``products``
    :data:`SHARDS` keys ``products:<n>`` by a stable hash of the product id, each holding its
    products' :class:`~features.products.ProductState`; a changed product is projected to Redis
    (``nb:{p:<id>}:product``, at most once per write interval, like profiles) and its ranking
    values go to the board.
``popularity``
    One owner (:class:`~features.products.Board`): the top lists, global, per category and
    trending, written to ``nb:{pop}:lists``.

A basket shard forgets closed sessions and old event ids by the newest time of the product
views and cart additions it received (its own clock: the stream's newest time would run ahead
whenever the transactions are read ahead of the clickstream, and close sessions still open);
the product shards and the board hear the customer clock's re-projection requests (Redis lost
its data: write everything again).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

import orjson
from bytewax.operators import StatefulBatchLogic

from dataflows import metrics
from dataflows.config import FlowConfig
from dataflows.erasure import Ack
from dataflows.records import In, WritePopular, WriteProduct
from dataflows.snapshots import dump
from dataflows.steps import RETAIN, Out
from features import popularity as popular
from features import products as pr
from features.interest import category_name

#: Shards of the baskets and of the products (fixed: recovery state is keyed by them).
SHARDS: Final = 16
BOARD: Final = "popularity"
_BASKETS: Final = tuple(f"basket:{i}" for i in range(SHARDS))
_PRODUCTS: Final = tuple(f"products:{i}" for i in range(SHARDS))
#: Event ids are remembered this long (event time) to count a duplicate once.
DEDUP_MS: Final = pr.DAY
_PRUNE_EVERY_MS: Final = 10 * pr.MINUTE
#: Metric increments of a batch: (counter, label) -> amount.
Counts = dict[tuple[Any, str], int]


def _shard(key: str) -> int:
    return zlib.crc32(key.encode()) % SHARDS


@lru_cache(maxsize=65536)
def product_shard(product_id: str) -> str:
    """The ``products`` key of a product (stable across runs and processes).

    >>> product_shard("p-00042"), product_shard("p-00042") == product_shard("p-00042")
    ('products:13', True)
    """
    return _PRODUCTS[_shard(product_id)]


def _pid(raw: str) -> str:
    return raw[: pr.MAX_PRODUCT_ID]


def key_product_event(item: In) -> list[tuple[str, Any]]:
    """An event that touches products, keyed by its session's basket shard (else nothing).

    >>> from schemas import Event
    >>> from dataflows.records import RawRecord
    >>> ev = Event(event_id="e", type="product_view", ts=0, anonymous_id="a", product_id="p")
    >>> key_product_event(In(ev, RawRecord(b"", "f:1")))[0][0].startswith("basket:")
    True
    >>> key_product_event(In(Event(event_id="e", type="page_view", ts=0, anonymous_id="a"),
    ...                      RawRecord(b"", "f:1")))
    []
    """
    ev = item.event
    t = ev.type
    if t in ("product_view", "add_to_cart"):
        if not ev.product_id:
            return []
    elif t != "purchase" or not (ev.items or ev.product_id):
        return []
    visitor = ev.anonymous_id or ev.email or ev.phone  # (an identifier-only event: its token)
    skey = pr.session_key(ev.customer_id, visitor, ev.session_id)
    return [(_BASKETS[_shard(skey)], ("event", ev))]


def broadcast_reproject(_: Any) -> list[tuple[str, Any]]:
    """Every product shard writes everything again."""
    return [(k, ("reproject", None)) for k in _PRODUCTS]


def board_reproject(_: Any) -> tuple[str, Any]:
    """The board writes everything again."""
    return (BOARD, ("reproject", None))


def to_board(effect: Any) -> tuple[str, Any] | None:
    """A product's note, for the board's owner."""
    return (BOARD, ("note", effect)) if isinstance(effect, popular.Note) else None


class BasketLogic(StatefulBatchLogic[Any, Any, Any]):
    """One basket shard (see the module docstring). Emits ``(products key, item)`` pairs."""

    def __init__(self, resume: Any, cfg: FlowConfig) -> None:
        sessions, seen, newest = resume or ({}, {}, -(2**62))
        self.recovery = cfg.recovery
        self.lateness = cfg.lateness_ms
        self.sessions: dict[str, pr.Basket] = sessions
        self.seen: dict[str, int] = seen
        self.newest: int = newest
        self.pruned_at = -(2**62)
        metrics.PRODUCT_SESSIONS.inc(len(self.sessions))

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        out: dict[str, list[Any]] = {}
        counts: Counts = {}
        acks: list[Any] = []
        for kind, v in values:
            if kind == "erase":  # the sessions of an erased person's visitor ids
                ids = {k[2:] for k in v.forget}
                for skey in [k for k in self.sessions if k[:2] == "v:" and k[2:] in ids]:
                    del self.sessions[skey]
                    metrics.PRODUCT_SESSIONS.dec()
                acks.append(Ack(v.request_id, v.part))
                continue
            self._event(v, out, counts)
        if self.newest - self.pruned_at >= _PRUNE_EVERY_MS:
            self._prune()
        for (metric, label), n in counts.items():
            metric.labels(label).inc(n)
        # one item per product shard and batch: what each shard has to count
        return [*acks, *((k, ("items", items)) for k, items in out.items())], RETAIN

    def _event(
        self, ev: Any, out: dict[str, list[Any]], counts: dict[tuple[Any, str], int]
    ) -> None:
        prev = self.seen.get(ev.event_id)
        if prev is not None and abs(prev - ev.ts) <= DEDUP_MS:
            return  # a duplicate
        self.seen[ev.event_id] = ev.ts
        ts = ev.ts
        t = ev.type
        if t == "purchase":
            lines = [
                (_pid(it.product_id), category_name(it.category or ""), it.price)
                for it in ev.items or ()
            ] or [(_pid(ev.product_id), category_name(ev.category or ""), ev.price)]
            for p, c, price in lines:
                out.setdefault(product_shard(p), []).append(("touch", (p, t, ts, c, price)))
            key = (metrics.PRODUCT_TOUCHES, "purchase")
            counts[key] = counts.get(key, 0) + len(lines)
            for pair in pr.order_pairs([(p, c) for p, c, _ in lines], ts):
                self._pair(pair, out, counts)
            return
        if ts > self.newest:
            self.newest = ts  # the shard's clock: its views and cart additions only
        p, c = _pid(ev.product_id), category_name(ev.category or "")
        out.setdefault(product_shard(p), []).append(("touch", (p, t, ts, c, ev.price)))
        relation = "view" if t == "product_view" else "cart"
        key = (metrics.PRODUCT_TOUCHES, relation)
        counts[key] = counts.get(key, 0) + 1
        visitor = ev.anonymous_id or ev.email or ev.phone  # (an identifier-only event: its token)
        skey = pr.session_key(ev.customer_id, visitor, ev.session_id)
        basket = self.sessions.get(skey)
        if basket is None or (skey[0] == "v" and ts - basket.last > pr.SESSION_GAP_MS):
            if basket is None:
                metrics.PRODUCT_SESSIONS.inc()
            basket = self.sessions[skey] = pr.Basket(ts)
        basket.last = max(basket.last, ts)
        for other, oc in basket.add(relation, p, c):
            self._pair((relation, p, c, other, oc, ts), out, counts)

    @staticmethod
    def _pair(pair: pr.Pair, out: dict[str, list[Any]], counts: Counts) -> None:
        rel, a, ca, b, cb, ts = pair
        out.setdefault(product_shard(a), []).append(("pair", (rel, a, b, cb, ts)))
        out.setdefault(product_shard(b), []).append(("pair", (rel, b, a, ca, ts)))
        key = (metrics.PRODUCT_PAIRS, rel)
        counts[key] = counts.get(key, 0) + 1

    def _prune(self) -> None:
        # The shard's clock is the newest event of *any* partition: a session of a partition
        # read behind the others is kept for the allowed lateness more, so that its next event
        # finds it whichever partition ran ahead (else the pairs depend on the read order).
        self.pruned_at = self.newest
        closed = self.newest - self.lateness - pr.SESSION_KEEP_MS
        gone = [k for k, b in self.sessions.items() if b.last < closed]
        for k in gone:
            del self.sessions[k]
        metrics.PRODUCT_SESSIONS.dec(len(gone))
        old = self.newest - self.lateness - DEDUP_MS
        for eid in [e for e, ts in self.seen.items() if ts < old]:
            del self.seen[eid]

    def snapshot(self) -> Any:
        if not self.recovery:
            return None
        return dump((self.sessions, self.seen, self.newest))  # type: ignore[arg-type]


class _Writes(StatefulBatchLogic[Any, Out, Any]):
    """Coalesced writes of a shard's changed keys: at most once per ``interval`` of wall time,
    the rest on the next notification or at the end of the input (like profiles); the state
    in the recovery snapshots when recovery is on."""

    interval: float
    recovery: bool
    last_write: float = 0.0
    dirty: set[str]

    def _flush(self, force: bool) -> list[Out]:
        """The writes of what changed (``force``: now, whatever the interval)."""
        raise NotImplementedError

    def _held(self) -> Any:
        """What the recovery snapshot holds."""
        raise NotImplementedError

    def on_notify(self) -> tuple[Iterable[Out], bool]:
        return self._flush(True), RETAIN

    def on_eof(self) -> tuple[Iterable[Out], bool]:
        return self._flush(True), RETAIN

    def snapshot(self) -> Any:
        return dump(self._held()) if self.recovery else None

    def due(self, force: bool) -> bool:
        if not self.dirty:
            return False
        now = time.monotonic()
        if not force and now - self.last_write < self.interval:
            return False
        self.last_write = now
        return True

    def notify_at(self) -> datetime | None:
        if not self.dirty:
            return None
        wait = self.last_write + self.interval - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=max(wait, 0.0))


class ProductLogic(_Writes):
    """One product shard: its products' states; emits their projections and board notes."""

    def __init__(self, resume: Any, cfg: FlowConfig) -> None:
        products, dirty = resume or ({}, set())
        self.products: dict[str, pr.ProductState] = products
        self.dirty = dirty
        self.interval = cfg.write_interval_ms / 1000
        self.recovery = cfg.recovery
        #: each product's counters when it was last written (the state-size metric)
        self.sizes = {p: s.size() for p, s in self.products.items()}
        metrics.PRODUCTS.inc(len(self.products))
        metrics.PRODUCT_COUNTERS.inc(sum(self.sizes.values()))

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Out], bool]:
        force = False
        for kind, v in values:
            if kind == "items":
                self._apply(v)
            elif kind == "reproject":
                self.dirty.update(self.products)
                force = True
        return self._flush(force), RETAIN

    def _apply(self, items: list[tuple[str, Any]]) -> None:
        """Touches and pairs of one batch of a basket shard."""
        dirty = self.dirty
        full = late = 0
        for kind, v in items:
            if kind == "touch":
                p, t, ts, c, price = v
                self._state(p).touch(t, ts, c, price)
                dirty.add(p)
                continue
            rel, a, b, cb, ts = v
            s = self._state(a)
            r = s.relations.get(rel)
            before = (r.refused, r.late) if r is not None else (0, 0)
            s.pair(rel, b, cb, ts)
            r = s.relations[rel]
            full += r.refused - before[0]
            late += r.late - before[1]
            dirty.add(a)
        if full:
            metrics.PRODUCT_NEIGHBOURS_REFUSED.labels("full").inc(full)
        if late:
            metrics.PRODUCT_NEIGHBOURS_REFUSED.labels("late").inc(late)

    def _state(self, product_id: str) -> pr.ProductState:
        s = self.products.get(product_id)
        if s is None:
            s = self.products[product_id] = pr.ProductState(product_id)
            metrics.PRODUCTS.inc()
        return s

    def _flush(self, force: bool) -> list[Out]:
        if not self.due(force):
            return []
        out: list[Out] = []
        grew = 0
        sizes = self.sizes
        for p in sorted(self.dirty):
            s = self.products[p]
            doc = pr.project(s)
            out.append(WriteProduct(p, orjson.dumps(doc)))
            out.append(popular.note_of(doc))
            n = s.size()
            grew += n - sizes.get(p, 0)
            sizes[p] = n
        self.dirty = set()
        metrics.PRODUCT_COUNTERS.inc(grew)
        return out

    def _held(self) -> Any:
        return (self.products, self.dirty)


class BoardLogic(_Writes):
    """The popularity board's owner: keeps every product's note, writes the top lists."""

    def __init__(self, resume: Any, cfg: FlowConfig) -> None:
        board, lists, dirty = resume or (popular.Board(), {}, set())
        self.board: popular.Board = board
        #: list name -> its encoded top list, as last computed
        self.lists: dict[str, bytes] = lists
        #: categories whose list must be computed again ("" too: the global lists)
        self.dirty = dirty
        self.interval = cfg.write_interval_ms / 1000
        self.recovery = cfg.recovery
        self.force = False

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Out], bool]:
        for kind, v in values:
            if kind == "note":
                old = self.board.notes.get(v.product_id)
                if self.board.note(v):
                    self.dirty.update({"", v.category})
                    if old is not None:
                        self.dirty.add(old.category)
            elif kind == "reproject":
                self.dirty.add("")
                self.force = True
        return self._flush(self.force), RETAIN

    def _flush(self, force: bool) -> list[Out]:
        self.force = False
        if not self.due(force):
            return []
        cats = [c for c in self.dirty if c]
        lists = self.board.lists(cats)
        for c in cats:
            if "c:" + c not in lists:
                self.lists.pop("c:" + c, None)
        for name, items in lists.items():
            self.lists[name] = orjson.dumps(items)
        self.dirty = set()
        return [WritePopular(dict(sorted(self.lists.items())))]

    def _held(self) -> Any:
        return (self.board, self.lists, self.dirty)
