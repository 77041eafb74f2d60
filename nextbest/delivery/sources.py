"""Where ``nextbest deliver`` reads segment-events from: a Kafka topic (a consumer group, offsets
committed only for records done) or a followed JSONL file (its read position in a state file).

Both hand one record at a time to :meth:`Deliverer.handle` and move their position past it only
when it returned True (delivered or dead-lettered for every destination).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from dataflows.sources import StopRequest
from nextbest.delivery.worker import Deliverer

log = logging.getLogger("nextbest.deliver")

#: librdkafka's bounds of max.poll.interval.ms.
_MAX_POLL_MS = (300_000, 86_400_000)


def consume_kafka(
    brokers: str,
    topic: str,
    group: str,
    deliverer: Deliverer,
    stop: StopRequest,
    *,
    start: str = "earliest",
    until_end: bool = False,
    poll_s: float = 0.2,
    config: dict[str, Any] | None = None,
) -> int:
    """Consume ``topic`` in consumer group ``group`` until ``stop``; return the records done.

    Offsets are *stored* after a record is done and committed by librdkafka's auto-commit (every
    second) and at close, so a crash re-delivers at most the records done in the last second
    plus the one in flight. ``start`` (earliest/latest) applies only when the group has no
    committed offset. With ``until_end`` it stops once every assigned partition is at its end.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException

    # A record may take a while (retries); the consumer must not be thought dead meanwhile.
    worst_ms = 1000 * sum(d.worst_case_s() for d in deliverer.config.destinations) + 60_000
    max_poll_ms = int(min(max(worst_ms, _MAX_POLL_MS[0]), _MAX_POLL_MS[1]))
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": group,
            "client.id": "nextbest-deliver",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.commit.interval.ms": 1000,
            "auto.offset.reset": start,
            "enable.partition.eof": until_end,
            "max.poll.interval.ms": max_poll_ms,
            # heartbeats come from librdkafka's own thread, so a long delivery does not end the
            # session; a short session also makes the embedded broker (tansu) complete a group
            # join sooner (it waits about half the session timeout)
            "session.timeout.ms": 10_000,
            "fetch.wait.max.ms": 50,
            **(config or {}),
        }
    )
    assigned: set[tuple[str, int]] = set()
    at_end: set[tuple[str, int]] = set()

    def on_assign(c: Any, parts: list[Any]) -> None:
        assigned.update((p.topic, p.partition) for p in parts)
        log.info("deliver: assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in parts))

    def on_revoke(c: Any, parts: list[Any]) -> None:
        for p in parts:
            assigned.discard((p.topic, p.partition))
            at_end.discard((p.topic, p.partition))

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    done = 0
    try:
        while not stop.event.is_set():
            msg = consumer.poll(poll_s)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add((str(msg.topic()), int(msg.partition() or 0)))
                    if until_end and assigned and assigned <= at_end:
                        stop.set("end of the topic")
                    continue
                if err.fatal():
                    stop.set(f"kafka consumer: {err}", failed=True)
                    break
                log.warning("deliver: kafka consumer: %s", err)
                continue
            at_end.discard((str(msg.topic()), int(msg.partition() or 0)))
            if not deliverer.handle(msg.value() or b""):
                break  # abandoned on stop: not stored, so not committed
            done += 1
            try:
                consumer.store_offsets(msg)
            except KafkaException as exc:  # the partition was revoked meanwhile
                log.warning("deliver: offset of %s[%d]@%d not stored (%s): its new owner will "
                            "deliver it again", msg.topic(), msg.partition(), msg.offset(),
                            exc)  # fmt: skip
    finally:
        with contextlib.suppress(KafkaException, RuntimeError):
            consumer.close()  # commits the stored offsets
    return done


class FilePosition:
    """The read position in a followed file, kept in a small JSON state file (replaced
    atomically after every record done)."""

    def __init__(self, state_path: Path) -> None:
        self.path = state_path

    def load(self, source: Path) -> int:
        """The byte offset to resume ``source`` at (0 when unknown, or when the file was
        replaced or truncated since)."""
        try:
            d = json.loads(self.path.read_text())
            offset, inode = int(d["offset"]), int(d["inode"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        try:
            st = source.stat()
        except OSError:
            return 0
        if st.st_ino != inode or st.st_size < offset:
            log.warning("deliver: %s was replaced or truncated since position %d: reading it "
                        "from the start", source, offset)  # fmt: skip
            return 0
        return offset

    def save(self, source: Path, offset: int, inode: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"file": str(source.resolve()), "offset": offset,
                                   "inode": inode}))  # fmt: skip
        os.replace(tmp, self.path)


def follow_file(
    path: Path,
    position: FilePosition,
    deliverer: Deliverer,
    stop: StopRequest,
    *,
    until_end: bool = False,
    poll_s: float = 0.2,
) -> int:
    """Deliver the lines of a JSONL file, following it as it grows (``tail -f``), from the
    saved position; return the records done. A last line without its newline is not read until
    it is complete. A file replaced or truncated is read again from its start."""
    done = 0
    while not path.exists():
        if until_end:
            return 0
        if stop.event.wait(poll_s):
            return 0
    offset = position.load(path)
    fh = open(path, "rb")  # noqa: SIM115 - reopened when the file is replaced
    try:
        inode = os.fstat(fh.fileno()).st_ino
        fh.seek(offset)
        while not stop.event.is_set():
            line = fh.readline()
            if not line.endswith(b"\n"):  # end of file, or a line still being written
                fh.seek(offset)
                if until_end:
                    break
                if _replaced(path, inode, offset):
                    log.warning("deliver: %s was replaced or truncated: reading it from the "
                                "start", path)  # fmt: skip
                    fh.close()
                    fh = open(path, "rb")  # noqa: SIM115
                    inode, offset = os.fstat(fh.fileno()).st_ino, 0
                    continue
                stop.event.wait(poll_s)
                continue
            record = line.strip()
            if record and not deliverer.handle(record):
                break  # abandoned on stop: the position stays before it
            offset += len(line)
            position.save(path, offset, inode)
            done += bool(record)
    finally:
        fh.close()
    return done


def _replaced(path: Path, inode: int, offset: int) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False  # gone for now (being rotated): keep the open file
    return st.st_ino != inode or st.st_size < offset
