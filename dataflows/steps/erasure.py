"""Erasure in the dataflow: fan a request out to every step that holds the person, collect
their acknowledgements, publish ``done`` (see :mod:`schemas.erasure`).

A request reaches, each keyed as its state is:

* the profile step (``c:<id>``): the profile, its pending labels and training snapshots, its
  segment memberships (exits published with the rule ``erasure``), its Redis keys (profile,
  memberships, contact counters) and its entries in every segment index;
* the identity step, once per device it names (``a:<id>``): the device's links and anonymous
  profile, its Redis keys;
* the RFM owner (the customer's point in the population), each model owner (examples waiting
  for their turn) and each feedback shard (decisions waiting for outcomes).

Each answers with an :class:`Ack` naming its part; the request's own step
(:class:`ErasureLogic`, keyed by request id) knows every part it expects (:func:`parts`) and,
when all have answered, writes the ``done`` status. Its state holds the names of the parts
until then, and is discarded with it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from bytewax.operators import StatefulBatchLogic

from dataflows import metrics
from dataflows.erasure import Expect, WriteStatus
from schemas.erasure import status_document


class ErasureLogic(StatefulBatchLogic[Any, Any, Any]):
    """One request: the parts still to answer; ``done`` when none is left.

    >>> from dataflows.erasure import Ack, Expect
    >>> logic = ErasureLogic(None)
    >>> out, keep = logic.on_batch([Expect("r", ("a", "b"), 5), Ack("r", "a")])
    >>> out, keep
    ([], False)
    >>> out, keep = logic.on_batch([Ack("r", "b")])
    >>> orjson.loads(out[0].data)["status"], keep
    ('done', True)
    """

    def __init__(self, resume: Any) -> None:
        state = resume or {}
        self.expected: set[str] | None = state.get("expected")
        self.acked: set[str] = state.get("acked", set())
        self.ts: int = state.get("ts", 0)

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        rid = ""
        for item in values:
            rid = item.request_id
            if isinstance(item, Expect):
                self.expected = set(item.parts)
                self.ts = item.ts
            else:
                self.acked.add(item.part)
        if self.expected is None or not self.expected <= self.acked:
            return [], StatefulBatchLogic.RETAIN
        # (done_at is the wall clock, like a segment event's emitted_at: the one field of the
        # flow's output that depends on timing)
        done_at = time.time_ns() // 1_000_000
        doc = status_document(rid, "done", self.ts, done_at=done_at, steps=len(self.expected))
        metrics.ERASURES.labels("done").inc()
        return [WriteStatus(rid, orjson.dumps(doc))], StatefulBatchLogic.DISCARD

    def snapshot(self) -> Any:
        return {"expected": self.expected, "acked": self.acked, "ts": self.ts}
