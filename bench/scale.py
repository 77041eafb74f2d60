"""Scale-out bench: ``nextbest run`` with one process and with two, in the same run, and the
single-owner steps' limits.

``python -m bench.scale [--events N] [--json]``

**Processes.** A simulated shop is produced once to a 4-partition topic (keyed as ``simulate
--kafka`` keys) on the bench's own broker; then ``run`` reads it all, from a fresh Redis, as one
process, as a cluster of two processes, and as one process again (the two one-process runs show how
steady the machine was; the ratio uses their mean). Each run is timed from its start (all up,
nothing read) to its last read: the rate is events per second of that span, the CPU is the
processes' user + system time over it. On this 2-core machine two processes share the cores with
Redis and the broker, so the figure says what a second process costs and brings here, not what a
second machine would bring; the CPU per event says what a third process would need.

**Single owners.** The steps that have one owner for the whole stream (each model target, the RFM
population, the popularity board) run on one worker whatever the number of processes. Their
logic is timed in this process on real items: a model owner learning labelled examples (the
default ``logreg`` pipeline: scored, then learned), the RFM owner taking customers' changes of
point, the board taking product notes. With the examples per event the full flow produces
(measured on the same history), that gives the event rate at which each owner fills one core.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.full import BenchError
from bench.nba import proc_cpu_seconds
from bench.services import REPO, Services, nextbest_command, running_services

log = logging.getLogger("bench")

PARTITIONS = 4


def _metric(port: int, name: str) -> float:
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
    except httpx.HTTPError:
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + "{", name + " ")))  # fmt: skip


def produce_history(svc: Services, events: int, seed: int) -> tuple[str, int]:
    """A new 4-partition topic with about ``events`` simulated lines (the simulator's own
    producer: keyed by device, else customer; ``nextbest simulate --kafka``)."""
    from nextbest.runtime import ensure_topics
    from nextbest.simulator import SimConfig, produce_to_kafka

    customers = max(50, events // 45)  # ~1.5 events per person-day over 30 days
    cfg = SimConfig(customers=customers, days=30, seed=seed, bad_rate=0.005)
    topic = f"scale-{seed}-{customers}-{time.time_ns()}"
    ensure_topics(svc.brokers, [topic], PARTITIONS)
    stats = produce_to_kafka(cfg, svc.brokers, topics=(topic, topic))
    return topic, stats.events + stats.bad


def run_processes(
    svc: Services, topic: str, lines: int, processes: int, timeout: float = 1800
) -> dict[str, Any]:
    """``run`` as ``processes`` processes over the topic, from a fresh Redis, until every line
    is read; rate and CPU over the span from its start (every process up, nothing read yet) to
    the last read."""
    from nextbest.runtime import free_port

    client = svc.client()
    try:
        client.flushall()
    finally:
        client.close()
    addresses = ",".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    logs: list[Path] = []
    work = svc.workdir / f"scale-{processes}-{time.time_ns()}"
    for i in range(processes):
        home = work / f"p{i}"
        home.mkdir(parents=True)
        env = svc.cli_env(home)
        env.update({
            "NEXTBEST_TOPIC_CLICKSTREAM": topic, "NEXTBEST_TOPIC_TRANSACTIONS": topic,
            "NEXTBEST_TOPIC_DECISIONS": topic, "NEXTBEST_TOPIC_DEAD_LETTER": f"{topic}-dead",
            "NEXTBEST_TOPIC_SEGMENT_EVENTS": f"{topic}-segments-{processes}",
            "NEXTBEST_IDENTITY_SALT": "bench-scale-salt-0123456789",
        })  # fmt: skip
        if processes > 1:
            env.update({"NEXTBEST_PROCESS_ID": str(i), "NEXTBEST_ADDRESSES": addresses})
        ports.append(int(env["NEXTBEST_METRICS_PORT"]))
        logs.append(home / "run.log")
        with logs[-1].open("wb") as out:
            procs.append(subprocess.Popen(nextbest_command("run", "--json", "--quiet"), env=env,
                                          cwd=REPO, stdout=out, stderr=out))  # fmt: skip
    try:
        # the span: from the last sample with every process up and nothing read, to the first
        # with every line read (a sample every 50 ms)
        t_first = cpu_first = None
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise BenchError(f"{processes} process(es) did not read {lines} lines in time")
            for p, log_path in zip(procs, logs, strict=True):
                if p.poll() is not None:
                    raise BenchError(f"run exited {p.returncode}:\n{log_path.read_text()[-3000:]}")
            counts = [_metric(port, "nextbest_events_read_total") for port in ports]
            now = time.perf_counter()
            if min(counts) == 0 and max(counts) == 0:  # all up, nothing read yet
                t_first, cpu_first = now, sum(proc_cpu_seconds(p.pid) for p in procs)
            if t_first is not None and sum(counts) >= lines:
                t_last, cpu_last = now, sum(proc_cpu_seconds(p.pid) for p in procs)
                break
            time.sleep(0.05)
        assert t_first is not None and cpu_first is not None
        span = max(t_last - t_first, 1e-6)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p, log_path in zip(procs, logs, strict=True):
            if p.wait(300) != 0:
                raise BenchError(f"run exited {p.returncode}:\n{log_path.read_text()[-3000:]}")
        summaries = [orjson.loads(x.read_text().strip().splitlines()[-1]) for x in logs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    events = lines
    learned = examples_learned(svc)
    return {
        "examples_learned": learned,
        "examples_per_line": {t: round(n / lines, 4) for t, n in learned.items()},
        "processes": processes,
        "lines": lines,
        "read_per_process": [s["read"] for s in summaries],
        "seconds": round(span, 3),
        "events_per_s": round(events / span, 1),
        "cpu_seconds": round(cpu_last - cpu_first, 2),
        "cores_busy": round((cpu_last - cpu_first) / span, 2),
        "cpu_ms_per_event": round(1000 * (cpu_last - cpu_first) / max(events, 1), 4),
    }


def owner_limits(n: int = 20_000, seed: int = 7) -> dict[str, Any]:
    """Items per second one core gives each single-owner step's logic (this process)."""
    import random

    from dataflows.steps.rfm import RfmLogic
    from models import labels as lb
    from models.features import FEATURE_NAMES
    from nextbest.settings import Settings

    rng = random.Random(seed)
    cfg = Settings.from_env({}).flow_config()
    out: dict[str, Any] = {}

    # a model owner: examples scored then learned (OnlineModel.learn, as ModelLogic does)
    from models.online import OnlineModel

    model = OnlineModel("churn", cfg.model_pipeline, min_examples=cfg.model_min_examples)
    examples = [
        lb.Example("churn", f"c:{i}", i * 60_000, i * 60_000 + lb.DAY_MS,
                   {f: rng.random() * 10 for f in FEATURE_NAMES}, rng.random() < 0.2)
        for i in range(n)
    ]  # fmt: skip
    t0 = time.perf_counter()
    for ex in examples:
        model.learn(ex)
    out["model_examples_per_s"] = round(n / (time.perf_counter() - t0), 1)

    # the RFM owner: customers' changes of point (a purchase moves a customer's point)
    from features.rfm import RfmPoint

    rfm = RfmLogic(None, cfg)
    last: dict[int, RfmPoint] = {}
    items: list[tuple[RfmPoint | None, RfmPoint]] = []
    for i in range(n):
        c = rng.randrange(2000)
        was = last.get(c)
        now = RfmPoint(
            1_767_225_600_000 + i * 60_000,
            (was.frequency if was else 0) + 1,
            (was.monetary if was else 0.0) + rng.random() * 100,
            1_767_225_600_000,
        )
        items.append((was, now))
        last[c] = now
    t0 = time.perf_counter()
    for i in range(0, n, 100):
        rfm.on_batch(list(items[i : i + 100]))
    out["rfm_changes_per_s"] = round(n / (time.perf_counter() - t0), 1)
    return out


def examples_learned(svc: Services) -> dict[str, int]:
    """Examples each model owner learned in the run that just stopped (its final checkpoint)."""
    from features.store import model_keys
    from models.checkpoint import checkpoint_meta
    from models.targets import NAMES

    client = svc.client()
    try:
        out = {}
        for target in NAMES:
            raw = client.get(model_keys(target)[0])
            if isinstance(raw, bytes):
                out[target] = int(checkpoint_meta(raw)["metrics"]["examples_seen"])
        return out
    finally:
        client.close()


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "config": {"events": args.events, "cpus": os.cpu_count(), "seed": args.seed,
                   "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
    }  # fmt: skip
    with running_services(workdir / "services") as svc:
        topic, lines = produce_history(svc, args.events, args.seed)
        log.info("bench.scale: %s lines on %s (4 partitions)", f"{lines:,}", topic)
        first = run_processes(svc, topic, lines, 1)
        log.info("bench.scale: 1 process: %s events/s", first["events_per_s"])
        two = run_processes(svc, topic, lines, 2)
        log.info("bench.scale: 2 processes: %s events/s", two["events_per_s"])
        again = run_processes(svc, topic, lines, 1)
        log.info("bench.scale: 1 process again: %s events/s", again["events_per_s"])
    one_rate = (first["events_per_s"] + again["events_per_s"]) / 2
    result["one_process"] = [first, again]
    result["two_processes"] = two
    result["two_over_one"] = round(two["events_per_s"] / one_rate, 3)
    owners = owner_limits(args.owner_items)
    # the event rate at which one model owner would fill its core, at this history's examples per
    # event (the busiest target), and the RFM owner's at one change of point per line (its bound)
    per_line = max(first["examples_per_line"].values(), default=0.0)
    owners["model_owner_saturates_at_lines_per_s"] = (
        round(owners["model_examples_per_s"] / per_line) if per_line else None
    )
    owners["rfm_owner_saturates_at_lines_per_s"] = owners["rfm_changes_per_s"]
    result["owners"] = owners
    return result


def render(r: dict[str, Any]) -> str:
    a, b = r["one_process"]
    two = r["two_processes"]
    rows = [
        f"scale-out bench ({r['config']['cpus']} CPUs, {a['lines']:,} lines on 4 partitions)",
        f"  1 process      {a['events_per_s']:>10,.0f} events/s  cores busy {a['cores_busy']:.2f}"
        f"  CPU {a['cpu_ms_per_event']:.3f} ms/event",
        f"  2 processes    {two['events_per_s']:>10,.0f} events/s  cores busy "
        f"{two['cores_busy']:.2f}  CPU {two['cpu_ms_per_event']:.3f} ms/event"
        f"  (read {two['read_per_process']})",
        f"  1 process again{b['events_per_s']:>10,.0f} events/s  cores busy {b['cores_busy']:.2f}",
        f"  2 over 1: {r['two_over_one']:.2f}x",
        "single owners (one core each):",
        *(f"  {k:<38} {v:>12,.0f}" for k, v in r["owners"].items() if v is not None),
        f"  examples per line (1 process): {a['examples_per_line']}",
    ]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=60_000, help="about how many lines (60000)")
    p.add_argument("--owner-items", type=int, default=20_000, help="items per owner timing")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="nb-scale-"))
    try:
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(orjson.dumps(result).decode() if args.json else render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
