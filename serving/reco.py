"""Recommendations over HTTP: ``GET /v1/customers/{id}/recommendations``,
``GET /v1/visitors/{anonymous_id}/recommendations`` and ``GET /v1/products/{id}/similar``
(the product's neighbours first, then the non-personal blend of its category to fill ``n``).

One answer: one Redis round trip for the profile (its recent products, cart, purchases and
category interests), the popularity board's global and trending lists and the page's
``context_product`` (two for a visitor linked to a customer: the link first), then one for the
knowledge of the seed products and the lists of the customer's top categories; then
:func:`decisions.recommend.rank`. The catalogue (``nextbest catalog load``) is kept in memory
and read again, in the background, when its version changes (the version is read in the first
round trip).

A customer or visitor without a profile, or without personalization consent (then
``"consent": {"personalization": false}``), gets the non-personal list (trending, popular, and
item-to-item from a ``context_product``), never a 404; ``"personal": false`` says so. Redis
silent for :data:`REDIS_BUDGET_S`: an empty answer, ``"degraded": true``, the reason, HTTP 200.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Histogram
from redis.exceptions import RedisError

from decisions.recommend import SOURCES, Inputs, Item, RecoConfig, rank, seeds
from features import products as pr
from features.consent import ALL_GRANTED, ConsentDefaults, allows
from features.profile import ProfileView
from features.store import (
    CATALOG_VERSION_KEY,
    POPULAR_KEY,
    decode_profile,
    link_key,
    product_key,
    profile_key,
)
from schemas.events import format_ts
from schemas.keys import customer_key, device_key
from serving.catalog_cache import CatalogCache, Catalogue
from serving.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

#: The Redis part of an answer must finish within this (seconds).
REDIS_BUDGET_S: Final = 0.1
#: Most products an answer lists.
MAX_N: Final = 50
Lists = list[tuple[str, float, str]]


class RecoMetrics:
    """``nextbest_recommendation_seconds{endpoint}``, ``nextbest_recommendations_total
    {endpoint,outcome}`` (ok, empty, degraded) and ``nextbest_recommendation_candidates_total
    {source}``: labels are fixed names (bounded)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            "nextbest_recommendation_seconds",
            "Time to recommend (Redis reads, ranking), by endpoint (customer, visitor, similar).",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.answers = Counter(
            "nextbest_recommendations_total",
            "Recommendation answers by endpoint and outcome (ok, empty, degraded).",
            ("endpoint", "outcome"),
            registry=registry,
        )
        self.candidates = Counter(
            "nextbest_recommendation_candidates_total",
            "Products proposed for answers, by source (a product proposed by two counts twice).",
            ("source",),
            registry=registry,
        )
        for e in ("customer", "visitor", "similar"):
            for o in ("ok", "empty", "degraded"):
                self.answers.labels(e, o)
        for s in SOURCES:
            self.candidates.labels(s)


def _board(raw: Any, trend: bool = False) -> Lists:
    """A board list as ``(product, score, category)``: trending as is, popularity as
    ``2 ** (lpop - best lpop)`` (relative: the first is 1)."""
    if not raw:
        return []
    try:
        items = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    if trend:
        return [(str(i[0]), float(i[1]), str(i[2])) for i in items]
    if not items:
        return []
    top = float(items[0][1])
    return [(str(i[0]), math.pow(2.0, float(i[1]) - top), str(i[2])) for i in items]


def _product(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def similar_items(inp: Inputs, cfg: RecoConfig, n: int) -> list[Item]:
    """Products like the context product: its neighbours first (item-to-item alone), then the
    rest of the blend (popular in its category, trending, popular) to fill ``n``."""
    first = rank(inp, dataclasses.replace(cfg, weights={"item_to_item": 1.0}), n)
    if len(first) < n:
        rest = {k: v for k, v in cfg.weights.items() if k != "item_to_item"}
        seen = {i.product_id for i in first}
        fill = rank(inp, dataclasses.replace(cfg, weights=rest), n + len(first))
        first.extend([i for i in fill if i.product_id not in seen][: n - len(first)])
    return first


@dataclass
class Recommender:
    """Everything an answer needs: the settings, Redis, the catalogue, the metrics."""

    cfg: RecoConfig
    client: aioredis.Redis | None
    metrics: RecoMetrics | None = None
    catalog: CatalogCache = field(default_factory=CatalogCache)
    consent: ConsentDefaults = ALL_GRANTED
    #: The Redis budget of an answer, seconds (``None``: :data:`REDIS_BUDGET_S`; the CLI waits
    #: longer: a person previewing an answer is not a page waiting for it).
    budget_s: float | None = None

    @property
    def budget(self) -> float:
        """The Redis budget of an answer in seconds."""
        return REDIS_BUDGET_S if self.budget_s is None else self.budget_s

    async def recommend(
        self,
        as_of: int,
        n: int,
        customer_id: str | None = None,
        anonymous_id: str | None = None,
        context_product: str | None = None,
        category: str | None = None,
        recent: list[str] | None = None,
    ) -> dict[str, Any]:
        """The answer body for a customer or a visitor. ``recent`` replaces the profile's recent
        products (the last one is the last click; for evaluations)."""
        t0 = time.perf_counter()
        endpoint = "customer" if customer_id is not None else "visitor"
        key = (
            customer_key(customer_id) if customer_id is not None else device_key(anonymous_id or "")
        )
        body: dict[str, Any]
        try:
            if self.client is None:
                raise RedisError("no Redis client")
            async with asyncio.timeout(self.budget):
                key, inp, v, products, catalogue = await self._read(
                    key, anonymous_id, as_of, context_product, category, recent
                )
            items = rank(inp, self.cfg, n)
            body = self._body(as_of, items, inp, v, products, None, catalogue)
        except TimeoutError:
            body = self._body(as_of, [], Inputs(as_of=as_of), None, {}, "redis_timeout")
        except (RedisError, OSError):
            body = self._body(as_of, [], Inputs(as_of=as_of), None, {}, "redis_unavailable")
        body["customer_id"] = key[2:] if key.startswith("c:") else None
        if anonymous_id is not None:
            body["anonymous_id"] = anonymous_id
        self._observe(endpoint, body, t0)
        return body

    async def similar(self, product_id: str, n: int, as_of: int) -> dict[str, Any]:
        """Products like ``product_id``: its neighbours, then the popular ones of its category."""
        t0 = time.perf_counter()
        body: dict[str, Any]
        try:
            if self.client is None:
                raise RedisError("no Redis client")
            async with asyncio.timeout(self.budget):
                pipe = self.client.pipeline(transaction=False)
                pipe.get(product_key(product_id))
                pipe.hmget(POPULAR_KEY, ["all", "trend"])
                pipe.get(CATALOG_VERSION_KEY)
                raw, (pop, trend), version = await pipe.execute()
                catalogue = self.catalog.held
                self.catalog.notice(self.client, version)
                doc = _product(raw)
                cat = (doc or {}).get("category") or ""
                if not cat and product_id in catalogue.items:
                    cat = catalogue.items[product_id].category or ""
                by_cat: dict[str, Lists] = {}
                if cat:
                    by_cat[cat] = _board(await self.client.hget(POPULAR_KEY, "c:" + cat))
            products: dict[str, dict[str, Any] | None] = {product_id: doc}
            inp = Inputs(
                context_product=product_id,
                neighbours=self._neighbours(products),
                popular=_board(pop),
                trending=_board(trend, trend=True),
                by_category=by_cat,
                interests={cat: 1.0} if cat else {},
                unavailable=catalogue.unavailable,
                as_of=as_of,
            )
            items = similar_items(inp, self.cfg, n)
            body = self._body(as_of, items, inp, None, products, None, catalogue)
            body["known"] = doc is not None
            body["personal"] = False  # about a product, not a person
        except TimeoutError:
            body = self._body(as_of, [], Inputs(as_of=as_of), None, {}, "redis_timeout")
        except (RedisError, OSError):
            body = self._body(as_of, [], Inputs(as_of=as_of), None, {}, "redis_unavailable")
        body["product_id"] = product_id
        self._observe("similar", body, t0)
        return body

    async def _read(
        self,
        key: str,
        anonymous_id: str | None,
        as_of: int,
        context_product: str | None,
        category: str | None,
        recent: list[str] | None,
    ) -> tuple[str, Inputs, ProfileView | None, dict[str, dict[str, Any] | None], Catalogue]:
        client = self.client
        assert client is not None
        if anonymous_id is not None:
            link = await client.get(link_key(anonymous_id))
            if link:
                key = customer_key(link.decode() if isinstance(link, bytes) else str(link))
        fields = ["all", "trend"] + (["c:" + category] if category else [])
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(profile_key(key))
        pipe.hmget(POPULAR_KEY, fields)
        pipe.get(CATALOG_VERSION_KEY)
        if context_product:
            pipe.get(product_key(context_product))
        got = await pipe.execute()
        v = decode_profile(got[0])
        withheld = v is not None and not allows(v.consent, "personalization", self.consent)
        v = None if withheld else v
        lists = got[1]
        catalogue = self.catalog.held
        self.catalog.notice(client, got[2])
        products: dict[str, dict[str, Any] | None] = {}
        if context_product:
            products[context_product] = _product(got[3])
        inp = Inputs(
            context_product=context_product,
            popular=_board(lists[0]),
            trending=_board(lists[1], trend=True),
            category=category,
            unavailable=catalogue.unavailable,
            as_of=as_of,
            personal=v is not None or bool(recent),
            withheld=withheld,
        )
        if category:
            inp.by_category = {category: _board(lists[2])}
        if v is not None:
            inp.recent, inp.cart, inp.bought = v.recent, v.cart, v.bought
            inp.interests = dict(v.interests)  # decayed alike: the shares are as of any time
        if recent is not None:
            inp.recent = [(as_of, "v", p, "") for p in recent]
        wanted = [p for p in seeds(inp, self.cfg) if p not in products]
        top = sorted(inp.interests.items(), key=lambda kv: (-kv[1], kv[0]))[: self.cfg.categories]
        cats = [c for c, _ in top if c != category]
        if wanted or cats:
            pipe = client.pipeline(transaction=False)
            for p in wanted:
                pipe.get(product_key(p))
            if cats:
                pipe.hmget(POPULAR_KEY, ["c:" + c for c in cats])
            more = await pipe.execute()
            for p, raw in zip(wanted, more, strict=False):
                products[p] = _product(raw)
            if cats:
                by = dict(inp.by_category)
                for c, raw in zip(cats, more[-1], strict=True):
                    by[c] = _board(raw)
                inp.by_category = by
        inp.neighbours = self._neighbours(products)
        return key, inp, v, products, catalogue

    @staticmethod
    def _neighbours(
        products: dict[str, dict[str, Any] | None],
    ) -> dict[str, tuple[dict[str, list[tuple[str, float, str]]], int]]:
        return {
            p: (pr.neighbour_lists(d), int(d.get("last_seen") or 0))
            for p, d in products.items()
            if d is not None
        }

    def _body(
        self,
        as_of: int,
        items: list[Item],
        inp: Inputs,
        v: ProfileView | None,
        products: dict[str, dict[str, Any] | None],
        degraded: str | None,
        catalogue: Catalogue | None = None,
    ) -> dict[str, Any]:
        held = catalogue or self.catalog.held
        out = []
        for it in items:
            d = it.to_json()
            c = held.items.get(it.product_id)
            if c is not None:
                d.update(name=c.name, price=c.price, url=c.url)
                if c.category and not d["category"]:
                    d["category"] = c.category
            out.append(d)
        newest_products = max(
            (int(d.get("last_seen") or 0) for d in products.values() if d), default=None
        )
        profile_last = v.last_seen_ts if v is not None else None
        newest = max((t for t in (profile_last, newest_products) if t), default=None)
        return {
            "as_of": format_ts(as_of),
            "personal": inp.personal,
            **({"consent": {"personalization": False}} if inp.withheld else {}),
            "items": out,
            "seeds": seeds(inp, self.cfg),
            "freshness": {
                "as_of": format_ts(as_of),
                "newest_event": format_ts(newest) if newest else None,
                "profile_last_event": format_ts(profile_last) if profile_last else None,
                "products_last_event": format_ts(newest_products) if newest_products else None,
                "catalog_version": held.version.decode() if held.version else None,
                "config": self.cfg.digest or None,
            },
            "degraded": degraded is not None,
            "reason": degraded,
        }

    def _observe(self, endpoint: str, body: dict[str, Any], t0: float) -> None:
        m = self.metrics
        if m is None:
            return
        m.seconds.labels(endpoint).observe(time.perf_counter() - t0)
        outcome = "degraded" if body["degraded"] else ("ok" if body["items"] else "empty")
        m.answers.labels(endpoint, outcome).inc()
        for it in body["items"]:
            for s in it["sources"]:
                m.candidates.labels(s).inc()
