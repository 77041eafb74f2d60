"""(f) Next-best-action latency against the trivial endpoint of the same server, with Locust.

How it is measured:

* The bench's Redis is flushed and ``customers`` real profiles are written into it with the real
  code (:func:`features.profile.ingest` and :func:`features.store.write_states`): each customer
  browsed in four sessions over the last three days, bought three times and has two items in the
  cart now, so that every one of the :data:`ACTION_COUNT` actions of the bench catalogue
  (:func:`bench_catalog`, written to a temporary file) is eligible on channel ``web``. The
  catalogue has no daily limits (neither on the channel nor on an action) and epsilon 0.1.
* ``python -m nextbest serve`` runs as a subprocess with ONE uvicorn process (``serve`` has no
  workers option: one process, one event loop), on a free port on 127.0.0.1, with
  ``NEXTBEST_ACTIONS`` (the bench catalogue), ``NEXTBEST_DECISION_LOG`` (a JSONL file) and the
  bench's Redis and broker (the broker only backs ``POST /v1/events``, idle here).
* Locust (``python -m locust --headless``, :mod:`bench.locustfile`, ``FastHttpUser``) drives it
  from the same machine. Throughput runs: ``users`` users, each sending its next request as soon as
  the previous is answered, for ``duration`` seconds, first ``GET /healthz`` then
  ``GET /v1/customers/{random bench customer}/next-best-action?channel=web&n=3``, alternated
  ``rounds`` times, so the ratio NBA/trivial requests/s is of neighbouring runs (closed loop at
  saturation: the latency there includes queueing behind the other users' requests). Then paced
  runs: both endpoints at about half the NBA throughput measured, with exponential waits between
  a user's requests (about Poisson arrivals), where queueing does not dominate the latency.
* Client-side p50/p99 are exact (from Locust's request events); server-side p50/p99 are
  estimated (linear within a bucket, as Prometheus' ``histogram_quantile``) from the difference of
  the server's ``/metrics`` histograms ``nextbest_http_request_duration_seconds`` (per route) and
  ``nextbest_decision_seconds`` before and after each run. CPU seconds of the server process and
  of Locust are read per run: on a small machine the load generator and the server share the
  cores, and whichever saturates first caps the requests/s.
* Correctness under load: every answer must be a 200, not degraded, with no excluded action
  (Locust checks each body); checks with ``n=10`` (every customer before the load, a sample
  after it) must list :data:`ACTION_COUNT` actions (``len(actions) + len(excluded) == 10``, all
  eligible); and the decision log must have exactly one line per NBA request answered.

Aims (reported, never asserted): NBA p99 <= :data:`AIM_P99_MS` and NBA requests/s >=
:data:`AIM_RATIO` x the trivial endpoint's.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.full import BenchError, tail
from bench.services import REPO, Services, nextbest_command
from bench.stats import summary
from features.profile import ProfileState, ingest, new_state
from features.store import write_states
from nextbest.runtime import free_port
from schemas.events import Event, Item

log = logging.getLogger("bench")

#: Aims from the next-best-action issue: reported against, never asserted.
AIM_P99_MS: Final = 5.0
AIM_RATIO: Final = 0.5
#: Actions in the bench catalogue, all eligible for every bench customer on ``web``.
ACTION_COUNT: Final = 10
#: Customer ids are ``PREFIX0``, ``PREFIX1``, ...
PREFIX: Final = "nbb-"
LOCUSTFILE: Final = Path(__file__).resolve().parent / "locustfile.py"
#: Route label of the NBA route in ``nextbest_http_request_duration_seconds``.
NBA_ROUTE: Final = "/v1/customers/{customer_id}/next-best-action"
RECO_ROUTE: Final = "/v1/customers/{customer_id}/recommendations"
TRIVIAL_ROUTE: Final = "/healthz"
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
#: Server processes the section starts: ``nextbest serve`` runs uvicorn in its own process.
SERVER_PROCESSES: Final = 1


def bench_catalog() -> str:
    """The bench's action catalogue: ten actions on ``web``, all eligible for a bench customer,
    with no daily limits (so no serve can block another during the run), epsilon 0.1."""
    return """\
# nextbest bench (f): ten actions, all eligible for every bench customer on web, no limits.
version: 1
exploration: {policy: epsilon_greedy, epsilon: 0.1}
channels:
  web: {fallback: recommended_products}
actions:
  - id: cart_reminder
    description: Remind the customer of the items left in the cart
    channels: [web]
    eligibility: {feature: cart_items, op: ge, value: 1}
    value: {feature: cart_value, times: 1.0, default: 0}
    prior: 0.12
    payload: {template: cart_reminder}
  - id: free_shipping
    description: Free shipping on this order
    channels: [web]
    eligibility:
      all:
        - {feature: cart_items, op: ge, value: 1}
        - {feature: cart_value, op: lt, value: 1000}
    value: {feature: cart_value, times: 0.9, default: 0}
    prior: 0.08
    payload: {code: FREESHIP}
  - id: repeat_discount
    description: 10 % off the next order for a buyer
    channels: [web]
    eligibility: {feature: purchases_total, op: ge, value: 1}
    value: {feature: avg_order_value, times: 0.9, default: 30, max: 500}
    prior: 0.04
    payload: {discount_pct: 10}
  - id: new_arrivals
    description: New arrivals in the customer's top category
    channels: [web]
    eligibility:
      all:
        - {feature: top_categories, op: exists}
        - {feature: sessions_30d, op: ge, value: 2}
    value: {feature: avg_order_value, times: 0.5, default: 20, max: 300}
    prior: 0.03
    payload: {banner: new_arrivals, category: "{top_categories}"}
  - id: loyalty_invitation
    description: Invitation to the loyalty programme
    channels: [web]
    eligibility:
      any:
        - {feature: purchases_total, op: ge, value: 3}
        - {feature: revenue_total, op: ge, value: 500}
    value: 25
    weight: 0.8
    prior: 0.05
  - id: recent_buyer_upsell
    description: Accessories for what was bought this month
    channels: [web]
    eligibility: {feature: purchases_30d, op: ge, value: 1}
    value: {feature: avg_order_value, times: 0.3, default: 10}
    prior: 0.05
  - id: vip_preview
    description: Early access to the sale for big spenders
    channels: [web]
    eligibility: {feature: revenue_total, op: ge, value: 50}
    value: 15
    prior: 0.04
  - id: browse_reminder
    description: The products viewed this week
    channels: [web]
    eligibility: {feature: product_views_7d, op: ge, value: 2}
    value: {feature: avg_order_value, times: 0.2, default: 5}
    prior: 0.06
  - id: active_survey
    description: A short survey for a recently active customer
    channels: [web]
    eligibility: {feature: days_since_last_seen, op: le, value: 7}
    value: 2
    prior: 0.1
  - id: recommended_products
    description: A "recommended for you" product slot
    channels: [web]
    value: {feature: avg_order_value, times: 0.2, default: 8, max: 100}
    prior: 0.04
    payload: {slot: recommendations}
"""


def customer_events(cid: str, now_ms: int, rng: random.Random) -> list[Event]:
    """The history of one bench customer, ending an hour before ``now_ms``: four sessions over
    three days with a purchase in each of the first three, two items in the cart in the last."""
    events: list[Event] = []
    cats = ("shoes", "bags", "shirts", "hats")

    def add(ts: int, type_: str, session: int, **kw: Any) -> None:
        n = len(events)
        events.append(
            Event(event_id=f"{cid}-{n}", type=type_, ts=ts, customer_id=cid,
                  session_id=f"{cid}-s{session}", **kw)
        )  # fmt: skip

    for s in range(3):
        t = now_ms - (3 - s) * DAY_MS + rng.randrange(HOUR_MS)
        cat = rng.choice(cats)
        price = round(rng.uniform(20, 120), 2)
        add(t, "page_view", s)
        add(t + 10_000, "product_view", s, product_id=f"p-{cat}-{s}", category=cat, price=price)
        add(
            t + 60_000,
            "purchase",
            s,
            order_id=f"{cid}-o{s}",
            total=price,
            currency="EUR",
            items=[Item(product_id=f"p-{cat}-{s}", category=cat, price=price)],
        )
    t = now_ms - HOUR_MS - rng.randrange(HOUR_MS)
    for i in range(2):
        cat = rng.choice(cats)
        price = round(rng.uniform(10, 60), 2)
        add(t + i * 20_000, "product_view", 3, product_id=f"c-{cat}-{i}", category=cat, price=price)
        add(t + i * 20_000 + 5_000, "add_to_cart", 3, product_id=f"c-{cat}-{i}", category=cat,
            price=price, quantity=1)  # fmt: skip
    return events


def seed_customers(client: redis.Redis, count: int, now_ms: int, seed: int = 7) -> int:
    """Write ``count`` bench customers' profiles into Redis (the real fold and writer)."""
    rng = random.Random(seed)
    states: list[ProfileState] = []
    for i in range(count):
        cid = f"{PREFIX}{i}"
        state = new_state("c:" + cid)
        for ev in customer_events(cid, now_ms, rng):
            outcome = ingest(state, ev, 600_000)
            if outcome != "applied":
                raise BenchError(f"bench customer {cid}: event {ev.event_id} was {outcome}")
        states.append(state)
    written = 0
    for start in range(0, len(states), 200):
        written += write_states(client, states[start : start + 200])
    return written


#: Products of the recommendations bench's catalogue besides the bench customers' own.
RECO_PRODUCTS: Final = 2000


def seed_products(client: redis.Redis, now_ms: int, seed: int = 7) -> int:
    """Write product knowledge with the real code (:mod:`features.products`): a catalogue of
    :data:`RECO_PRODUCTS` products in the bench categories with popularity over the last weeks,
    and every bench customer's product (the seeds of item-to-item) with 30 neighbours per
    relation; then the popularity board's lists. Returns the products written."""
    from features import popularity as popular
    from features import products as pr
    from features.store import POPULAR_KEY, product_key

    rng = random.Random(seed)
    cats = ("shoes", "bags", "shirts", "hats")
    catalog = [f"q-{cats[i % 4]}-{i}" for i in range(RECO_PRODUCTS)]
    own = [f"p-{c}-{s}" for c in cats for s in range(3)] + [f"c-{c}-{i}" for c in cats
                                                             for i in range(2)]  # fmt: skip
    board = popular.Board()
    pipe = client.pipeline(transaction=False)
    for pid in [*catalog, *own]:
        cat = pid.split("-")[1]
        s = pr.ProductState(pid)
        for _ in range(1 + int(rng.expovariate(1 / 20))):
            kind = rng.choice(("product_view", "product_view", "add_to_cart", "purchase"))
            s.touch(kind, now_ms - rng.randrange(21 * DAY_MS), cat, round(rng.uniform(5, 99), 2))
        if pid in own:
            for relation in pr.RELATIONS:
                for other in rng.sample(catalog, 30):
                    for _ in range(1 + int(rng.expovariate(1.0))):
                        ts = now_ms - rng.randrange(21 * DAY_MS)
                        s.pair(relation, other, other.split("-")[1], ts)
        doc = pr.project(s)
        board.note(popular.note_of(doc))
        pipe.set(product_key(pid), orjson.dumps(doc))
    lists = {name: orjson.dumps(items) for name, items in board.lists().items()}
    pipe.delete(POPULAR_KEY)
    pipe.hset(POPULAR_KEY, mapping=lists)  # type: ignore[arg-type]
    pipe.execute()
    return len(catalog) + len(own)


# ---------------------------------------------------------------------------------------------
# the server


@dataclass
class Server:
    """The running ``nextbest serve``."""

    proc: subprocess.Popen[bytes]
    base_url: str
    home: Path
    decision_log: Path
    ready_seconds: float

    def check_alive(self) -> None:
        """Raise :class:`BenchError` with the tail of its stderr when the server has exited."""
        if self.proc.poll() is not None:
            err = (self.home / "serve.stderr").read_text(errors="replace")
            raise BenchError(
                f"nextbest serve exited with code {self.proc.returncode}:\n{tail(err)}"
            )

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """``GET path``: the status and the body (an HTTP error status is returned, not raised)."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process so far (``/proc``)."""
        return proc_cpu_seconds(self.proc.pid)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from ``/proc/PID/stat``."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serving(
    services: Services, home: Path, catalog: Path, ready_timeout: float = 90.0
) -> Iterator[Server]:
    """``python -m nextbest serve`` on a free loopback port (one process), until the block ends."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = services.cli_env(home)
    env["NEXTBEST_ACTIONS"] = str(catalog)
    env["NEXTBEST_DECISION_LOG"] = str(home / "decisions.jsonl")
    env["NEXTBEST_HOST"] = "127.0.0.1"
    env["NEXTBEST_PORT"] = str(port)
    env["NEXTBEST_LOG_LEVEL"] = "WARNING"
    if not services.brokers:
        env.pop("NEXTBEST_KAFKA_BROKERS", None)  # serve starts its embedded broker then
    t0 = time.perf_counter()
    with (home / "serve.stdout").open("wb") as out, (home / "serve.stderr").open("wb") as err:
        proc = subprocess.Popen(
            nextbest_command("serve", "--host", "127.0.0.1", "--port", str(port)),
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", home, home / "decisions.jsonl", 0.0)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            server.check_alive()
            with contextlib.suppress(OSError):
                if server.get("/readyz", timeout=2.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"nextbest serve not ready after {ready_timeout:g} s")
            time.sleep(0.1)
        server.ready_seconds = time.perf_counter() - t0
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# ---------------------------------------------------------------------------------------------
# server-side histograms


Buckets = dict[float, float]


def histograms(text: str) -> dict[tuple[str, str], Buckets]:
    """The cumulative buckets (``le`` -> count) of the two latency histograms the bench reads,
    keyed by ``("http", route)`` and ``("decision", channel)``."""
    out: dict[tuple[str, str], Buckets] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "nextbest_http_request_duration_seconds":
            kind, label = "http", "route"
        elif fam.name == "nextbest_decision_seconds":
            kind, label = "decision", "channel"
        else:
            continue
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                out.setdefault((kind, s.labels[label]), {})[float(s.labels["le"])] = s.value
    return out


def bucket_delta(after: Buckets, before: Buckets | None) -> Buckets:
    """``after - before``, bucket by bucket."""
    return {le: n - (before or {}).get(le, 0.0) for le, n in after.items()}


def add_buckets(a: Buckets, b: Buckets) -> Buckets:
    """The sum of two histograms' buckets."""
    return {le: a.get(le, 0.0) + b.get(le, 0.0) for le in sorted(set(a) | set(b))}


def bucket_quantile(buckets: Buckets, q: float) -> float | None:
    """The ``q`` quantile (0..1) of cumulative ``buckets`` in the unit of the bounds, linear
    within the bucket it falls in (Prometheus' ``histogram_quantile``); in the ``+Inf`` bucket:
    the largest finite bound. ``None`` without observations.

    >>> bucket_quantile({0.001: 0.0, 0.0025: 50.0, 0.005: 100.0, math.inf: 100.0}, 0.5)
    0.0025
    >>> bucket_quantile({0.001: 20.0, 0.0025: 100.0, math.inf: 100.0}, 0.6)
    0.00175
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        n = buckets[le]
        if n >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * ((rank - below) / (n - below) if n > below else 1.0)
        lower, below = le, n
    return lower


def server_side(buckets: Buckets | None) -> dict[str, Any]:
    """Count and estimated p50/p99 (ms) of a histogram delta."""
    if not buckets:
        return {"count": 0}
    count = int(max(buckets.values()))
    p50, p99 = bucket_quantile(buckets, 0.5), bucket_quantile(buckets, 0.99)
    return {
        "count": count,
        "p50_ms": None if p50 is None else round(p50 * 1000, 3),
        "p99_ms": None if p99 is None else round(p99 * 1000, 3),
    }


# ---------------------------------------------------------------------------------------------
# Locust


def locust_version() -> str:
    """The installed Locust's version."""
    return importlib.metadata.version("locust")


def run_locust(
    server: Server,
    target: str,
    *,
    users: int,
    duration: int,
    customers: int,
    rate: float,
    workdir: Path,
    tag: str,
) -> dict[str, Any]:
    """One headless Locust run against ``target`` (``healthz`` or ``nba``); its figures, the
    server's histograms and the CPU both processes used."""
    out = workdir / f"{tag}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXTBEST_", "LOCUST_"))}
    env.update(
        {
            "NB_BENCH_TARGET": target,
            "NB_BENCH_CUSTOMERS": str(customers),
            "NB_BENCH_PREFIX": PREFIX,
            "NB_BENCH_RATE": str(rate),
            "NB_BENCH_USERS": str(users),
            "NB_BENCH_OUT": str(out),
        }
    )
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(max(users, 100)), "-t", f"{duration}s",
        "--host", server.base_url, "--csv", str(workdir / tag), "--reset-stats",
        "--stop-timeout", "5", "--only-summary", "--loglevel", "WARNING",
        "--exit-code-on-error", "0",
    ]  # fmt: skip
    before = histograms(server.get("/metrics")[1].decode())
    log_before = line_count(server.decision_log)
    cpu_server = server.cpu_seconds()
    cpu_children = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        env=env,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    wall = time.perf_counter() - t0
    cpu_locust = _children_cpu() - cpu_children
    cpu_server = server.cpu_seconds() - cpu_server
    server.check_alive()
    if proc.returncode != 0 or not out.exists():
        raise BenchError(f"locust exited with code {proc.returncode}:\n{tail(proc.stderr)}")
    after = histograms(server.get("/metrics")[1].decode())
    log_lines = line_count(server.decision_log) - log_before
    rec = orjson.loads(out.read_bytes())
    times = [float(x) for x in rec["times_ms"]]
    window = float(rec["window_s"])
    route = {"nba": NBA_ROUTE, "reco": RECO_ROUTE}.get(target, TRIVIAL_ROUTE)
    http = bucket_delta(after.get(("http", route), {}), before.get(("http", route)))
    result: dict[str, Any] = {
        "target": target,
        "users": users,
        "paced_rate_per_s": rate or None,
        "duration_s": duration,
        "requests": len(times),
        "failures": int(rec["timed_failures"]),
        "failed_total": int(rec["failed_total"]),
        "ok_total": int(rec["ok_total"]),
        "failure_reasons": rec["reasons"],
        "requests_per_s": round(len(times) / window, 1) if window > 0 else 0.0,
        "window_s": round(window, 2),
        "client_ms": summary(times, 3),
        "server_http": server_side(http),
        "_http_buckets": http,
        "_times": times,
        "cpu_seconds": {
            "server": round(cpu_server, 2),
            "locust": round(cpu_locust, 2),
            "wall": round(wall, 2),
        },
        # share of one core each process used over the run (1.0: a whole core)
        "cpu_busy": {
            "server": round(cpu_server / wall, 2) if wall > 0 else None,
            "locust": round(cpu_locust / wall, 2) if wall > 0 else None,
        },
        "locust_csv": locust_csv(workdir / f"{tag}_stats.csv"),
    }
    if target == "nba":
        dec = bucket_delta(after.get(("decision", "web"), {}), before.get(("decision", "web")))
        result["server_decision"] = server_side(dec)
        result["_decision_buckets"] = dec
        result["decision_log_lines"] = log_lines
    return result


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def locust_csv(path: Path) -> dict[str, Any]:
    """Locust's own ``Aggregated`` row (its percentiles are rounded to whole milliseconds)."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    head = lines[0].split(",")
    for line in lines[1:]:
        row = dict(zip(head, line.split(","), strict=False))
        if row.get("Name") == "Aggregated":
            return {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "requests_per_s": round(float(row["Requests/s"]), 1),
                "p50_ms": _num(row.get("50%")),
                "p99_ms": _num(row.get("99%")),
            }
    return {}


def _num(raw: str | None) -> float | None:
    try:
        return float(raw) if raw not in (None, "N/A") else None
    except ValueError:
        return None


def line_count(path: Path) -> int:
    """Lines of a file (0 when it does not exist)."""
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


# ---------------------------------------------------------------------------------------------
# correctness spot checks


def spot_check(server: Server, ids: list[str]) -> dict[str, Any]:
    """One NBA request with ``n=10`` per customer id: each must be a 200, not degraded, and list
    every action of the catalogue as eligible."""
    bad: list[str] = []
    considered: list[int] = []
    for cid in ids:
        status, body = server.get(f"/v1/customers/{cid}/next-best-action?channel=web&n=10")
        if status != 200:
            bad.append(f"{cid}: status {status}")
            continue
        doc = orjson.loads(body)
        n = len(doc["actions"]) + len(doc["excluded"])
        considered.append(n)
        if doc["degraded"]:
            bad.append(f"{cid}: degraded ({doc['reason']})")
        elif n != ACTION_COUNT or doc["excluded"]:
            bad.append(f"{cid}: {len(doc['actions'])} actions, excluded {doc['excluded']}")
        elif doc["customer_id"] != cid or not any(a["served"] for a in doc["actions"]):
            bad.append(f"{cid}: answer for {doc['customer_id']}, nothing served")
    return {
        "requests": len(ids),
        "actions_considered": sorted(set(considered)),
        "problems": bad[:10],
        "ok": not bad,
    }


# ---------------------------------------------------------------------------------------------
# the section


def _pool(runs: list[dict[str, Any]], key: str) -> Buckets:
    out: Buckets = {}
    for r in runs:
        out = add_buckets(out, r.get(key, {}))
    return out


def _mean(xs: list[float | None]) -> float | None:
    ys = [x for x in xs if x is not None]
    return round(sum(ys) / len(ys), 2) if ys else None


def _endpoint(runs: list[dict[str, Any]], decision: bool) -> dict[str, Any]:
    times = [t for r in runs for t in r["_times"]]
    rates = [float(r["requests_per_s"]) for r in runs]
    client = summary(times, 3)
    out: dict[str, Any] = {
        "requests_per_s": round(sum(rates) / len(rates), 1) if rates else 0.0,
        "runs_requests_per_s": rates,
        "p50_ms": client.get("p50"),
        "p99_ms": client.get("p99"),
        "client_ms": client,
        "server_http": server_side(_pool(runs, "_http_buckets")),
        "failures": sum(int(r["failures"]) for r in runs),
        "cpu_seconds_server": round(sum(r["cpu_seconds"]["server"] for r in runs), 2),
        "cpu_seconds_locust": round(sum(r["cpu_seconds"]["locust"] for r in runs), 2),
        "cpu_busy_server": _mean([r["cpu_busy"]["server"] for r in runs]),
        "cpu_busy_locust": _mean([r["cpu_busy"]["locust"] for r in runs]),
    }
    if decision:
        out["server_decision"] = server_side(_pool(runs, "_decision_buckets"))
    return out


def measure_nba(
    services: Services,
    *,
    customers: int = 500,
    users: int = 10,
    duration: int = 15,
    rounds: int = 2,
    latency_duration: int | None = None,
    spot_checks: int = 5,
) -> dict[str, Any]:
    """Seed the customers, start ``serve``, run Locust (see the module) and report."""
    client = services.client()
    try:
        client.flushall()
        now_ms = int(time.time() * 1000)
        written = seed_customers(client, customers, now_ms)
        products = seed_products(client, now_ms)
    finally:
        client.close()
    workdir = Path(tempfile.mkdtemp(prefix="nba-", dir=services.workdir))
    catalog = workdir / "actions.yaml"
    catalog.write_text(bench_catalog())
    rng = random.Random(11)
    runs: list[dict[str, Any]] = []
    paced: list[dict[str, Any]] = []
    with serving(services, workdir / "serve-home", catalog) as server:
        log.info("bench: nba: serve ready after %.1f s (%s)", server.ready_seconds, server.base_url)
        # every customer once before the load (all 10 actions eligible), a sample after it
        checks = [spot_check(server, [f"{PREFIX}{i}" for i in range(customers)])]
        kw: dict[str, Any] = {"customers": customers, "workdir": workdir}
        # warm-up (connections, first-use paths): a short run of each, not reported
        for target in ("healthz", "nba"):
            run_locust(server, target, users=users, duration=1, rate=0, tag=f"warm-{target}", **kw)
        for i in range(rounds):
            for target in ("healthz", "nba"):
                log.info("bench: nba: round %d, %s, %d users, %d s", i + 1, target, users, duration)
                r = run_locust(
                    server,
                    target,
                    users=users,
                    duration=duration,
                    rate=0,
                    tag=f"r{i}-{target}",
                    **kw,
                )
                runs.append(r)
        nba_runs = [r for r in runs if r["target"] == "nba"]
        nba_rate = sum(float(r["requests_per_s"]) for r in nba_runs) / len(nba_runs)
        pace = max(10.0, round(nba_rate / 2, -1))
        for target in ("healthz", "nba"):
            log.info("bench: nba: latency run, %s at %g requests/s", target, pace)
            paced.append(
                run_locust(
                    server,
                    target,
                    users=users,
                    duration=latency_duration or duration,
                    rate=pace,
                    tag=f"paced-{target}",
                    **kw,
                )
            )
        reco = _reco_runs(server, users, duration, latency_duration, rounds, kw)
        sample = [f"{PREFIX}{rng.randrange(customers)}" for _ in range(spot_checks)]
        checks.append(spot_check(server, sample))
        server.check_alive()
        ready_s = server.ready_seconds
    trivial = [r for r in runs if r["target"] == "healthz"]
    nba = _endpoint(nba_runs, decision=True)
    triv = _endpoint(trivial, decision=False)
    ratio = nba["requests_per_s"] / triv["requests_per_s"] if triv["requests_per_s"] else 0.0
    ratios = [
        round(float(n["requests_per_s"]) / float(t["requests_per_s"]), 3)
        for t, n in zip(trivial, nba_runs, strict=True)
        if float(t["requests_per_s"]) > 0
    ]
    all_nba = [r for r in (*runs, *paced) if r["target"] == "nba"]
    answered = sum(int(r["ok_total"]) + int(r["failed_total"]) for r in all_nba)
    logged = sum(int(r["decision_log_lines"]) for r in all_nba)
    failures = sum(int(r["failed_total"]) for r in (*runs, *paced))
    paced_out = {
        "rate_per_s": pace,
        "basis": "about half the mean NBA throughput of the runs above, both endpoints, "
        "exponential waits between a user's requests",
        "healthz": _slim(paced[0]),
        "nba": _slim(paced[1]),
    }
    p99 = nba["p99_ms"]
    paced_p99 = paced[1]["client_ms"].get("p99")
    for r in (*runs, *paced):
        r.pop("_http_buckets", None)
        r.pop("_decision_buckets", None)
        r.pop("_times", None)
    return {
        "server_processes": SERVER_PROCESSES,
        "server": "python -m nextbest serve: one uvicorn process (one event loop), no workers",
        "cpus": os.cpu_count(),
        "shared_machine": "Locust, the server and Redis share the machine's CPUs",
        "load_generator": f"locust {locust_version()} (FastHttpUser, headless, one process)",
        "customers": customers,
        "profiles_written": written,
        "actions": ACTION_COUNT,
        "users": users,
        "duration_s": duration,
        "rounds": rounds,
        "serve_ready_seconds": round(ready_s, 2),
        "trivial": triv,
        "nba": nba,
        "nba_over_trivial": round(ratio, 3),
        "runs_nba_over_trivial": ratios,
        "paced": paced_out,
        "runs": runs,
        "correctness": {
            "failures": failures,
            "nba_requests_answered": answered,
            "decision_log_lines": logged,
            "one_log_line_per_request": answered == logged,
            "spot_checks": checks,
            "ok": failures == 0 and answered == logged and all(c["ok"] for c in checks),
        },
        "meets_p99_aim": p99 is not None and p99 <= AIM_P99_MS,
        "meets_p99_aim_paced": paced_p99 is not None and paced_p99 <= AIM_P99_MS,
        "meets_ratio_aim": ratio >= AIM_RATIO,
        "aims": {"nba_p99_ms_max": AIM_P99_MS, "nba_over_trivial_min": AIM_RATIO},
        "reco": {"products_written": products, **reco},
    }


def _reco_runs(
    server: Server,
    users: int,
    duration: int,
    latency_duration: int | None,
    rounds: int,
    kw: dict[str, Any],
) -> dict[str, Any]:
    """Recommendations (``n=10``) against ``/healthz`` of the same server: closed-loop rounds
    alternating the two, then both paced at about half the recommendations' throughput."""
    run_locust(server, "reco", users=users, duration=1, rate=0, tag="warm-reco", **kw)
    runs = []
    for i in range(rounds):
        for target in ("healthz", "reco"):
            log.info("bench: reco: round %d, %s, %d users, %d s", i + 1, target, users, duration)
            runs.append(run_locust(server, target, users=users, duration=duration, rate=0,
                                   tag=f"reco-r{i}-{target}", **kw))  # fmt: skip
    trivial = [r for r in runs if r["target"] == "healthz"]
    reco = [r for r in runs if r["target"] == "reco"]
    rate = sum(float(r["requests_per_s"]) for r in reco) / len(reco)
    pace = max(10.0, round(rate / 2, -1))
    paced = {}
    for target in ("healthz", "reco"):
        log.info("bench: reco: latency run, %s at %g requests/s", target, pace)
        paced[target] = run_locust(server, target, users=users,
                                   duration=latency_duration or duration, rate=pace,
                                   tag=f"reco-paced-{target}", **kw)  # fmt: skip
    t, r = _endpoint(trivial, decision=False), _endpoint(reco, decision=False)
    ratio = r["requests_per_s"] / t["requests_per_s"] if t["requests_per_s"] else 0.0
    paced_p99 = paced["reco"]["client_ms"].get("p99")
    failures = sum(int(x["failed_total"]) for x in (*runs, *paced.values()))
    for x in (*runs, *paced.values()):
        for k in ("_http_buckets", "_decision_buckets", "_times"):
            x.pop(k, None)
    return {
        "trivial": t,
        "reco": r,
        "reco_over_trivial": round(ratio, 3),
        "paced": {
            "rate_per_s": pace,
            "healthz": _slim(paced["healthz"]),
            "reco": _slim(paced["reco"]),
        },
        "failures": failures,
        # (the first reasons of each run's failures: "degraded: ..." is the Redis budget's
        # answer on an overloaded machine, anything else is wrong)
        "failure_reasons": [why for x in (*runs, *paced.values()) for why in x["failure_reasons"]],
        "requests": sum(int(x["requests"]) for x in (*runs, *paced.values())),
        "meets_p99_aim": r["p99_ms"] is not None and r["p99_ms"] <= AIM_P99_MS,
        "meets_p99_aim_paced": paced_p99 is not None and paced_p99 <= AIM_P99_MS,
        "aims": {"reco_p99_ms_max": AIM_P99_MS},
    }


def _slim(run: Mapping[str, Any]) -> dict[str, Any]:
    c = run["client_ms"]
    out = {
        "requests_per_s": run["requests_per_s"],
        "p50_ms": c.get("p50"),
        "p99_ms": c.get("p99"),
        "client_ms": c,
        "server_http": run["server_http"],
        "failures": run["failures"],
        "failure_reasons": run["failure_reasons"],
        "cpu_seconds": run["cpu_seconds"],
        "cpu_busy": run["cpu_busy"],
    }
    if "server_decision" in run:
        out["server_decision"] = run["server_decision"]
    return out


# ---------------------------------------------------------------------------------------------
# report


def render_nba(f: Mapping[str, Any]) -> list[str]:
    """The readable lines of the section."""
    if "error" in f:
        return [f"(f) nba        ERROR: {f['error']}"]
    t, n = f["trivial"], f["nba"]
    sh, sn, sd = t["server_http"], n["server_http"], n["server_decision"]
    pc = f["paced"]
    ok = f["correctness"]

    def aim(x: object) -> str:
        return "met" if x else "NOT met"

    def ms(x: object) -> str:
        return f"{x:.2f}" if isinstance(x, int | float) else "-"

    lines = [
        f"(f) nba        {f['load_generator']} -> {f['server']} ({f['server_processes']} server "
        f"process); {f['cpus']} CPUs shared by Locust, the server and Redis",
        f"    {f['customers']} customers, {f['actions']} eligible actions each; "
        f"{f['users']} users, {f['rounds']} x ({f['duration_s']} s /healthz, "
        f"{f['duration_s']} s NBA n=3), closed loop",
        f"    trivial GET /healthz    {t['requests_per_s']:>8,.0f} requests/s  client p50 "
        f"{ms(t['p50_ms'])} ms  p99 {ms(t['p99_ms'])} ms   server p50 {ms(sh.get('p50_ms'))} ms  "
        f"p99 {ms(sh.get('p99_ms'))} ms   (busy: server {t['cpu_busy_server']}, Locust "
        f"{t['cpu_busy_locust']} of a core)",
        f"    NBA  GET .../next-best-action {n['requests_per_s']:>8,.0f} requests/s  client p50 "
        f"{ms(n['p50_ms'])} ms  p99 {ms(n['p99_ms'])} ms   server p50 {ms(sn.get('p50_ms'))} ms  "
        f"p99 {ms(sn.get('p99_ms'))} ms (decide: p50 {ms(sd.get('p50_ms'))}, p99 "
        f"{ms(sd.get('p99_ms'))})   (busy: server {n['cpu_busy_server']}, Locust "
        f"{n['cpu_busy_locust']})",
        f"    ratio NBA/trivial requests/s {f['nba_over_trivial']:.3f} (runs "
        f"{f['runs_nba_over_trivial']})   aim >= {AIM_RATIO}: {aim(f['meets_ratio_aim'])}",
        f"    NBA p99 at saturation {ms(n['p99_ms'])} ms   aim <= {AIM_P99_MS:g} ms: "
        f"{aim(f['meets_p99_aim'])}",
    ]
    for name in ("healthz", "nba"):
        r = pc[name]
        srv = r["server_http"]
        extra = ""
        if "server_decision" in r:
            extra = f" (decide: p50 {ms(r['server_decision'].get('p50_ms'))}, p99 " + (
                f"{ms(r['server_decision'].get('p99_ms'))})"
            )
        lines.append(
            f"    paced at ~{pc['rate_per_s']:g}/s {name:<8} {r['requests_per_s']:>7,.0f} "
            f"requests/s  client p50 {ms(r['p50_ms'])} ms  p99 {ms(r['p99_ms'])} ms   server p50 "
            f"{ms(srv.get('p50_ms'))} ms  p99 {ms(srv.get('p99_ms'))} ms{extra}"
        )
    lines.append(
        f"    NBA p99 paced {ms(pc['nba']['p99_ms'])} ms   aim <= {AIM_P99_MS:g} ms: "
        f"{aim(f['meets_p99_aim_paced'])}"
    )
    spots = sum(c["requests"] for c in ok["spot_checks"])
    spot = "all listed 10 eligible actions" if all(c["ok"] for c in ok["spot_checks"]) else "FAILED"
    lines.append(
        f"    correctness: {ok['failures']} failed or degraded answers; "
        f"{ok['decision_log_lines']:,} decision log lines for {ok['nba_requests_answered']:,} "
        f"NBA answers; {spots} checks with n=10 (every customer before the load, a sample after) "
        f"{spot}"
        f"  -> {'ok' if ok['ok'] else 'NOT ok'}"
    )
    for r in f["runs"] + [pc["healthz"], pc["nba"]]:
        for reason in r.get("failure_reasons", [])[:2]:
            lines.append(f"      {r.get('target', '')} failure: {reason[:160]}")
    rc = f.get("reco")
    if rc:
        t, r, p = rc["trivial"], rc["reco"], rc["paced"]
        lines += [
            f"    recommendations n=10 ({rc['products_written']:,} products): "
            f"{r['requests_per_s']:,.0f} requests/s against /healthz {t['requests_per_s']:,.0f} "
            f"(ratio {rc['reco_over_trivial']:.3f}); client p50 {ms(r['p50_ms'])} ms, p99 "
            f"{ms(r['p99_ms'])} ms at saturation (aim <= {AIM_P99_MS:g} ms: "
            f"{aim(rc['meets_p99_aim'])})",
            f"    recommendations paced at ~{p['rate_per_s']:g}/s: client p50 "
            f"{ms(p['reco']['p50_ms'])} ms, p99 {ms(p['reco']['p99_ms'])} ms (aim <= "
            f"{AIM_P99_MS:g} ms: {aim(rc['meets_p99_aim_paced'])}); /healthz p99 "
            f"{ms(p['healthz']['p99_ms'])} ms; {rc['failures']} failed answers",
        ]
        for r in (p["reco"], p["healthz"]):
            for reason in r.get("failure_reasons", [])[:2]:
                lines.append(f"      reco run failure: {reason[:160]}")
    return lines
