"""An asyncio-friendly Kafka producer for the API: produce, await the broker's acknowledgements
with a deadline, close.

``confluent_kafka.Producer.produce`` only enqueues (it never waits for the network), and the
delivery reports are served by ``poll``. Here one background thread polls; each delivery report
resolves an :class:`asyncio.Future` on the loop that produced the record, so a request awaits
exactly its own records (not every record in flight, as ``flush`` would) and never blocks the
event loop. A full local queue (``BufferError``, the trap of bytewax#522) is waited out with
short sleeps until the deadline.

A record whose acknowledgement did not come before the deadline may still be delivered later
(librdkafka keeps it until ``message.timeout.ms``, set to the same deadline): a caller told
"not acknowledged" must be able to send it again, and consumers must drop duplicates (the
dataflow does, by ``event_id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

log = logging.getLogger(__name__)

#: How long :meth:`EventProducer.send` waits for every acknowledgement by default (seconds).
ACK_TIMEOUT: Final = 5.0
#: How long :meth:`EventProducer.close` waits for records still queued (seconds).
CLOSE_TIMEOUT: Final = 5.0
#: Sleep between attempts while the local queue is full (seconds).
_QUEUE_FULL_WAIT: Final = 0.01


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to produce: topic, key (``None``: no key) and value."""

    topic: str
    key: bytes | None
    value: bytes


class BrokerUnavailable(Exception):
    """Not every record of a :meth:`EventProducer.send` was acknowledged in time (or one was
    refused); ``kind`` is a short bounded label (``timeout``, ``queue_full`` or the librdkafka
    error name in lower case)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _error_kind(err: Any) -> str:
    """A librdkafka error as a short label: its name, lower case (a finite set)."""
    try:
        return str(err.name()).strip("_").lower() or "unknown"
    except Exception:
        return "unknown"


def _resolve(fut: asyncio.Future[None], err: Any) -> None:
    """Complete ``fut`` with the delivery report (runs on the future's loop)."""
    if fut.done():  # the request gave up (timeout) and cancelled it
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(BrokerUnavailable(_error_kind(err), f"delivery failed: {err}"))


class EventProducer:
    """A ``confluent_kafka.Producer`` with awaitable delivery (see the module docstring).

    ``config`` adds or overrides librdkafka producer properties (security settings, limits).
    """

    def __init__(
        self,
        brokers: str,
        ack_timeout: float = ACK_TIMEOUT,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        from confluent_kafka import Producer

        self.brokers = brokers
        self.ack_timeout = ack_timeout
        timeout_ms = max(1, int(ack_timeout * 1000))
        self._producer = Producer(
            {
                "bootstrap.servers": brokers,
                "client.id": "nextbest-serve",
                # a request waits for its acknowledgement: batch briefly, not for long
                "linger.ms": 2,
                "acks": "all",
                # stop retrying when the caller stops waiting (it was told to send again)
                "message.timeout.ms": timeout_ms,
                "socket.connection.setup.timeout.ms": max(1000, timeout_ms),
                # librdkafka's own log lines (e.g. a refused connection) go to Python logging
                "logger": logging.getLogger("serving.kafka"),
                **dict(config or {}),
            }
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        """Serve delivery reports until :meth:`close` (runs in the background thread)."""
        while not self._stop.is_set():
            try:
                self._producer.poll(0.05)
            except Exception:  # a callback failed: keep serving the others
                log.exception("kafka delivery report")

    async def send(self, records: Sequence[OutRecord], timeout: float | None = None) -> None:
        """Produce ``records`` and return when the broker acknowledged every one of them.

        Raises :class:`BrokerUnavailable` when one is refused or the acknowledgements did not
        all come within ``timeout`` seconds (default: ``ack_timeout``).
        """
        budget = self.ack_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        try:
            for rec in records:
                fut: asyncio.Future[None] = loop.create_future()
                report = partial(self._delivered, loop, fut)
                while True:
                    try:
                        self._producer.produce(
                            rec.topic, value=rec.value, key=rec.key, on_delivery=report
                        )
                        break
                    except BufferError:  # local queue full (bytewax#522): wait, then retry
                        if time.monotonic() >= deadline:
                            raise BrokerUnavailable(
                                "queue_full", "the producer's queue stayed full"
                            ) from None
                        await asyncio.sleep(_QUEUE_FULL_WAIT)
                futures.append(fut)
            left = max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(left):
                    await asyncio.gather(*futures)
            except TimeoutError:
                pending = sum(1 for f in futures if not f.done())
                raise BrokerUnavailable(
                    "timeout",
                    f"{pending} of {len(futures)} writes not acknowledged by the broker "
                    f"({self.brokers}) within {budget:g}s",
                ) from None
        except BaseException:
            for f in futures:
                f.cancel()  # reports arriving later are ignored
            raise

    @staticmethod
    def _delivered(
        loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None], err: Any, _msg: Any
    ) -> None:
        """A delivery report (poller thread): hand it to the future's loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, fut, err)

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Wait (in a thread) up to ``timeout`` s for queued records, then stop the poller."""
        left = await asyncio.to_thread(self._producer.flush, timeout)
        if left:
            log.warning("kafka producer closed with %d records not delivered", left)
        self._stop.set()
        await asyncio.to_thread(self._poller.join, 1.0)
