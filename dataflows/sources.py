"""Sources: JSONL files (resumable by byte offset) and the Kafka topics, as :class:`RawRecord`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.records import RawRecord


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


def kafka_source(
    brokers: str, topics: list[str], batch_size: int = 1000, tail: bool = True
) -> KafkaSource:
    """Bytewax's Kafka source over ``topics``; errors are emitted as items, not raised."""
    return KafkaSource(
        brokers.split(","),
        topics,
        tail=tail,
        batch_size=batch_size,
        raise_on_errors=False,
        # Do not let the broker hold a fetch for up to 500 ms (librdkafka's default) when there
        # is little new data: that alone would be most of the event-to-profile latency.
        add_config={"client.id": "nextbest", "fetch.wait.max.ms": "10"},
    )


def kafka_to_record(msg: Any) -> RawRecord:
    """A Kafka message (or a consume error) as a :class:`RawRecord` with its position."""
    if isinstance(msg, KafkaError):
        m: KafkaSourceMessage[Any, Any] = msg.msg
        return RawRecord(
            m.value or b"", f"kafka:{m.topic}:{m.partition}:{m.offset}:error:{msg.err}"
        )
    return RawRecord(msg.value or b"", f"kafka:{msg.topic}:{msg.partition}:{msg.offset}")


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
