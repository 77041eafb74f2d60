"""``nextbest run``: consume the Kafka topics until stopped."""

from __future__ import annotations

import argparse
import sys
import time

from nextbest.commands.common import die, stop_on_signals
from nextbest.running import (
    Progress,
    kafka_flow,
    print_summary,
    progress_line,
    run_flow,
    sink_gave_up,
)
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("run", help="consume the Kafka topics until stopped (SIGTERM/Ctrl-C)")
    k.add_argument("--json", action="store_true", help="print the final summary as JSON")
    k.add_argument("--quiet", action="store_true", help="no periodic progress lines")
    k.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Consume the Kafka topics until stopped (SIGTERM or Ctrl-C stop it cleanly).

    When partitions are added to a topic (or a topic is recreated) the flow stops cleanly and
    starts again over every partition, resuming from the recovery snapshot if there is one.
    """
    from dataflows.flow import FlowStats
    from dataflows.metrics import serve_metrics
    from dataflows.sources import (
        StopRequest,
        TopicWatch,
        wait_for_topics,
    )
    from nextbest.cluster import cluster_of
    from nextbest.runtime import ensure_topics, kafka_brokers, redis_url

    cluster = cluster_of(settings)  # (a bad cluster setting stops here, before any service)
    with redis_url(settings) as url, kafka_brokers(settings) as brokers:
        outputs = [settings.topic_dead_letter]
        if settings.segments != "off":
            outputs.append(settings.topic_segment_events)
        ensure_topics(brokers, [*settings.topics, *outputs], settings.topic_partitions)
        serve_metrics(settings.metrics_port)
        stats = FlowStats()
        t0 = time.perf_counter()
        while True:
            stop = StopRequest()
            with stop_on_signals(stop):
                found = wait_for_topics(brokers, settings.topics, stop.event)
            if found is None:  # stopped while waiting
                break
            layout = found
            flow = kafka_flow(settings, brokers, url, stop, layout)
            parts = ", ".join(f"{t} ({n} partitions)" for t, (n, _) in layout.items())
            member = (
                f" as process {cluster.process_id} of {cluster.processes}"
                if cluster.processes > 1
                else ""
            )
            print(
                f"nextbest run{member}: consuming {parts} from {brokers}; profiles -> {url}; "
                f"dead letters -> {settings.topic_dead_letter}"
                + (
                    f"; segment transitions -> {settings.topic_segment_events}"
                    if settings.segments != "off"
                    else ""
                ),
                file=sys.stderr,
                flush=True,
            )
            watch = TopicWatch(brokers, layout, stop, settings.topic_check_interval_ms / 1000)
            watch.start()
            with (
                stop_on_signals(stop),
                Progress(lambda: progress_line(stats, t0), interval=5, enabled=not args.quiet),
                sink_gave_up(),
            ):
                run_flow(flow, settings, cluster=True)
            if stop.failed:
                die(f"run: {stop.why}", 3)
            if not stop.restart:
                break
            print(f"nextbest run: {stop.why}: starting again over every partition",
                  file=sys.stderr, flush=True)  # fmt: skip
        summary = stats.as_dict(time.perf_counter() - t0)
    print_summary(summary, args.json, None)
    return 0
