"""``nextbest segments rebuild``: re-evaluate one segment over every stored customer profile now.

After a definition changes, the dataflow keeps the memberships it holds and re-evaluates them
under the new rules only at each customer's next event or flip (see the README, "Changing a
definition"). ``rebuild NAME`` does it at once, for one segment: it walks every customer profile
(``SCAN nb:{c:*}:profile`` in pages, each page read with one pipelined round trip of the profile
and memberships hashes), renders each profile as of ``as_of`` as serving does (scores from the
published models, else the priors; RFM tiers from the published boundaries), decides the
segment's rules against the stored memberships, and for every customer whose stored membership
differs:

- emits an entry or exit at ``as_of`` flagged ``"backfill": true`` to the transitions output
  (``$NEXTBEST_HOME/segment-events.jsonl``, or the ``segment-events`` topic when Kafka brokers are
  configured), with a deterministic ``transition_id`` as usual;
- then updates the customer's memberships hash (``HSET``/``HDEL`` of that one field) and the
  segment's index (``ZADD``/``ZREM``).

A member whose index entry is missing is indexed again, and index entries of customers the hashes
do not list are removed (without a record: the index is a projection). Rules reading another
segment read its stored membership. ``min_duration`` cannot be checked (how long a condition has
held is in the dataflow's state only): a customer whose entry condition holds now enters now.
A second rebuild at the same or a later time with unchanged profiles emits nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from dataflows.records import SegmentEvent
from features.profile import LayoutError, from_fields
from features.redis_conn import scan_pages
from features.segments import ENTERED, EXITED, Membership, Segment, decide
from features.store import (
    BOUNDARIES_KEY,
    NAMESPACE,
    Command,
    ProfileWriter,
    _boundaries,
    decode_memberships,
    members_key,
    segments_key,
)
from serving.scoring import ModelSet
from serving.segments import decode_cursor, members_page

#: Profiles per ``SCAN`` page and pipelined read.
PAGE = 1000

Emit = Callable[[list[SegmentEvent]], None]


@dataclass
class RebuildResult:
    """What a rebuild did."""

    segment: str
    as_of_ms: int
    profiles: int = 0
    members: int = 0
    entered: int = 0
    exited: int = 0
    index_removed: int = 0

    def as_dict(self) -> dict[str, Any]:
        from schemas.events import format_ts

        return {**self.__dict__, "as_of": format_ts(self.as_of_ms)}


def customer_of(profile_key: bytes | str) -> str | None:
    """The customer id of a profile key, ``None`` for anything else.

    >>> customer_of(b"nb:{c:42}:profile"), customer_of("nb:{a:x}:profile")
    ('42', None)
    """
    k = profile_key.decode() if isinstance(profile_key, bytes) else profile_key
    head, tail = f"{NAMESPACE}:{{c:", "}:profile"
    if k.startswith(head) and k.endswith(tail):
        return k[len(head) : -len(tail)]
    return None


def _pages(client: redis.Redis) -> Iterator[list[Any]]:
    """Pages of customer profile keys (every primary of a Redis Cluster in turn)."""
    return scan_pages(client, f"{NAMESPACE}:{{c:*}}:profile", PAGE)


def _reason(seg: Segment, direction: str, values: dict[str, Any]) -> dict[str, Any]:
    by_exit = direction == EXITED and seg.exit is not None
    if by_exit and seg.exit is not None:
        cond = seg.exit.text()
    else:
        cond = seg.entry.text() if direction == ENTERED else "not " + seg.entry.text()
    return {"rule": "exit" if by_exit else "entry", "condition": cond, "values": values,
            "rebuild": True}  # fmt: skip


def decide_one(
    seg: Segment, doc: dict[str, Any], stored: dict[str, int]
) -> tuple[str | None, dict[str, Any]]:
    """The transition (``entered``/``exited``/``None``) that ``seg`` makes for a customer whose
    stored memberships are ``stored``, and the values the rules read."""
    records = {n: Membership(True, s) for n, s in stored.items()}
    d = decide(seg, doc, records)
    if seg.name in stored:
        leave = (not d.entry) if d.exit is None else d.exit
        return (EXITED if leave else None), d.values
    return (ENTERED if d.entry and not d.exit else None), d.values


def rebuild(
    client: redis.Redis,
    seg: Segment,
    as_of_ms: int,
    emit: Emit,
    progress: bool = False,
) -> RebuildResult:
    """Re-evaluate ``seg`` over every customer profile as of ``as_of_ms`` (see the module)."""
    models = ModelSet()
    models.refresh(client)
    bounds = _boundaries(client.get(BOUNDARIES_KEY))  # type: ignore[arg-type]
    writer = ProfileWriter(client)
    res = RebuildResult(seg.name, as_of_ms)
    index = members_key(seg.name)
    t0 = last = time.monotonic()
    for keys in _pages(client):
        pipe = client.pipeline(transaction=False)
        ids = [customer_of(k) for k in keys]
        for k, cid in zip(keys, ids, strict=True):
            pipe.hgetall(k)
            pipe.hgetall(segments_key(f"c:{cid}"))
        raw = pipe.execute()
        events: list[SegmentEvent] = []
        batch: list[Command] = []
        for i, cid in enumerate(ids):
            fields, members = raw[2 * i], decode_memberships(raw[2 * i + 1])
            if cid is None or not fields:
                continue
            try:
                view = from_fields(fields)
            except LayoutError:
                continue
            res.profiles += 1
            doc = models.document(view, as_of_ms, bounds)
            direction, values = decide_one(seg, doc, members)
            skey = segments_key(f"c:{cid}")
            if direction is not None:
                reason = _reason(seg, direction, values)
                events.append(
                    SegmentEvent(cid, seg.name, direction, as_of_ms, reason, backfill=True)
                )
            if direction == ENTERED:
                res.entered += 1
                res.members += 1
                batch.append(("HSET", skey, seg.name, str(as_of_ms)))
                batch.append(("ZADD", index, as_of_ms, cid))
            elif direction == EXITED:
                res.exited += 1
                batch.append(("HDEL", skey, seg.name))
                batch.append(("ZREM", index, cid))
            elif seg.name in members:
                res.members += 1
                batch.append(("ZADD", index, members[seg.name], cid))  # absolute: as the hash says
        if events:
            emit(events)  # the records first: a crash before the writes re-emits, same ids
        if batch:
            writer.execute(batch)
        now = time.monotonic()
        if progress and now - last >= 0.5:
            last = now
            print(f"\r  {res.profiles:>12,} profiles  {res.profiles / (now - t0):>9,.0f}/s",
                  end="", file=sys.stderr, flush=True)  # fmt: skip
    res.index_removed = _prune_index(client, seg.name)
    if progress:
        print(f"\r  {res.profiles:>12,} profiles", file=sys.stderr, flush=True)
    return res


def _prune_index(client: redis.Redis, name: str) -> int:
    """Remove index entries of customers whose memberships hash does not list ``name``."""
    removed = 0
    cursor = None
    while True:
        page, nxt = members_page(client, name, cursor, PAGE)
        pipe = client.pipeline(transaction=False)
        for cid, _ in page:
            pipe.hexists(segments_key(f"c:{cid}"), name)
        stale = [cid for (cid, _), ok in zip(page, pipe.execute(), strict=True) if not ok]
        if stale:
            removed += int(client.zrem(members_key(name), *stale))
        if nxt is None:
            return removed
        cursor = decode_cursor(nxt)


def transitions_output(settings: Any) -> tuple[str, Emit, Callable[[], None]]:
    """Where transitions go (a description), a function writing a batch, and a closer: the
    ``segment-events`` topic when Kafka brokers are configured, else the embedded mode's JSONL
    file under ``NEXTBEST_HOME``; the dataflow's sinks, with the settings' failure policy."""
    from dataflows.deadletters import SegmentEventsFileSink, SegmentEventsKafkaSink
    from nextbest.running import sink_options

    options = sink_options(settings)
    if settings.kafka_brokers:
        sink: Any = SegmentEventsKafkaSink(
            settings.kafka_brokers, settings.topic_segment_events, options
        )
        where = f"topic {settings.topic_segment_events}"
    else:
        path = settings.home_path / "segment-events.jsonl"
        sink = SegmentEventsFileSink(path, options)
        where = str(path)
    part = sink.build("segment_events", 0, 1)
    return where, part.write_batch, part.close
