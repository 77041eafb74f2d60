"""(e) Timer-driven transitions: from the watermark passing a flip time to the transition on
``segment-events``, against ``nextbest run``.

How it is measured:

* ``nextbest run`` runs as in (c) (:mod:`bench.freshness`), warmed up the same way.
* Event time runs ``speed`` times faster than the wall clock: an event produced at wall time
  ``w`` carries ``ts = T0 + (w - w0) * speed`` (so half an hour of event time passes in seconds,
  and nothing is late: the stream is in ts order).
* First ``carts`` customers each put a product in their cart (one ``add_to_cart`` and then
  nothing more): each will enter ``cart_abandoned`` at ``F = ts + 30 min`` by time alone, when
  the customer clock's watermark (newest customer event time minus the allowed lateness ``L``)
  passes ``F`` and its timer fires. Then filler customers send page views at ``rate`` events/s,
  which move event time on.
* The watermark passes ``F`` when the first event with ``ts >= F + L`` is produced: by the linear
  time map, at wall time ``w0 + (F + L - T0) / speed`` (to within one produce tick, 5 ms). The
  latency of a transition is its ``emitted_at`` minus that wall time (same machine, same clock).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from bench.freshness import (
    TOPIC_CLICKSTREAM,
    TOPIC_DEAD_LETTER,
    TOPIC_TRANSACTIONS,
    KeyspaceListener,
    Tracker,
    _check_alive,
    _run_process,
    _warm_up,
    segment_event_records,
)
from bench.kafka import BenchProducer, paced
from bench.services import Services
from bench.stats import summary
from features.registry import CART_ABANDON_MS
from nextbest.runtime import ensure_topics
from schemas.events import parse_ts

#: The allowed lateness of ``nextbest run`` (its default, which the bench does not change).
LATENESS_MS = 600_000


def measure_timer_latency(
    services: Services,
    *,
    rate: float = 2000.0,
    duration: float = 20.0,
    carts: int = 200,
    tick: float = 0.005,
    grace: float = 15.0,
    ready_timeout: float = 120.0,
) -> dict[str, Any]:
    """Produce ``carts`` abandoned carts, then filler at ``rate`` events/s for ``duration`` s with
    event time sped up so the carts' flips come at about a third of the run; see the module."""
    # the flips (30 min after the carts, plus the lateness) pass a third of the way through
    speed = (CART_ABANDON_MS + LATENESS_MS) / 1000 / (duration / 3)
    total = max(carts + 1, round(rate * duration))
    client = services.client()
    try:
        client.flushall()
    finally:
        client.close()
    ensure_topics(services.brokers, [TOPIC_CLICKSTREAM, TOPIC_TRANSACTIONS, TOPIC_DEAD_LETTER], 3)
    tracker = Tracker()
    listener = KeyspaceListener(services.redis_url, tracker)
    listener.start()
    producer = BenchProducer(services.brokers, 1.0)
    flips: dict[str, int] = {}  # customer -> flip time (ms)
    try:
        with _run_process(services) as (proc, out_path):
            home: Path = out_path.parent
            _warm_up(tracker, producer, proc, home, ready_timeout)
            w0 = time.time()
            t0 = int(w0 * 1000)

            def ts_now() -> int:
                return t0 + int((time.time() - w0) * speed * 1000)

            def emit(i: int) -> None:
                ts = ts_now()
                if i < carts:
                    cid = f"tb-cart-{i}"
                    doc: dict[str, Any] = {
                        "event_id": f"tb-{i}",
                        "type": "add_to_cart",
                        "ts": ts,
                        "customer_id": cid,
                        "product_id": "p-1",
                        "category": "shoes",
                        "price": 10.0,
                        "quantity": 1,
                    }
                    flips[cid] = ts + CART_ABANDON_MS
                else:
                    cid = f"tb-fill-{i % 997}"
                    doc = {"event_id": f"tb-{i}", "type": "page_view", "ts": ts,
                           "customer_id": cid}  # fmt: skip
                producer.produce(TOPIC_CLICKSTREAM, cid.encode(), orjson.dumps(doc))

            def check() -> None:
                _check_alive(proc, home)

            produce_seconds = paced(total, rate, tick, emit, producer.poll, check)
            producer.flush(30)
            time.sleep(min(grace, duration))  # the last flips come a third of the way in
            _check_alive(proc, home)
    finally:
        listener.close()
    lat: list[float] = []
    late_by_ms: list[float] = []
    records = segment_event_records(services.brokers)
    for doc in records:
        cid = doc.get("customer_id")
        if doc.get("segment") != "cart_abandoned" or doc.get("direction") != "entered":
            continue
        flip = flips.get(str(cid))
        emitted = parse_ts(str(doc.get("emitted_at")))
        if flip is None or emitted is None:
            continue
        late_by_ms.append(float(doc["at_ms"] - flip))
        passed_wall_ms = (w0 + (flip + LATENESS_MS - t0) / 1000 / speed) * 1000
        lat.append(emitted - passed_wall_ms)
    return {
        "carts": carts,
        "rate_per_s": rate,
        "duration_s": duration,
        "event_time_speed": round(speed, 1),
        "produce_seconds": round(produce_seconds, 3),
        "transitions": len(lat),
        "missing": carts - len(lat),
        "latency_ms": summary(lat),
        "p50_ms": summary(lat).get("p50"),
        "p99_ms": summary(lat).get("p99"),
        # the transition's own time is the exact flip time (0 when exact)
        "at_minus_flip_ms": summary(late_by_ms),
    }
