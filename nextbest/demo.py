"""``nextbest demo``: simulate a shop, stream it through the dataflow, serve the API meanwhile."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson
import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.records import RawRecord
from dataflows.sources import StopRequest
from features.redis_conn import connect
from nextbest.demo_feedback import VISITOR, BrokerFeed, DecisionTicker, VisitorTicker
from nextbest.live import LiveShop
from nextbest.runtime import release_held
from nextbest.settings import Settings
from nextbest.simulator import SimConfig


class _ShopPartition(StatefulSourcePartition[RawRecord, None]):
    """The shop's history as fast as the flow takes it, then its live events as they happen."""

    def __init__(self, shop: LiveShop, plan: _Plan) -> None:
        self._shop = shop
        self._plan = plan
        self._history: Iterator[bytes] | None = shop.history()
        self._feed = plan.feed
        self._n = 0
        self._live_until: float | None = None

    def next_batch(self) -> list[RawRecord]:
        plan = self._plan
        if plan.limit is not None and self._n >= plan.limit:
            raise StopIteration
        take = plan.batch if plan.limit is None else min(plan.batch, plan.limit - self._n)
        if self._history is not None:
            lines = list(itertools.islice(self._history, take))
            if lines:
                out = [RawRecord(b, f"sim:{self._n + i + 1}") for i, b in enumerate(lines)]
                self._n += len(out)
                return out
            self._history = None
            if plan.live_for is not None and plan.live_for <= 0:
                raise StopIteration
            if plan.live_for is not None:
                self._live_until = time.monotonic() + plan.live_for
            if self._feed is not None:
                self._feed.start()
            plan.on_live()
        if self._live_until is not None and time.monotonic() >= self._live_until:
            raise StopIteration
        out = [
            RawRecord(b, f"live:{self._n + i + 1}") for i, b in enumerate(self._shop.due()[:take])
        ]
        if self._feed is not None:  # what was posted to the API, and the decisions it logged
            out += self._feed.poll(take - len(out))
        self._n += len(out)
        return out

    def next_awake(self) -> datetime | None:
        # live: look for due events ten times a second
        if self._history is None:
            return datetime.now(UTC) + timedelta(milliseconds=100)
        return None

    def snapshot(self) -> None:
        return None  # the demo does not resume (the live part follows the wall clock)

    def close(self) -> None:
        if self._feed is not None:
            self._feed.close()


@dataclass
class _Plan:
    """How much of the shop to stream: ``limit`` events at most, the history and then
    ``live_for`` seconds of live events (``None``: until stopped; 0: no live part)."""

    limit: int | None
    live_for: float | None
    batch: int
    on_live: Callable[[], None]
    #: the broker's input topics, read once the shop is open (None: none)
    feed: BrokerFeed | None = None


class ShopSource(FixedPartitionedSource[RawRecord, None]):
    """A :class:`~nextbest.live.LiveShop` as a dataflow source (one partition, not resumable)."""

    def __init__(self, shop: LiveShop, plan: _Plan) -> None:
        self._shop = shop
        self._plan = plan

    def list_parts(self) -> list[str]:
        return ["shop"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ShopPartition:
        return _ShopPartition(self._shop, self._plan)


@contextlib.contextmanager
def _api_server(
    redis_url: str, port: int, home: Path, brokers: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``nextbest serve`` in a child process on 127.0.0.1:port, sharing our Redis and broker
    (``POST /v1/events`` and the decision log go to the broker, which the demo's flow reads)."""
    # (API keys off: the demo binds loopback, and its printed curl commands carry no key)
    env = dict(os.environ, NEXTBEST_REDIS_URL=redis_url, NEXTBEST_LOG_LEVEL="WARNING",
               NEXTBEST_KAFKA_BROKERS=brokers, NEXTBEST_AUTH="off")  # fmt: skip
    log = open(home / "demo-serve.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "nextbest", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the API server exited (is port {port} in use?); see {home / 'demo-serve.log'}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(base + "/healthz", timeout=0.5) as answer,
            ):
                if answer.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the API server did not start within 30 s")
            time.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: Days of history: longer than the churn horizon (90 days), so the churn model sees churn.
DEMO_DAYS: Final = 120


def _sample_customer(url: str) -> str | None:
    client: redis.Redis = connect(url, decode_responses=True)
    try:
        for key in client.scan_iter(match="nb:{c:*}:profile", count=500):
            return str(key)[len("nb:{c:") : -len("}:profile")]
    finally:
        client.close()
    return None


def port_taken(port: int) -> bool:
    """Whether something on this machine already listens on 127.0.0.1:``port``.

    >>> import socket
    >>> s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); busy = s.getsockname()[1]
    >>> port_taken(busy), s.close()
    (True, None)
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _clean(url: str) -> None:
    """Start from an empty store: delete every nextbest key (the demo's own data)."""
    client: redis.Redis = connect(url)
    try:
        keys = list(client.scan_iter(match="nb:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    finally:
        client.close()


class _Watchdog:
    """Checks every second that the demo's Redis answers and its API server runs; when one is
    gone it says so and stops the flow; the demo then exits 1. A flow stalled on a dead Redis
    cannot end cleanly (its sink waits for Redis), so after a grace period the demo stops the
    API server and exits 1 at once."""

    def __init__(self, url: str, api: subprocess.Popen[bytes], stop: StopRequest) -> None:
        self._url, self._api, self._stop = url, api, stop
        self.failed: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-watchdog", daemon=True)

    def _problem(self, client: redis.Redis, misses: int) -> tuple[str | None, int]:
        if self._api.poll() is not None:
            return f"the API server stopped (exit code {self._api.returncode})", misses
        try:
            client.ping()
            return None, 0
        except redis.RedisError as exc:
            misses += 1
            if misses >= 3:
                return f"Redis at {self._url} stopped answering ({exc})", misses
            return None, misses

    def _loop(self) -> None:
        client: redis.Redis = connect(self._url, socket_timeout=1)
        misses = 0
        try:
            while not self._done.wait(1.0):
                problem, misses = self._problem(client, misses)
                if problem is not None:
                    self.failed = problem
                    print(f"\nnextbest demo: {problem}; stopping the demo", file=sys.stderr,
                          flush=True)  # fmt: skip
                    self._stop.set(problem, failed=True)
                    if not self._done.wait(5.0):  # stalled: end here
                        self._api.terminate()
                        release_held()  # (the embedded broker: not left running for nobody)
                        print("nextbest demo: stopped", file=sys.stderr, flush=True)
                        os._exit(1)
                    return
        finally:
            client.close()

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


class _TransitionTail:
    """Prints the segment transitions appended to the JSONL file from ``start_at`` on (the live
    part of the demo): at most ``per_tick`` a second, then how many more there were."""

    def __init__(self, path: Path, per_tick: int = 6) -> None:
        self._path = path
        self._per_tick = per_tick
        self._offset = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-transitions", daemon=True)

    def start_here(self) -> None:
        """Start printing from the current end of the file."""
        self._offset = self._path.stat().st_size if self._path.exists() else 0
        self._thread.start()

    def _read(self) -> list[dict[str, object]]:
        if not self._path.exists():
            return []
        with self._path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # complete lines only
        self._offset += end
        return [orjson.loads(line) for line in data[:end].splitlines() if line]

    def _loop(self) -> None:
        while not self._done.wait(1.0):
            got = self._read()
            for t in got[: self._per_tick]:
                print(transition_line(t), flush=True)
            if len(got) > self._per_tick:
                print(f"    ... and {len(got) - self._per_tick} more transitions", flush=True)

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()


def transition_line(t: dict[str, object]) -> str:
    """One transition, as the demo prints it.

    >>> transition_line({"at": "2026-11-29T23:41:02.250Z", "direction": "entered",
    ...                  "segment": "cart_abandoned", "customer_id": "c-0000042",
    ...                  "values": {"cart_abandoned": True, "cart_items": 2}})
    '  11-29 23:41:02  + cart_abandoned        c-0000042  cart_abandoned=True cart_items=2'
    >>> transition_line({"at": "2026-11-29T23:41:02Z", "direction": "exited", "segment": "at_risk",
    ...                  "customer_id": "c-1", "values": {"score.churn": 0.58312}})
    '  11-29 23:41:02  - at_risk               c-1  score.churn=0.583'
    """
    sign = "+" if t.get("direction") == "entered" else "-"
    raw = str(t.get("at", ""))
    at = f"{raw[5:10]} {raw[11:19]}"  # month-day and time (a flip realised late is older)
    values = t.get("values")
    shown = ""
    if isinstance(values, dict):
        shown = " ".join(
            f"{k}={round(v, 3) if isinstance(v, float) else v}" for k, v in list(values.items())[:3]
        )
    return f"  {at}  {sign} {t.get('segment', '?'):<20}  {t.get('customer_id', '?')}  {shown}"


def _rate_line(stats: Any, t0: float) -> Callable[[], str]:
    """The progress line, with the rate over the last interval (not the average since t0)."""
    from nextbest.running import progress_line

    last = [time.perf_counter(), 0]

    def render() -> str:
        now, read = time.perf_counter(), stats.read
        rate = (read - last[1]) / max(now - last[0], 1e-9)
        last[0], last[1] = now, read
        return progress_line(stats, t0, rate)

    return render


def _print_hints(base: str, url: str) -> None:
    cid = _sample_customer(url) or "c-1"
    print("\nTry (while the demo runs):")
    print(f"  curl -s {base}/v1/customers/{cid}/profile")
    print(f"  curl -s {base}/v1/customers/{cid}/next-best-action")
    print(f"  curl -s '{base}/v1/visitors/{VISITOR}/recommendations?n=5'"
          "   # the demo's visitor: changes with each product it views (*)")  # fmt: skip
    print(f"  curl -s {base}/v1/customers/{cid}/recommendations")
    print(f"  curl -s {base}/v1/events -d '{{\"event_id\":\"try-1\",\"type\":\"page_view\","
          f"\"ts\":{int(time.time() * 1000)},\"customer_id\":\"{cid}\"}}'")  # fmt: skip
    print(f"  curl -s {base}/v1/segments")
    print(f"  curl -s '{base}/v1/segments/cart_abandoned/members?limit=5'")
    print(f"  curl -s {base}/v1/models")
    print(f"  curl -s {base}/readyz")
    print(f"  curl -s {base}/metrics | grep nextbest_")
    print(f"  open {base}/docs")
    print("\nSegment transitions as they happen (+ entered, - exited), every few seconds a "
          "live customer's next best action (>), and the demo's visitor viewing a product and "
          "what it is recommended next (*):", flush=True)  # fmt: skip


def run_demo(
    settings: Settings,
    events: int | None,
    customers: int,
    port: int | None,
    keep: bool = False,
    live_for: float | None = None,
    rate: float = 300.0,
) -> int:
    """Run the demo: a shop whose history ends now is streamed through the dataflow, then stays
    open with live events until Ctrl-C (or ``live_for`` seconds); ``events`` bounds the events
    (no live part unless ``live_for``). Each demo starts from an empty store unless ``keep``."""
    from dataflows.deadletters import DeadLetterFileSink, SegmentEventsFileSink
    from dataflows.flow import FlowStats, build_flow
    from dataflows.metrics import serve_metrics
    from dataflows.sinks import RedisSink
    from dataflows.sources import StoppableSource
    from nextbest.commands.common import stop_on_signals
    from nextbest.running import (
        Progress,
        flow_config,
        print_summary,
        run_flow,
        sink_options,
    )
    from nextbest.runtime import ensure_topics, kafka_brokers, redis_url

    home = settings.home_path
    home.mkdir(parents=True, exist_ok=True)
    port = port or settings.port
    if events is not None:
        customers = max(50, min(customers, events // 40))
        if live_for is None:
            live_for = 0.0
    # longer than the churn horizon (90 days), so that the churn model sees customers churn
    cfg = SimConfig(customers=customers, days=DEMO_DAYS, seed=7, bad_rate=0.005)
    dead_letter = home / "dead-letter.jsonl"
    for what, p in (("API", port), ("metrics", settings.metrics_port)):
        if p and port_taken(p):
            print(f"nextbest demo: port {p} ({what}) is already in use on this machine; stop "
                  f"what uses it or choose another (--port, NEXTBEST_METRICS_PORT)",
                  file=sys.stderr)  # fmt: skip
            return 2
    segment_events = home / "segment-events.jsonl"
    if not keep:
        for f in (dead_letter, segment_events):
            f.unlink(missing_ok=True)
    stop = StopRequest()
    with (
        redis_url(settings) as url,
        kafka_brokers(settings) as brokers,
        _api_server(url, port, home, brokers) as (base, api),
    ):
        ensure_topics(brokers, [*settings.topics, settings.topic_dead_letter],
                      settings.topic_partitions)  # fmt: skip
        if not keep:
            _clean(url)
        serve_metrics(settings.metrics_port)
        print(f"nextbest demo: Redis {url}; API {base} (docs: {base}/docs)", file=sys.stderr)
        shop = LiveShop(cfg, rate=rate)
        print(
            f"streaming the history of {cfg.customers:,} simulated people over the {cfg.days} "
            f"days up to now" + (f" (first {events:,} events)" if events else ""),
            file=sys.stderr,
        )
        tail = _TransitionTail(segment_events)
        ticker = DecisionTicker(base, lambda: shop.recent[-1] if shop.recent else None)
        visitor = VisitorTicker(base)
        feed = BrokerFeed(brokers, settings.topics)
        t0 = time.perf_counter()

        def on_live() -> None:
            print(f"\nhistory streamed in {time.perf_counter() - t0:.0f} s; the shop is open: "
                  f"about {rate:.0f} live events/s", file=sys.stderr, flush=True)  # fmt: skip
            _print_hints(base, url)
            tail.start_here()
            ticker.start()
            visitor.start()

        stats = FlowStats()
        flow = build_flow(
            StoppableSource(
                ShopSource(shop, _Plan(events, live_for, settings.batch_size, on_live, feed)),
                stop.event,
            ),
            RedisSink(url, sink_options(settings)),
            DeadLetterFileSink(dead_letter, sink_options(settings)),
            source_label="simulator",
            config=flow_config(settings, redis_url=url),
            segment_sink=SegmentEventsFileSink(segment_events, sink_options(settings)),
        )
        with (
            stop_on_signals(stop),
            _Watchdog(url, api, stop) as watchdog,
            Progress(_rate_line(stats, t0), interval=2.0),
        ):
            try:
                run_flow(flow)
            except Exception:
                if watchdog.failed is None:
                    raise
            finally:
                ticker.stop()
                visitor.stop()
                tail.stop()
                feed.close()
        if watchdog.failed is not None:
            return 1
        summary = stats.as_dict(time.perf_counter() - t0)
        if stop.why:
            print(f"\nstopped ({stop.why})", file=sys.stderr)
        print_summary(summary, False, str(dead_letter))
        print(f"segment transitions: {segment_events}", file=sys.stderr)
    return 0
