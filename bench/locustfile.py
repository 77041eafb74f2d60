"""Locust users of the next-best-action bench (:mod:`bench.nba`), run as ``locust -f`` by it.

Configured by the environment (the bench sets it; nothing here is for interactive use):

* ``NB_BENCH_TARGET``: ``healthz`` (the trivial endpoint), ``nba``
  (``GET /v1/customers/{random bench customer}/next-best-action?channel=web&n=3``) or ``reco``
  (``GET /v1/customers/{random bench customer}/recommendations?n=10``);
* ``NB_BENCH_CUSTOMERS`` and ``NB_BENCH_PREFIX``: the customer ids are ``PREFIX0`` ..
  ``PREFIX{N-1}``;
* ``NB_BENCH_RATE`` and ``NB_BENCH_USERS``: about how many requests/s to pace at, spread evenly
  over that many users, each waiting an exponential time between its requests (rate ``0``: no
  pacing, each user sends its next request as soon as the previous one is answered);
* ``NB_BENCH_OUT``: where to write what was recorded (JSON), when Locust quits.

Every request's client-side response time is recorded exactly (Locust's own percentiles are
rounded to whole milliseconds, too coarse for a 5 ms aim); the times of the spawn phase are
dropped, as ``--reset-stats`` drops them from Locust's statistics. Each answer is checked while
under load: a ``200``; for NBA also ``"degraded":false`` and ``"excluded":[]`` (every action of
the bench catalogue was eligible) in the body; for recommendations ``"degraded":false`` and 10
products. Failures are counted with their first reasons.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

import orjson

#: Set by the bench for its Locust process only: Locust is imported (and, with it, gevent's
#: monkey-patching) only then, never when pytest's doctest collection imports this module.
TARGET = os.environ.get("NB_BENCH_TARGET")
CUSTOMERS = int(os.environ.get("NB_BENCH_CUSTOMERS", "1"))
PREFIX = os.environ.get("NB_BENCH_PREFIX", "nbb-")
RATE = float(os.environ.get("NB_BENCH_RATE", "0"))
USERS = int(os.environ.get("NB_BENCH_USERS", "1"))
OUT = os.environ.get("NB_BENCH_OUT")
#: How many failure reasons are kept (the count is always exact).
MAX_REASONS = 5


#: Target -> its path (``{}``: the customer) and the check of a complete answer: every action of
#: the bench catalogue eligible; ten products.
def _all_eligible(body: bytes) -> bool:
    return b'"excluded":[]' in body


def _ten_products(body: bytes) -> bool:
    return body.count(b'"product_id"') == 10


ANSWERS: dict[str, tuple[str, Callable[[bytes], bool]]] = {
    "nba": ("/v1/customers/{}/next-best-action?channel=web&n=3", _all_eligible),
    "reco": ("/v1/customers/{}/recommendations?n=10", _ten_products),
}


class Recorder:
    """What the bench reads back: exact response times after the spawn phase, and counts of
    every request (before and after it) for the decision log check."""

    def __init__(self) -> None:
        self.times_ms: list[float] = []
        self.timed_failures = 0
        self.ok_total = 0
        self.failed_total = 0
        self.reasons: list[str] = []
        self.started = time.monotonic()
        self.stopped: float | None = None

    def request(self, response_time: float, exception: BaseException | None) -> None:
        """One request ended (Locust's ``request`` event)."""
        if exception is None:
            self.ok_total += 1
        else:
            self.failed_total += 1
            self.timed_failures += 1
            if len(self.reasons) < MAX_REASONS:
                self.reasons.append(str(exception)[:200])
        self.times_ms.append(float(response_time))

    def reset(self) -> None:
        """Spawning is complete: the measured window starts."""
        self.times_ms = []
        self.timed_failures = 0
        self.started = time.monotonic()

    def as_dict(self) -> dict[str, Any]:
        """The JSON the bench reads."""
        stopped = self.stopped if self.stopped is not None else time.monotonic()
        return {
            "target": TARGET,
            "times_ms": self.times_ms,
            "timed_failures": self.timed_failures,
            "window_s": stopped - self.started,
            "ok_total": self.ok_total,
            "failed_total": self.failed_total,
            "reasons": self.reasons,
        }


RECORDER = Recorder()


def _on_request(response_time: float, exception: BaseException | None = None, **_: Any) -> None:
    RECORDER.request(response_time, exception)


def _on_spawned(**_: Any) -> None:
    RECORDER.reset()


def _on_stopping(**_: Any) -> None:
    RECORDER.stopped = time.monotonic()


def _on_quitting(**_: Any) -> None:
    if OUT:
        with open(OUT, "wb") as fh:
            fh.write(orjson.dumps(RECORDER.as_dict()))


if TARGET is not None:
    from locust import FastHttpUser, events, task

    # Locust's EventHook.add_listener is unannotated.
    events.request.add_listener(_on_request)  # type: ignore[no-untyped-call]
    events.spawning_complete.add_listener(_on_spawned)  # type: ignore[no-untyped-call]
    events.test_stopping.add_listener(_on_stopping)  # type: ignore[no-untyped-call]
    events.quitting.add_listener(_on_quitting)  # type: ignore[no-untyped-call]

    class BenchUser(FastHttpUser):
        """One simulated website: the next request as soon as the last is answered, or paced."""

        def wait_time(self) -> float:
            """Unpaced: no wait. Paced: an exponential wait of mean ``USERS / RATE`` s, so arrivals
            are about a Poisson process (pacing all users alike would send them in bursts)."""
            return random.expovariate(RATE / USERS) if RATE > 0 else 0.0

        @task
        def hit(self) -> None:
            """One request to the target, checked."""
            if TARGET == "healthz":
                with self.client.get("/healthz", name="healthz", catch_response=True) as resp:
                    if resp.status_code != 200:
                        resp.failure(f"status {resp.status_code}")
                    else:
                        resp.success()
                return
            cid = f"{PREFIX}{random.randrange(CUSTOMERS)}"
            path, complete = ANSWERS[str(TARGET)]
            with self.client.get(path.format(cid), name=TARGET, catch_response=True) as resp:
                body = resp.content or b""
                if resp.status_code != 200:
                    resp.failure(f"status {resp.status_code}: {body[:120]!r}")
                elif b'"degraded":false' not in body:
                    resp.failure(f"degraded: {body[-160:]!r}")
                elif not complete(body):
                    resp.failure(f"incomplete answer: {body[-400:]!r}")
                else:
                    resp.success()
