"""Sources: JSONL files (resumable by byte offset) and the Kafka topics, as :class:`RawRecord`.

Bytewax fixes a source's partitions when a flow starts. :class:`TopicWatch` sees partitions added
(or a topic recreated) while ``nextbest run`` runs and stops the flow cleanly; ``run`` then
starts it again over every partition, resuming from the recovery snapshot when there is one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows import metrics
from dataflows.records import RawRecord
from dataflows.source_metrics import LAG_INTERVAL_S as LAG_INTERVAL_S
from dataflows.source_metrics import ReadMetrics

log = logging.getLogger(__name__)


class _FileLinesPartition(StatefulSourcePartition[RawRecord, tuple[int, int]]):
    """One file; resume state is (byte offset, line number) of the next line."""

    def __init__(self, path: Path, resume: tuple[int, int] | None, batch_size: int) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._offset, self._line = resume or (0, 0)
        self._fh.seek(self._offset)
        self._prefix = f"file:{path}:"
        self._batch = batch_size

    def next_batch(self) -> list[RawRecord]:
        out = []
        readline = self._fh.readline
        for _ in range(self._batch):
            line = readline()
            if not line:
                break
            self._line += 1
            self._offset += len(line)
            out.append(RawRecord(line.rstrip(b"\r\n"), self._prefix + str(self._line)))
        if not out:
            raise StopIteration
        return out

    def snapshot(self) -> tuple[int, int]:
        return (self._offset, self._line)

    def close(self) -> None:
        self._fh.close()


class JsonlFilesSource(FixedPartitionedSource[RawRecord, tuple[int, int]]):
    """Reads JSONL files to their end, one partition per file (files are read in parallel)."""

    def __init__(self, paths: list[Path], batch_size: int = 1000) -> None:
        self._paths = {str(p): p for p in paths}
        self._batch = batch_size

    def list_parts(self) -> list[str]:
        return list(self._paths)

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
    ) -> _FileLinesPartition:
        return _FileLinesPartition(self._paths[for_part], resume_state, self._batch)


#: A topic's layout: partition count and topic id (``None`` when the broker does not say).
Layout = dict[str, tuple[int, str | None]]

_log_once: set[str] = set()


def _warn_once(key: str, msg: str, *args: Any) -> None:
    if key not in _log_once:
        _log_once.add(key)
        log.warning(msg, *args)


def wait_for_topics(
    brokers: str, topics: list[str], stop: threading.Event, interval_s: float = 1.0
) -> Layout | None:
    """The layout once every topic exists (a deleted one may be on its way back); ``None`` if
    ``stop`` is set first. Logs once what it waits for."""
    told = False
    while True:
        try:
            layout = topic_layout(brokers, topics)
        except Exception as exc:  # the broker is away
            layout = {}
            log.debug("topic check failed: %s", exc)
        missing = [t for t in topics if t not in layout]
        if not missing:
            return layout
        if not told:
            log.warning("waiting for topic(s) %s to exist", ", ".join(missing))
            told = True
        if stop.wait(interval_s):
            return None


def topic_layout(brokers: str, topics: list[str], timeout: float = 10) -> Layout:
    """Partition count and topic id of each topic (a topic that does not exist is left out)."""
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": brokers})
    meta = admin.list_topics(timeout=timeout).topics
    layout: Layout = {}
    present = [t for t in topics if t in meta and meta[t].error is None]
    ids: dict[str, str | None] = dict.fromkeys(present)
    if present:
        try:
            futures = admin.describe_topics(TopicCollection(present), request_timeout=timeout)
            for name, fut in futures.items():
                ids[name] = str(fut.result().topic_id)
        except Exception as exc:  # an older broker: no topic ids, recreation goes unseen
            _warn_once("topic_ids", "topic ids not available (%s): a recreated topic with "
                       "the same partitions is not detected", exc)  # fmt: skip
    for t in present:
        layout[t] = (len(meta[t].partitions), ids[t])
    return layout


@dataclass
class StopRequest:
    """Ends every partition of a :class:`StoppableSource` cleanly, and says why: a signal, a
    changed topic (``restart``: run the flow again over every partition) or a policy that
    stops with an error (``failed``)."""

    event: threading.Event = field(default_factory=threading.Event)
    why: str = ""
    restart: bool = False
    failed: bool = False

    def set(self, why: str, restart: bool = False, failed: bool = False) -> None:
        """Ask the flow to stop (the first reason wins)."""
        if not self.event.is_set():
            self.why, self.restart, self.failed = why, restart, failed
            self.event.set()


class KafkaTopicsSource(FixedPartitionedSource[RawRecord, Any]):
    """The Kafka topics, one partition of the flow per topic partition, resumable by offset.

    Unlike Bytewax's ``KafkaSource`` it knows each topic's id and what to do with a stored
    position outside its partition (``offset_reset``: ``earliest``, ``latest`` or ``fail``): a
    topic deleted and recreated, or retention that passed the position. Consumer errors are
    logged and counted, never turned into records. The resume state is ``(next offset, topic
    id)`` (a bare offset, Bytewax's format, is read too).
    """

    def __init__(
        self,
        brokers: str,
        layout: Layout | list[str],
        batch_size: int = 1000,
        offset_reset: str = "earliest",
        stop: StopRequest | None = None,
        watch_interval_s: float = 0.0,
    ) -> None:
        """``layout``: the topics' layout, or just their names (read when the flow starts; then,
        with ``stop`` and ``watch_interval_s``, a :class:`TopicWatch` starts too)."""
        self._brokers = brokers
        self._topics = layout if isinstance(layout, list) else None
        self.layout: Layout = {} if isinstance(layout, list) else layout
        self._batch = batch_size
        self._reset = offset_reset
        self._stop = stop
        self._watch_s = watch_interval_s

    def list_parts(self) -> list[str]:
        if self._topics is not None and not self.layout:
            self.layout = topic_layout(self._brokers, self._topics)
            missing = [t for t in self._topics if t not in self.layout]
            if missing:
                raise RuntimeError(f"input topic(s) {', '.join(missing)} do not exist")
            if self._stop is not None and self._watch_s > 0:
                TopicWatch(self._brokers, self.layout, self._stop, self._watch_s).start()
        return [f"{i}-{t}" for t, (n, _) in self.layout.items() for i in range(n)]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _KafkaPartition:
        idx, topic = for_part.split("-", 1)
        return _KafkaPartition(self, topic, int(idx), resume_state)


class _KafkaPartition(StatefulSourcePartition[RawRecord, Any]):
    def __init__(self, src: KafkaTopicsSource, topic: str, part: int, resume: Any) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self._src = src
        self._topic, self._part = topic, part
        self._prefix = f"kafka:{topic}:{part}:"
        self._topic_id = src.layout[topic][1] if topic in src.layout else None
        offset, stored_id = (resume, None) if not isinstance(resume, tuple) else resume
        if offset is not None and offset < 0:  # Bytewax's "from the beginning" before any read
            offset = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": src._brokers,
                "group.id": "nextbest-unused",  # positions live in the recovery snapshots
                "enable.auto.commit": "false",
                "client.id": "nextbest",
                # an out-of-range position is reported to us (the policy), never skipped silently
                "auto.offset.reset": "error",
                # do not let the broker hold a fetch for up to 500 ms (librdkafka's default) when
                # there is little new data: that alone would be most of the event-to-profile lag
                "fetch.wait.max.ms": "10",
            }
        )
        self._tp = TopicPartition
        self._offset: int | None = offset
        self._read = ReadMetrics(topic, part)  # (metrics only: they never change what is read)
        start = OFFSET_BEGINNING if offset is None else offset
        if offset is not None:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, part), 10)
            if stored_id is not None and self._topic_id is not None and stored_id != self._topic_id:
                start = self._apply_policy(f"the topic was recreated (id {stored_id} -> "
                                           f"{self._topic_id})", low, high)  # fmt: skip
            elif offset < low:  # retention deleted what was not read yet
                start = self._apply_policy(f"offsets start at {low}", low, high)
            elif offset > high and not self._exists(offset - 1):
                start = self._apply_policy(f"offsets end at {high}", low, high)
        self._consumer.assign([TopicPartition(topic, part, start)])

    def _exists(self, offset: int, timeout: float = 3.0) -> bool:
        """Whether the partition holds a record at ``offset`` (the last one read: a position
        beyond the high watermark is checked this way, as some brokers' high watermarks lag a
        record batch behind)."""
        from confluent_kafka import KafkaError, TopicPartition

        probe = self._consumer
        probe.assign([TopicPartition(self._topic, self._part, offset)])
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                msg = probe.poll(0.1)
                if msg is None:
                    continue
                err = msg.error()
                if err is None:
                    return bool(msg.offset() == offset)
                if err.code() == KafkaError._AUTO_OFFSET_RESET:
                    return False
            return False
        finally:
            probe.unassign()

    def _apply_policy(self, why: str, low: int, high: int) -> int:
        """Where to read from when the stored position is outside the partition."""
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

        policy = self._src._reset
        metrics.KAFKA_OFFSET_RESETS.labels(policy).inc()
        where = {"earliest": "its start", "latest": "its end", "fail": "nowhere: stopping"}
        log.warning(
            "kafka %s[%d]: stored position %s is outside the partition (%s); "
            "NEXTBEST_KAFKA_OFFSET_RESET=%s: reading from %s",
            self._topic, self._part, self._offset, why, policy, where[policy],
        )  # fmt: skip
        if policy == "fail":
            msg = (f"kafka {self._topic}[{self._part}]: stored position {self._offset} is "
                   f"outside the partition ({why}); NEXTBEST_KAFKA_OFFSET_RESET=fail")  # fmt: skip
            if self._src._stop is None:
                raise RuntimeError(msg)
            self._src._stop.set(msg, failed=True)
            return self._offset if self._offset is not None else OFFSET_END
        if policy == "earliest":
            self._offset = None  # a snapshot before the next read resumes from the start too
            return OFFSET_BEGINNING
        self._offset = high if high >= 0 else None  # (unknown at run time: the next read tells)
        return OFFSET_END

    def next_batch(self) -> list[RawRecord]:
        from confluent_kafka import KafkaError

        out: list[RawRecord] = []
        prefix = self._prefix
        newest_ms: int | None = None
        for msg in self._consumer.consume(self._src._batch, 0.001):
            err = msg.error()
            if err is None:
                offset: int = msg.offset() or 0
                kind, ts = msg.timestamp()
                out.append(
                    RawRecord(msg.value() or b"", prefix + str(offset), ts if kind else None)
                )
                self._offset = offset + 1
                if kind:
                    newest_ms = ts
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.code() == KafkaError._AUTO_OFFSET_RESET:  # out of range while running
                start = self._apply_policy(str(err), -1, -1)
                self._consumer.assign([self._tp(self._topic, self._part, start)])
                break
            else:
                name = str(err.name()).strip("_").lower()
                metrics.KAFKA_CONSUME_ERRORS.labels(name).inc()
                _warn_once(f"consume:{name}", "kafka consumer error on %s[%d] (logged once per "
                           "kind): %s", self._topic, self._part, err)  # fmt: skip
        self._read.observe(self._consumer, self._tp(self._topic, self._part), self._offset,
                           newest_ms)  # fmt: skip
        return out

    def snapshot(self) -> Any:
        return (self._offset, self._topic_id)

    def close(self) -> None:
        self._consumer.close()


class TopicWatch:
    """Checks the input topics every ``interval`` seconds; when partitions were added or a topic
    was deleted or recreated, it stops the flow cleanly so that it starts again over every
    partition (Bytewax fixes a source's partitions when the flow starts; ``run`` waits for a
    deleted topic to exist again)."""

    def __init__(self, brokers: str, layout: Layout, stop: StopRequest, interval_s: float) -> None:
        self._brokers = brokers
        self._layout = layout
        self._stop = stop
        self._interval = interval_s
        self._thread = threading.Thread(target=self._loop, name="nextbest-topic-watch",
                                        daemon=True)  # fmt: skip

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def change(self) -> tuple[str, str] | None:
        """(kind, description) of a change of the layout, or None."""
        now = topic_layout(self._brokers, list(self._layout))
        for topic, (n, tid) in self._layout.items():
            if topic not in now:
                # stop reading before it comes back: a consumer still assigned to a partition
                # of a recreated topic crashed librdkafka here (segfault, with the embedded
                # broker); a new consumer after the restart sees the new topic cleanly
                return "deleted", f"topic {topic} was deleted"
            n2, tid2 = now[topic]
            if tid is not None and tid2 is not None and tid2 != tid:
                return "recreated", f"topic {topic} was recreated ({n} -> {n2} partitions)"
            if n2 > n:
                return "partitions_added", f"topic {topic} grew from {n} to {n2} partitions"
        return None

    def _loop(self) -> None:
        while not self._stop.event.wait(self._interval):
            try:
                found = self.change()
            except Exception as exc:  # the broker is away: look again later
                log.debug("topic check failed: %s", exc)
                continue
            if found is not None:
                kind, why = found
                metrics.TOPIC_CHANGES.labels(kind).inc()
                log.warning("%s: stopping the flow to start it again over every partition", why)
                self._stop.set(why, restart=True)
                return


class _StoppablePartition(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: StatefulSourcePartition[Any, Any], stop: threading.Event) -> None:
        self._inner = inner
        self._stop = stop

    def next_batch(self) -> Any:
        if self._stop.is_set():
            raise StopIteration
        return self._inner.next_batch()

    def next_awake(self) -> Any:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class StoppableSource(FixedPartitionedSource[Any, Any]):
    """Wraps a source so that setting ``stop`` ends every partition: the flow then finishes
    cleanly (sinks flush, recovery state is written) instead of being interrupted mid-batch."""

    def __init__(self, inner: FixedPartitionedSource[Any, Any], stop: threading.Event) -> None:
        self._inner = inner
        self.stop = stop

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        return _StoppablePartition(
            self._inner.build_part(step_id, for_part, resume_state), self.stop
        )
