"""``nextbest demo``: simulate a shop, stream it through the dataflow, serve the API meanwhile."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.records import RawRecord
from nextbest.settings import Settings
from nextbest.simulator import SimConfig, generate


class _SimPartition(StatefulSourcePartition[RawRecord, int]):
    def __init__(self, cfg: SimConfig, limit: int | None, resume: int | None, batch: int) -> None:
        self._it: Iterator[bytes] = generate(cfg)
        self._n = resume or 0
        if self._n:
            self._it = itertools.islice(self._it, self._n, None)
        self._limit = limit
        self._batch = batch

    def next_batch(self) -> list[RawRecord]:
        take = self._batch if self._limit is None else min(self._batch, self._limit - self._n)
        out = [
            RawRecord(line, f"sim:{self._n + i + 1}")
            for i, line in enumerate(itertools.islice(self._it, max(take, 0)))
        ]
        if not out:
            raise StopIteration
        self._n += len(out)
        return out

    def snapshot(self) -> int:
        return self._n


class SimulatorSource(FixedPartitionedSource[RawRecord, int]):
    """The built-in simulator as a dataflow source (one partition, resumable by count)."""

    def __init__(self, cfg: SimConfig, limit: int | None = None, batch_size: int = 1000) -> None:
        self._cfg = cfg
        self._limit = limit
        self._batch = batch_size

    def list_parts(self) -> list[str]:
        return ["simulator"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _SimPartition:
        return _SimPartition(self._cfg, self._limit, resume_state, self._batch)


@contextlib.contextmanager
def _api_server(redis_url: str, port: int, home: Path) -> Iterator[str]:
    """``nextbest serve`` in a child process on 127.0.0.1:port, sharing our Redis."""
    env = dict(os.environ, NEXTBEST_REDIS_URL=redis_url, NEXTBEST_LOG_LEVEL="WARNING")
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
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sample_customer(url: str) -> str | None:
    client: redis.Redis = redis.Redis.from_url(url, decode_responses=True)
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
    client: redis.Redis = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match="nb:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    finally:
        client.close()


def run_demo(
    settings: Settings,
    events: int | None,
    customers: int,
    port: int | None,
    keep: bool = False,
) -> int:
    """Run the demo; bounded when ``events`` is given (prints the summary and exits). Each demo
    starts from an empty store unless ``keep``."""
    from dataflows.deadletters import DeadLetterFileSink, SegmentEventsFileSink
    from dataflows.flow import FlowStats, build_flow
    from dataflows.metrics import serve_metrics
    from dataflows.sinks import RedisSink
    from nextbest.running import (
        Progress,
        flow_config,
        print_summary,
        progress_line,
        run_flow,
        sink_options,
    )
    from nextbest.runtime import redis_url

    home = settings.home_path
    home.mkdir(parents=True, exist_ok=True)
    port = port or settings.port
    if events is not None:
        customers = max(50, min(customers, events // 40))
    # longer than the churn horizon (90 days), so that the churn model sees customers churn
    cfg = SimConfig(customers=customers, days=150, seed=7, bad_rate=0.005)
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
    with redis_url(settings) as url, _api_server(url, port, home) as base:
        if not keep:
            _clean(url)
        serve_metrics(settings.metrics_port)
        print(f"nextbest demo: Redis {url}; API {base} (docs: {base}/docs)", file=sys.stderr)
        print(
            f"streaming simulated events of {cfg.customers:,} customers over {cfg.days} days"
            + (f" (first {events:,} events)" if events else ""),
            file=sys.stderr,
        )
        stats = FlowStats()
        flow = build_flow(
            SimulatorSource(cfg, limit=events, batch_size=settings.batch_size),
            RedisSink(url, sink_options(settings)),
            DeadLetterFileSink(dead_letter, sink_options(settings)),
            source_label="simulator",
            config=flow_config(settings, redis_url=url),
            segment_sink=SegmentEventsFileSink(segment_events, sink_options(settings)),
        )
        t0 = time.perf_counter()
        with Progress(lambda: progress_line(stats, t0), interval=2.0):
            run_flow(flow)
        summary = stats.as_dict(time.perf_counter() - t0)
        print_summary(summary, False, str(dead_letter))
        print(f"segment transitions: {segment_events}", file=sys.stderr)
        if events is not None:  # bounded: the API stops with us, so no curl lines for it
            return 0
        cid = _sample_customer(url) or "c-1"
        print("\nTry:")
        print(f"  curl -s {base}/v1/customers/{cid}/profile")
        print(f"  curl -s '{base}/v1/customers/{cid}/profile?as_of=2026-02-01T00:00:00Z'")
        print(f"  curl -s {base}/v1/models")
        print(f"  curl -s {base}/v1/segments")
        print(f"  curl -s '{base}/v1/segments/cart_abandoned/members?limit=5'")
        print(f"  curl -s {base}/readyz")
        print(f"  curl -s {base}/metrics | grep nextbest_")
        print(f"  open {base}/docs")
        sys.stdout.flush()
        print("\nThe API keeps serving; press Ctrl-C to stop.", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0
