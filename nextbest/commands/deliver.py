"""``nextbest deliver``: POST segment transitions to the configured webhooks until stopped."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from nextbest.commands.common import UsageError, die, stop_on_signals
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser(
        "deliver",
        help="POST segment transitions (segment-events) to webhooks until stopped",
        description="Consume segment-events (the Kafka topic, or a JSONL file with --file) and "
        "POST each transition to the webhooks configured for its segment: signed, with an "
        "idempotency key, retried with backoff, in order per customer; records given up are "
        "dead-lettered. Stops cleanly on SIGTERM/Ctrl-C.",
    )
    d.add_argument("--webhooks", metavar="PATH", help="webhook YAML (default: $NEXTBEST_WEBHOOKS)")
    d.add_argument(
        "--file",
        nargs="?",
        const="",
        metavar="PATH",
        help="follow a JSONL file instead of the Kafka topic (no PATH: "
        "$NEXTBEST_HOME/segment-events.jsonl, the embedded mode's file)",
    )
    d.add_argument(
        "--state",
        metavar="PATH",
        help="with --file: where the read position is kept "
        "(default: $NEXTBEST_HOME/deliver/<file>-<hash>.position.json)",
    )
    d.add_argument(
        "--dead-letter",
        metavar="PATH",
        help="with --file: dead-letter JSONL file "
        "(default: $NEXTBEST_HOME/segment-events-dead-letter.jsonl, appended)",
    )
    d.add_argument(
        "--from",
        dest="start",
        choices=("earliest", "latest"),
        default="earliest",
        help="Kafka: where a consumer group without committed offsets starts (default earliest)",
    )
    d.add_argument("--until-end", action="store_true", help="stop at the end of the topic or file")
    d.set_defaults(func=cmd_deliver)


def default_state_path(home: Path, source: Path) -> Path:
    """Where the read position of a followed file is kept: one file per source path."""
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    return home / "deliver" / f"{source.name}-{digest}.position.json"


def cmd_deliver(args: argparse.Namespace, settings: Settings) -> int:
    """Deliver until stopped; exit 0 on a clean stop, 2 on bad configuration, 3 on a fatal
    consumer error."""
    from dataflows.metrics import serve_metrics
    from dataflows.sources import StopRequest
    from nextbest.delivery.config import WebhookConfigError, load_webhooks
    from nextbest.delivery.deadletters import FileDeadLetters, KafkaDeadLetters
    from nextbest.delivery.sources import FilePosition, consume_kafka, follow_file
    from nextbest.delivery.worker import DeadLetters, Deliverer
    from nextbest.runtime import ensure_topics, kafka_brokers

    path = args.webhooks or settings.webhooks
    if not path:
        raise UsageError("deliver: no webhooks configured: set NEXTBEST_WEBHOOKS or --webhooks")
    try:
        config = load_webhooks(path, os.environ)
    except WebhookConfigError as exc:
        die(f"config error: {exc}")
    targets = ", ".join(
        f"{d.name} ({'*' if d.segments is None else ','.join(sorted(d.segments))})"
        for d in config.destinations
    )
    stop = StopRequest()
    dead: DeadLetters
    if args.file is not None:
        source = Path(args.file) if args.file else settings.home_path / "segment-events.jsonl"
        state = Path(args.state) if args.state else default_state_path(settings.home_path, source)
        state.parent.mkdir(parents=True, exist_ok=True)
        if args.until_end and not source.is_file():
            raise UsageError(f"deliver: no such file: {source}")
        dl_path = (
            Path(args.dead_letter)
            if args.dead_letter
            else settings.home_path / "segment-events-dead-letter.jsonl"
        )
        dead = FileDeadLetters(dl_path)
        deliverer = Deliverer(config, dead, stop.event)
        serve_metrics(settings.metrics_port)
        print(f"nextbest deliver: following {source} (position in {state}) -> {targets}; "
              f"dead letters -> {dl_path}", file=sys.stderr, flush=True)  # fmt: skip
        try:
            with stop_on_signals(stop):
                done = follow_file(
                    source, FilePosition(state), deliverer, stop, until_end=args.until_end
                )
        finally:
            deliverer.close()
            dead.close()
    else:
        with kafka_brokers(settings) as brokers:
            topic, dl_topic = settings.topic_segment_events, settings.topic_delivery_dead_letter
            ensure_topics(brokers, [topic, dl_topic], settings.topic_partitions)
            dead = KafkaDeadLetters(brokers, dl_topic)
            deliverer = Deliverer(config, dead, stop.event)
            serve_metrics(settings.metrics_port)
            print(f"nextbest deliver: consuming {topic} from {brokers} (group "
                  f"{settings.delivery_group}) -> {targets}; dead letters -> {dl_topic}",
                  file=sys.stderr, flush=True)  # fmt: skip
            try:
                with stop_on_signals(stop):
                    done = consume_kafka(
                        brokers,
                        topic,
                        settings.delivery_group,
                        deliverer,
                        stop,
                        start=args.start,
                        until_end=args.until_end,
                    )
            finally:
                deliverer.close()
                dead.close()
    why = f" ({stop.why})" if stop.why else ""
    print(f"nextbest deliver: {done} records done{why}", file=sys.stderr, flush=True)
    if stop.failed:
        die(f"deliver: {stop.why}", 3)
    return 0
