"""Next best action over HTTP: ``GET /v1/customers/{id}/next-best-action`` and
``GET /v1/visitors/{anonymous_id}/next-best-action``.

One request: one Redis round trip for the profile, its memberships and its contact counters
(two for a visitor linked to a customer: the link, then the customer's), the profile rendered as
of the request time with its scores (the same code as the profile API), then
:func:`decisions.policy.decide` (eligibility, contact policy, propensity, arbitration,
epsilon-greedy exploration), the served action counted atomically in the counters (a registered
Lua script), and the decision logged (:mod:`serving.decision_log`) with the probability it was
chosen with.

A customer or visitor without a stored profile is decided on an empty profile (what a new
visitor is): never a 404. **Degrade, don't fail**: when Redis does not answer within
:data:`REDIS_BUDGET_S` (down, slow, or a pool exhausted), or an action model of the channel was
published but cannot be loaded (no usable checkpoint: ``model_unavailable``; an action whose
model has not learned enough yet uses its prior, which is not a degradation), the answer is the
channel's fallback action with ``"degraded": true`` and the reason, HTTP 200; ``/readyz``
reports recent degradations. The served action's counters are then not updated.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Final

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from redis.exceptions import RedisError

from decisions.answer import answer_body, fallback_decision, record_of
from decisions.catalog import Catalog
from decisions.contact import Contacts
from decisions.policy import Decision, decide
from decisions.store import DecisionStore
from features.consent import ALL_GRANTED, ConsentDefaults, allows
from features.profile import new_state, view
from models.features import features_from_document
from schemas.decisions import encode_decision
from schemas.events import MAX_ID_LEN
from schemas.keys import customer_key, device_key
from serving.auth import guarded
from serving.decision_log import DecisionLog
from serving.deps import AsOfQ, NowDep, json_answer, parse_as_of
from serving.errors import ApiError, error_responses
from serving.metrics import LATENCY_BUCKETS
from serving.reco import Recommender
from serving.reco_api import get_recommender
from serving.scoring import ModelSet

log = logging.getLogger(__name__)

#: The whole Redis part of a decision (reads and the counter write) must finish within this.
REDIS_BUDGET_S: Final = 0.1
#: Most actions an answer lists.
MAX_N: Final = 20
#: How long a degradation is reported by ``/readyz`` after it happened (seconds).
DEGRADED_WINDOW_S: Final = 60.0
#: A payload value that becomes the customer's recommended products, and how many.
RECOMMENDATIONS: Final = "{recommendations}"
PAYLOAD_PRODUCTS: Final = 4


class DecisionMetrics:
    """``nextbest_decisions_total{channel,action}``, ``nextbest_decision_fallbacks_total
    {channel,reason}``, ``nextbest_decision_seconds{channel}``,
    ``nextbest_decision_log_failures_total``: labels come from the catalogue (bounded)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "nextbest_decisions_total",
            "Decisions served, by channel and served action (none: nothing to serve).",
            ("channel", "action"),
            registry=registry,
        )
        self.fallbacks = Counter(
            "nextbest_decision_fallbacks_total",
            "Decisions that served the channel's fallback, by reason (nothing_eligible, "
            "redis_unavailable, redis_timeout, model_unavailable).",
            ("channel", "reason"),
            registry=registry,
        )
        self.seconds = Histogram(
            "nextbest_decision_seconds",
            "Time to decide (Redis read, scoring, arbitration, counter write, log), by channel.",
            ("channel",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.log_failures = Counter(
            "nextbest_decision_log_failures_total",
            "Decision records that could not be written to the decision log.",
            registry=registry,
        )
        self.counter_failures = Counter(
            "nextbest_decision_counter_failures_total",
            "Served decisions whose contact counters could not be updated.",
            registry=registry,
        )


@dataclass
class Decider:
    """Everything a decision needs: the catalogue, the models, Redis, the log, the metrics."""

    catalog: Catalog
    models: ModelSet
    client: aioredis.Redis | None
    decision_log: DecisionLog | None
    metrics: DecisionMetrics | None = None
    #: Count the served action and log the decision (``False``: a preview, e.g. the CLI).
    record: bool = True
    #: Fills the payload values ``"{recommendations}"`` (none: they stay null).
    recommender: Recommender | None = None
    #: consent defaults (``NEXTBEST_CONSENT``): without personalization, an empty profile
    consent: ConsentDefaults = ALL_GRANTED
    #: The Redis budget of a decision, seconds (``None``: :data:`REDIS_BUDGET_S`)
    budget_s: float | None = None

    def __post_init__(self) -> None:
        self.store = DecisionStore(self.client, self.catalog) if self.client is not None else None
        self.recent_degraded: deque[tuple[float, str]] = deque(maxlen=100)

    def degraded_reasons(self) -> list[str]:
        """The reasons of degradations within :data:`DEGRADED_WINDOW_S` (for ``/readyz``)."""
        now = time.monotonic()
        return sorted({r for t, r in self.recent_degraded if now - t <= DEGRADED_WINDOW_S})

    async def _read(self, customer_id: str | None, anonymous_id: str | None) -> Any:
        assert self.store is not None
        if customer_id is not None:
            key = customer_key(customer_id)
            stored, contacts = await self.store.read(key)
            return key, stored, contacts
        assert anonymous_id is not None
        device = device_key(anonymous_id)
        link, (stored, contacts) = await self.store.read_visitor(anonymous_id, device)
        if link is None:
            return device, stored, contacts
        key = customer_key(link)
        stored, contacts = await self.store.read(key)
        return key, stored, contacts

    async def decide(
        self,
        channel: str,
        as_of_ms: int,
        n: int,
        customer_id: str | None = None,
        anonymous_id: str | None = None,
    ) -> dict[str, Any]:
        """Decide and answer (the response body)."""
        t0 = time.perf_counter()
        if channel not in self.catalog.channels:
            raise ApiError(
                422,
                "unknown_channel",
                f"channel {channel[:40]!r}: one of {', '.join(self.catalog.channels)}",
            )
        decision_id = uuid.uuid4().hex
        degraded: str | None = None
        key = customer_key(customer_id) if customer_id else device_key(anonymous_id or "")
        try:
            if self.store is None:
                raise RedisError("no Redis client")
            async with asyncio.timeout(REDIS_BUDGET_S if self.budget_s is None else self.budget_s):
                key, stored, contacts = await self._read(customer_id, anonymous_id)
        except TimeoutError:
            degraded = "redis_timeout"
        except (RedisError, OSError):
            degraded = "redis_unavailable"
        if degraded is None and self.models.unusable_actions(
            tuple(a.id for a in self.catalog.for_channel(channel))
        ):
            degraded = "model_unavailable"  # a published action model cannot be loaded
        if degraded is not None:
            body = self._degraded(decision_id, key, channel, as_of_ms, degraded)
        else:
            body = await self._decide(decision_id, key, stored, contacts, channel, as_of_ms)
        body["actions"] = body["actions"][:n]
        if self.recommender is not None and degraded is None:
            await self._fill_products(body["actions"], key, as_of_ms)
        body["customer_id"] = key[2:] if key.startswith("c:") else None
        if anonymous_id is not None:
            body["anonymous_id"] = anonymous_id
        if self.metrics is not None:
            self.metrics.seconds.labels(channel).observe(time.perf_counter() - t0)
        return body

    async def _fill_products(self, actions: list[dict[str, Any]], key: str, as_of: int) -> None:
        """Replace every payload value ``"{recommendations}"`` of the listed actions with the
        customer's recommended products (:mod:`serving.reco`; ``[]`` when there are none)."""
        slots = [
            (a["payload"], k)
            for a in actions
            for k, v in self.catalog[a["id"]].payload.items()
            if v == RECOMMENDATIONS
        ]
        if not slots:
            return
        assert self.recommender is not None
        if key.startswith("c:"):
            got = await self.recommender.recommend(as_of, PAYLOAD_PRODUCTS, customer_id=key[2:])
        else:
            got = await self.recommender.recommend(as_of, PAYLOAD_PRODUCTS, anonymous_id=key[2:])
        products = [
            {k: i.get(k) for k in ("product_id", "reason", "name", "price", "url") if k in i}
            for i in got["items"]
        ]
        for payload, k in slots:
            payload[k] = products

    async def _decide(
        self,
        decision_id: str,
        key: str,
        stored: Any,
        contacts: Contacts,
        channel: str,
        as_of_ms: int,
    ) -> dict[str, Any]:
        withheld = stored.view is not None and not allows(
            stored.view.consent, "personalization", self.consent
        )
        if withheld:  # non-personal logic only: what an unknown visitor gets
            stored = stored._replace(view=None, segments={})
        v = stored.view if stored.view is not None else view(new_state(key))
        doc = self.models.document(v, as_of_ms, stored.bounds, segments=stored.segments)
        features = features_from_document(doc)
        rng = random.Random(decision_id)
        d = decide(
            self.catalog,
            channel,
            doc,
            stored.segments,
            features,
            contacts,
            as_of_ms,
            rng,
            self.models.propensity,
        )
        if self.record and d.served is not None and d.selection in ("greedy", "exploration"):
            assert self.store is not None
            try:
                async with asyncio.timeout(
                    REDIS_BUDGET_S if self.budget_s is None else self.budget_s
                ):
                    await self.store.count_serve(key, channel, d.served.action.id, as_of_ms)
            except (TimeoutError, RedisError, OSError) as exc:
                log.warning("decision %s: contact counters not updated: %s", decision_id, exc)
                if self.metrics is not None:
                    self.metrics.counter_failures.inc()
        newest = doc.get("last_seen_ts") if stored.view is not None else None
        body = self._body(decision_id, as_of_ms, d, doc, newest, None)
        body["personal"] = stored.view is not None
        if withheld:
            body["consent"] = {"personalization": False}
        self._log(decision_id, key, as_of_ms, d, features, None)
        return body

    def _degraded(
        self, decision_id: str, key: str, channel: str, as_of_ms: int, reason: str
    ) -> dict[str, Any]:
        self.recent_degraded.append((time.monotonic(), reason))
        d = fallback_decision(self.catalog, channel)
        body = self._body(decision_id, as_of_ms, d, {}, None, reason)
        self._log(decision_id, key, as_of_ms, d, {}, reason)
        return body

    def _log(
        self,
        decision_id: str,
        key: str,
        as_of_ms: int,
        d: Decision,
        features: dict[str, float],
        degraded: str | None,
    ) -> None:
        if self.metrics is not None:
            served = d.served.action.id if d.served is not None else "none"
            self.metrics.decisions.labels(d.channel, served).inc()
            if d.selection == "fallback" or degraded is not None:
                reason = degraded or "nothing_eligible"
                self.metrics.fallbacks.labels(d.channel, reason).inc()
        if not self.record or self.decision_log is None:
            return
        rec = record_of(decision_id, key, as_of_ms, d, features, degraded, self.catalog.digest, {})
        if not self.decision_log.write(key, encode_decision(rec)) and self.metrics is not None:
            self.metrics.log_failures.inc()

    def _body(
        self,
        decision_id: str,
        as_of_ms: int,
        d: Decision,
        doc: dict[str, Any],
        newest: str | None,
        degraded: str | None,
    ) -> dict[str, Any]:
        versions = {t: lm.version for t, lm in self.models.models.items() if lm.version is not None}
        return answer_body(
            decision_id, as_of_ms, d, doc, newest, degraded, versions, self.catalog.digest
        )


# --------------------------------------------------------------------------------------------
# Routes


def install_decisions(app: FastAPI, actions: str | None, decision_log: DecisionLog | None) -> None:
    """Load the catalogue (``actions``: a file, ``None`` for the shipped one; a bad file raises
    :class:`decisions.catalog.ActionConfigError`), add the routes and the metrics. The segments
    eligibility rules may name are the app's (``app.state.segments``)."""
    from decisions.catalog import load_catalog
    from models.action_labels import ACTION_TARGET
    from models.targets import NAMES

    app.state.catalog = load_catalog(actions, segments=app.state.segments.names, targets=NAMES)
    app.state.models = ModelSet(tuple(ACTION_TARGET + a for a in app.state.catalog.ids))
    app.state.decision_log = decision_log
    app.state.decision_metrics = DecisionMetrics(app.state.metrics.registry)
    app.state.decider = None
    app.state.openapi_fixes.append(lambda doc: _channel_enum(doc, app.state.catalog.channels))
    app.include_router(router, **guarded("read"))


def _channel_enum(doc: dict[str, Any], channels: Iterable[str]) -> None:
    """The OpenAPI document states the catalogue's channels (the only ones accepted)."""
    for path, ops in doc["paths"].items():
        if path.endswith("/next-best-action"):
            for p in ops["get"]["parameters"]:
                if p["name"] == "channel":
                    p["schema"] = {**p["schema"], "enum": list(channels)}
                    p["schema"].pop("minLength", None)
                    p["schema"].pop("maxLength", None)


def close_decisions(app: FastAPI) -> None:
    """Close the decision log (the lifespan's end)."""
    if app.state.decision_log is not None:
        app.state.decision_log.close()
    app.state.decider = None


def get_decider(request: Request) -> Decider:
    """Dependency: the app's decider, made on first use from the lifespan's Redis client."""
    state = request.app.state
    if state.decider is None:
        state.decider = Decider(
            state.catalog,
            state.models,
            state.redis,
            state.decision_log,
            state.decision_metrics,
            recommender=get_recommender(request) if hasattr(state, "reco_config") else None,
            consent=state.settings.consent,
        )
    assert isinstance(state.decider, Decider)
    return state.decider


DeciderDep = Annotated[Decider, Depends(get_decider)]
ChannelQ = Annotated[str, Query(min_length=1, max_length=64, description="The channel.")]
NQ = Annotated[int, Query(ge=1, le=MAX_N, description="How many actions to list.")]

router = APIRouter(tags=["decisions"])


@router.get(
    "/v1/customers/{customer_id}/next-best-action",
    responses=error_responses(422),
    summary="The next best action for a customer",
)
async def customer_nba(
    customer_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LEN)],
    decider: DeciderDep,
    now_ms: NowDep,
    channel: ChannelQ = "web",
    n: NQ = 3,
    as_of: AsOfQ = None,
) -> Response:
    """The ranked, explained actions for a customer on a channel (the first is served)."""
    as_of_ms = now_ms if as_of is None else parse_as_of(as_of)
    return json_answer(await decider.decide(channel, as_of_ms, n, customer_id=customer_id))


@router.get(
    "/v1/visitors/{anonymous_id}/next-best-action",
    responses=error_responses(422),
    summary="The next best action for a visitor (the linked customer's, or anonymous)",
)
async def visitor_nba(
    anonymous_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LEN)],
    decider: DeciderDep,
    now_ms: NowDep,
    channel: ChannelQ = "web",
    n: NQ = 3,
    as_of: AsOfQ = None,
) -> Response:
    """The decision for the customer the device is linked to, else for the device's own
    anonymous profile (an unknown device: an empty profile)."""
    as_of_ms = now_ms if as_of is None else parse_as_of(as_of)
    return json_answer(await decider.decide(channel, as_of_ms, n, anonymous_id=anonymous_id))
