"""``nextbest import-traits FILE --source crm``: a CRM export (CSV or JSONL) as ``identify``
events, through the same path as every event: validated by the event decoder (identifiers
hashed with ``NEXTBEST_IDENTITY_SALT``) and written to the clickstream topic the dataflow reads
(the embedded broker when ``NEXTBEST_KAFKA_BROKERS`` is unset), keyed like ``POST /v1/events``
keys them. Bad rows are reported as ``FILE:LINE: reason: detail`` and written to the
dead-letter topic (identifiers redacted); good rows are written whatever the bad ones are.
The row format is in :mod:`features.trait_rows`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from nextbest.commands.common import UsageError, now_ms
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("import-traits", help="load a CRM export (CSV or JSONL) as identify events")
    p.add_argument("file", metavar="FILE", help="JSONL, or CSV with a header row (.csv)")
    p.add_argument(
        "--source", required=True, metavar="NAME", help="the source system, e.g. crm, erp, shop"
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_import_traits)


def cmd_import_traits(args: argparse.Namespace, settings: Settings) -> int:
    """Validate every row, write the good ones as events; exit 1 when none is good."""
    from dataflows.records import RawRecord, Rejected, encode_dead_letter
    from features.trait_rows import parse_rows
    from nextbest.runtime import ensure_topics, kafka_brokers
    from schemas.events import DecodeError, encode_event
    from schemas.traits import SOURCE_RE

    path = Path(args.file)
    if not SOURCE_RE.fullmatch(args.source):
        raise UsageError(f"import-traits: --source must match {SOURCE_RE.pattern}")
    kind = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    try:
        with path.open(encoding="utf-8", newline="" if kind == "csv" else None) as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"import-traits: cannot read {path}: {exc}") from None
    ids = settings.identity_hasher()
    events, errors, rejected = parse_rows(lines, kind, args.source, now_ms(), ids)
    for e in errors[:100]:
        print(f"{path}:{e.line}: {e.reason}: {e.detail}", file=sys.stderr)
    if len(errors) > 100:
        print(f"... and {len(errors) - 100} more rejected rows", file=sys.stderr)
    records: list[tuple[str, bytes | None, bytes]] = [
        (settings.topic_clickstream, ev.key.encode(), encode_event(ev)) for _, ev in events
    ]
    for e in errors:
        raw = rejected.get(e.line, b"")
        rej = Rejected(RawRecord(raw, f"import:{path}:{e.line}"), DecodeError(e.reason, e.detail))
        records.append(
            (
                settings.topic_dead_letter,
                None,
                encode_dead_letter(rej, settings.dead_letter_max_bytes),
            )
        )
    with kafka_brokers(settings) as brokers:
        ensure_topics(
            brokers, [*settings.topics, settings.topic_dead_letter], settings.topic_partitions
        )
        failed = _produce(brokers, records)
    if failed:
        print(
            f"nextbest: import-traits: the broker refused {failed} records: {brokers}",
            file=sys.stderr,
        )
        return 1
    summary: dict[str, Any] = {
        "file": str(path),
        "source": args.source,
        "accepted": len(events),
        "rejected": len(errors),
        "rejected_by_reason": dict(Counter(e.reason for e in errors)),
        "topic": settings.topic_clickstream,
    }
    if args.json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        print(
            f"imported {len(events):,} rows from {path} (source {args.source}) to topic "
            f"{settings.topic_clickstream}, rejected {len(errors):,} rows"
        )
    if not events:
        print(f"nextbest: import-traits: no valid row in {path}", file=sys.stderr)
        return 1
    return 0


def _produce(brokers: str, records: list[tuple[str, bytes | None, bytes]]) -> int:
    """Write every record and wait for the acknowledgements; returns how many failed (a full
    queue is waited out, never dropped)."""
    from confluent_kafka import KafkaError, Message, Producer

    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20,
                         "message.timeout.ms": 60_000})  # fmt: skip
    for topic, key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(70)
    return len(failures) + left
