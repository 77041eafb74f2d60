"""The demo's next-best-action side: what reaches the flow through the broker, and decisions
made and printed while the shop is open.

- :class:`BrokerFeed`: the demo's flow also reads the embedded broker's input topics (what
  ``POST /v1/events`` of the demo's API writes, and the decision log ``serve`` writes to the
  decisions topic), from the moment the shop opens: posted events and decisions go through the
  same dataflow as the simulated shop.
- :class:`DecisionTicker`: every few seconds it asks the API for a live customer's next best
  action (``GET /v1/customers/{id}/next-best-action``), prints the decision, and reports the
  outcome through ``POST /v1/events`` (an impression; a conversion with the served action's
  propensity), so decisions, outcomes and counters move while one watches.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any, Final

import orjson

from dataflows.records import RawRecord
from schemas.events import format_ts

log = logging.getLogger(__name__)

#: Seconds between two printed decisions.
TICK_S: Final = 4.0


class BrokerFeed:
    """Records of the broker's topics from their end at :meth:`start` (never blocks)."""

    def __init__(self, brokers: str, topics: list[str]) -> None:
        self.brokers = brokers
        self.topics = topics
        self._consumer: Any = None

    def start(self) -> None:
        """Read from now on (every partition of every topic, from its end)."""
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.brokers, "group.id": "nextbest-demo",
                      "enable.auto.commit": False, "logger": log})  # fmt: skip
        meta = c.list_topics(timeout=10)
        parts = [TopicPartition(t, p, OFFSET_END) for t in self.topics
                 for p in (meta.topics[t].partitions if t in meta.topics else {})]  # fmt: skip
        c.assign(parts)
        self._consumer = c

    def poll(self, most: int) -> list[RawRecord]:
        """What arrived since the last call (at most ``most`` records)."""
        if self._consumer is None or most <= 0:
            return []
        out = []
        for m in self._consumer.consume(num_messages=most, timeout=0):
            if m.error() is None and m.value() is not None:
                pos = f"kafka:{m.topic()}:{m.partition()}:{m.offset()}"
                out.append(RawRecord(m.value(), pos, m.timestamp()[1]))
        return out

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def decision_line(body: dict[str, Any], customer_id: str) -> str:
    """One printed decision.

    >>> body = {"freshness": {"as_of": "2026-01-02T03:04:05Z"}, "channel": "web",
    ...         "policy": {"selection": "greedy"}, "actions": [{"id": "cart_reminder",
    ...         "explanation": {"arbitration": "priority 9.6 = propensity 0.12 (prior) x value 80 x weight 1"}}]}
    >>> decision_line(body, "c-7")
    '  > 2026-01-02 03:04:05  c-7  web: cart_reminder  priority 9.6 = propensity 0.12 (prior) x value 80 x weight 1'
    """  # noqa: E501
    at = str(body["freshness"]["as_of"]).replace("T", " ").rstrip("Z")[:19]
    if not body["actions"]:
        return f"  > {at}  {customer_id}  {body['channel']}: nothing to show"
    a = body["actions"][0]
    how = body["policy"]["selection"]
    tag = "" if how == "greedy" else f"  [{how}]"
    return f"  > {at}  {customer_id}  {body['channel']}: {a['id']}  {a['explanation']['arbitration']}{tag}"  # noqa: E501


class _Ticker:
    """Calls :meth:`tick` every ``every`` seconds in a thread, from :meth:`start` to
    :meth:`stop`; an API that is restarting or gone only skips a tick."""

    name = "demo-ticker"

    def __init__(self, base: str, every: float, seed: int) -> None:
        self.base = base
        self.every = every
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.tick()
            except (OSError, ValueError, KeyError) as exc:
                log.debug("%s: %s", self.name, exc)

    def tick(self) -> None:
        raise NotImplementedError


class DecisionTicker(_Ticker):
    """Asks for, prints and answers a live customer's decision every :data:`TICK_S` seconds
    (in a thread, from :meth:`start` to :meth:`stop`)."""

    name = "demo-decisions"

    def __init__(self, base: str, pick: Callable[[], str | None], seed: int = 7) -> None:
        super().__init__(base, TICK_S, seed)
        self.pick = pick
        self.decided = 0

    def tick(self) -> None:
        """One decision: ask, print, report the outcome."""
        cid = self.pick()
        if cid is None:
            return
        url = f"{self.base}/v1/customers/{cid}/next-best-action?channel=web&n=3"
        with urllib.request.urlopen(url, timeout=2) as answer:
            body = orjson.loads(answer.read())
        print(decision_line(body, cid), flush=True)
        self.decided += 1
        if not body["actions"] or body["policy"]["selection"] == "fallback":
            return
        served = body["actions"][0]
        now = int(time.time() * 1000)
        outcomes = [("impression", now)]
        if self.rng.random() < float(served["propensity"]):
            outcomes.append(("conversion", now + 1000))
        events = [
            {"event_id": f"{body['decision_id']}-{kind}", "type": "decision_outcome",
             "ts": format_ts(ts), "customer_id": cid, "decision_id": body["decision_id"],
             "action_id": served["id"], "outcome": kind}
            for kind, ts in outcomes
        ]  # fmt: skip
        req = urllib.request.Request(f"{self.base}/v1/events", data=orjson.dumps(events),
                                     method="POST")  # fmt: skip
        with urllib.request.urlopen(req, timeout=6) as answer:
            answer.read()


#: The demo's own visitor, who browses while the shop is open, and its session.
VISITOR: Final = "demo-visitor"
#: Seconds between two of its product views.
VISIT_S: Final = 6.0


def recommendation_line(at: str, viewed: str, category: str, body: dict[str, Any]) -> str:
    """One printed step of the demo's visitor: what it viewed, what it is recommended now.

    >>> body = {"items": [{"product_id": "p-2", "reason": "viewed together with p-1"},
    ...                   {"product_id": "p-3", "reason": "trending now"}]}
    >>> recommendation_line("12:00:01", "p-1", "shoes", body)
    '  * 12:00:01  demo-visitor viewed p-1 (shoes) -> p-2 (viewed together with p-1), p-3 (trending now)'
    """  # noqa: E501
    recs = ", ".join(f"{i['product_id']} ({i['reason']})" for i in body["items"][:3])
    return f"  * {at}  {VISITOR} viewed {viewed} ({category}) -> {recs or 'nothing yet'}"


class VisitorTicker(_Ticker):
    """The demo's visitor: every :data:`VISIT_S` seconds it views one of the products it was
    just recommended (``POST /v1/events``), waits for the flow to take the view in, asks for
    its recommendations again (``GET /v1/visitors/demo-visitor/recommendations``) and prints
    what it viewed and what it is recommended now: the answer follows its last click."""

    name = "demo-visitor"

    def __init__(self, base: str, seed: int = 11) -> None:
        super().__init__(base, VISIT_S, seed)
        self.views = 0

    def _recommendations(self) -> dict[str, Any]:
        url = f"{self.base}/v1/visitors/{VISITOR}/recommendations?n=5"
        with urllib.request.urlopen(url, timeout=2) as answer:
            body: dict[str, Any] = orjson.loads(answer.read())
        return body

    def tick(self) -> None:
        """One step: view a recommended product, then print the new recommendations."""
        before = self._recommendations()
        if not before["items"]:
            return
        # mostly the first, sometimes another: the visitor wanders through the catalogue
        pick = before["items"][min(int(self.rng.expovariate(1.0)), len(before["items"]) - 1)]
        now = int(time.time() * 1000)
        self.views += 1
        event = {"event_id": f"{VISITOR}-{now}-{self.views}", "type": "product_view",
                 "ts": format_ts(now), "anonymous_id": VISITOR, "session_id": f"{VISITOR}-s",
                 "product_id": pick["product_id"], "category": pick.get("category")}  # fmt: skip
        req = urllib.request.Request(f"{self.base}/v1/events", data=orjson.dumps(event),
                                     method="POST")  # fmt: skip
        with urllib.request.urlopen(req, timeout=6) as answer:
            answer.read()
        seed = pick["product_id"]
        deadline = time.monotonic() + 4
        after = before
        while time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.3)
            after = self._recommendations()
            if after["seeds"][:1] == [seed]:
                break
        at = time.strftime("%H:%M:%S", time.localtime(now / 1000))
        print(recommendation_line(at, seed, pick.get("category") or "?", after), flush=True)
