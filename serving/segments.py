"""Segments over HTTP: definitions, sizes and recent entries, and each segment's members, paged.

Routes: ``GET /v1/segments`` and ``GET /v1/segments/{name}/members?cursor=&limit=``. Both read
the membership index the dataflow keeps, one sorted set per segment (``nb:{seg:<name>}:members``,
member = customer id, score = since in epoch ms; :func:`features.store.members_key`). In Redis
Cluster each index is one key in its own slot, so every command here touches one key.

The 24 h counts
---------------
``entries_24h`` counts the **current members whose ``since`` is within the 24 hours before
``as_of``** (``ZCOUNT`` on the index). A customer who entered and left again within the window is
not counted: the index only holds current members. ``exits_24h`` counts the **customers whose
last exit is within the window** (``ZCOUNT`` on ``nb:{seg:<name>}:exits``, each customer's
latest exit; a customer who left twice counts once; dropped profiles are not kept). The
complete history is the transitions output: the ``segment-events`` topic or
``$NEXTBEST_HOME/segment-events.jsonl``.

Paging
------
Members come in index order, by ``(since, customer id)``. The cursor is the last ``(since, id)``
pair of a page (:func:`encode_cursor`), and the next page starts strictly after it
(:data:`PAGE_SCRIPT`, atomic, one key): a member that stays in the segment for the whole walk is
returned exactly once, whatever is inserted or removed meanwhile; one that enters during the walk
comes if it sorts after the cursor (it entered later, so usually it does).

The pure helpers are shared with the CLI (``nextbest segments``), which calls the sync readers.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence
from typing import Annotated, Any, Final, NamedTuple, cast

import redis
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from redis.exceptions import RedisError

from features.segments import Segment, SegmentSet, load_segments
from features.store import exits_key, members_key
from models.targets import NAMES
from schemas.events import format_ts
from serving.auth import require
from serving.deps import AsOfQ, NowDep, RedisDep, parse_as_of
from serving.errors import ApiError, error_responses

DAY_MS: Final = 86_400_000
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
#: The gauge ``nextbest_segment_members`` is refreshed at most this often (seconds).
GAUGE_TTL_S: Final = 5.0
EXITS_NOTE: Final = (
    "customers whose last exit is within the window (each counted once; the full history is "
    "the transitions output: segment-events topic or $NEXTBEST_HOME/segment-events.jsonl)"
)
ENTRIES_NOTE: Final = (
    "current members whose since is within the window (from the index: a customer who entered "
    "and left within the window is not counted)"
)

#: One page of an index after a cursor. KEYS[1] = index; ARGV = since ('' = from the start),
#: customer id, count. If the cursor's member is still there with the same score, the page
#: starts after its rank; otherwise after the last member <= (since, id), found by a binary
#: search over the ties at ``since`` (members compared byte by byte, as Redis orders them).
PAGE_SCRIPT: Final = """
local key, n = KEYS[1], tonumber(ARGV[3])
local function le(a, b)
  local m = math.min(#a, #b)
  for i = 1, m do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local start = 0
if ARGV[1] ~= '' then
  local s = ARGV[1]
  local sc = redis.call('ZSCORE', key, ARGV[2])
  if sc and tonumber(sc) == tonumber(s) then
    start = redis.call('ZRANK', key, ARGV[2]) + 1
  else
    local lo = redis.call('ZCOUNT', key, '-inf', '(' .. s)
    local hi = lo + redis.call('ZCOUNT', key, s, s)
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if le(redis.call('ZRANGE', key, mid, mid)[1], ARGV[2]) then lo = mid + 1 else hi = mid end
    end
    start = lo
  end
end
return redis.call('ZRANGE', key, start, start + n - 1, 'WITHSCORES')
"""


class Cursor(NamedTuple):
    """The last ``(since, customer id)`` of a page."""

    since: int
    customer_id: str


def encode_cursor(since: int, customer_id: str) -> str:
    """An opaque, URL-safe cursor for the pair ``(since, customer_id)``.

    >>> c = encode_cursor(1_767_225_600_000, "c/42:x")
    >>> c
    'MTc2NzIyNTYwMDAwMDpjLzQyOng'
    >>> decode_cursor(c)
    Cursor(since=1767225600000, customer_id='c/42:x')
    """
    raw = f"{since}:{customer_id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(text: str) -> Cursor:
    """The pair of :func:`encode_cursor`; ``ValueError`` for anything else.

    >>> decode_cursor("bm9wZQ")
    Traceback (most recent call last):
    ...
    ValueError: bad cursor 'bm9wZQ'
    """
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        since, cid = raw.split(":", 1)
        if not cid or not since.isdigit():
            raise ValueError
        return Cursor(int(since), cid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError(f"bad cursor {text[:60]!r}") from None


def _args(cursor: Cursor | None, limit: int) -> list[str | int]:
    # one more than asked: tells whether a next page exists
    if cursor is None:
        return ["", "", limit + 1]
    return [cursor.since, cursor.customer_id, limit + 1]


def parse_page(raw: Sequence[Any], limit: int) -> tuple[list[tuple[str, int]], str | None]:
    """``(customer id, since)`` pairs from a :data:`PAGE_SCRIPT` reply, and the next cursor
    (``None`` on the last page).

    >>> parse_page([b"a", b"5", b"b", b"7", b"c", b"7"], 2)
    ([('a', 5), ('b', 7)], 'Nzpi')
    >>> parse_page([b"c", b"7"], 2)
    ([('c', 7)], None)
    """
    flat = list(raw)
    pairs = [
        (m.decode() if isinstance(m, bytes) else str(m), int(float(s)))
        for m, s in zip(flat[0::2], flat[1::2], strict=True)
    ]
    page = pairs[:limit]
    more = len(pairs) > limit and bool(page)
    return page, (encode_cursor(page[-1][1], page[-1][0]) if more else None)


def members_page(
    client: redis.Redis, segment: str, cursor: Cursor | None, limit: int
) -> tuple[list[tuple[str, int]], str | None]:
    """One page of a segment's members (sync: the CLI)."""
    script = client.register_script(PAGE_SCRIPT)
    return parse_page(script(keys=[members_key(segment)], args=_args(cursor, limit)), limit)


async def amembers_page(
    client: aioredis.Redis, segment: str, cursor: Cursor | None, limit: int
) -> tuple[list[tuple[str, int]], str | None]:
    """One page of a segment's members (async: serving)."""
    script = client.register_script(PAGE_SCRIPT)
    raw = await script(keys=[members_key(segment)], args=_args(cursor, limit))
    return parse_page(raw, limit)


def members_body(segment: str, page: list[tuple[str, int]], nxt: str | None) -> dict[str, Any]:
    """What ``GET /v1/segments/{name}/members`` returns (and ``nextbest segments members``)."""
    return {
        "segment": segment,
        "members": [{"customer_id": c, "since": format_ts(s), "since_ms": s} for c, s in page],
        "next_cursor": nxt,
    }


def load_definitions(spec: str | None) -> SegmentSet:
    """The segments of ``NEXTBEST_SEGMENTS`` (``None``: built-in; ``off``: none). A bad file
    raises :class:`features.segments.SegmentConfigError`."""
    if spec == "off":
        return SegmentSet(())
    return load_segments(spec, NAMES)


def definition(seg: Segment) -> dict[str, Any]:
    """A segment's definition as listed: rules as text."""
    return {
        "name": seg.name,
        "description": seg.description,
        "entry": seg.entry.text(),
        "exit": None if seg.exit is None else seg.exit.text(),
        "min_duration_ms": seg.min_duration_ms,
    }


def _queue_summary(pipe: Any, segments: SegmentSet, as_of_ms: int) -> None:
    for seg in segments.order:
        key = members_key(seg.name)
        pipe.zcard(key)
        pipe.zcount(key, f"({as_of_ms - DAY_MS}", as_of_ms)
        pipe.zcount(exits_key(seg.name), f"({as_of_ms - DAY_MS}", as_of_ms)


def _summary(segments: SegmentSet, results: list[Any], as_of_ms: int) -> dict[str, Any]:
    rows = []
    for i, seg in enumerate(segments.order):
        size, entries, exits = results[3 * i : 3 * i + 3]
        rows.append({**definition(seg), "members": int(size), "entries_24h": int(entries),
                     "exits_24h": int(exits)})  # fmt: skip
    return {
        "as_of": format_ts(as_of_ms),
        "window": {
            "from": format_ts(as_of_ms - DAY_MS),
            "to": format_ts(as_of_ms),
            "entries_24h": ENTRIES_NOTE,
            "exits_24h": EXITS_NOTE,
        },
        "segments": rows,
    }


def segments_summary(client: redis.Redis, segments: SegmentSet, as_of_ms: int) -> dict[str, Any]:
    """What ``GET /v1/segments`` returns, in one round trip (sync: the CLI)."""
    pipe = client.pipeline(transaction=False)
    _queue_summary(pipe, segments, as_of_ms)
    return _summary(segments, pipe.execute(), as_of_ms)


async def asegments_summary(
    client: aioredis.Redis, segments: SegmentSet, as_of_ms: int
) -> dict[str, Any]:
    """Async :func:`segments_summary` (one round trip)."""
    pipe = client.pipeline(transaction=False)
    _queue_summary(pipe, segments, as_of_ms)
    return _summary(segments, await pipe.execute(), as_of_ms)


async def refresh_member_gauge(app: FastAPI, client: aioredis.Redis) -> None:
    """Set ``nextbest_segment_members`` from ``ZCARD`` of every index, at most every
    :data:`GAUGE_TTL_S` seconds (labels: the configured segment names). A Redis error leaves
    the last values."""
    now = time.monotonic()
    segments = cast(SegmentSet, app.state.segments)
    if not segments.order or now - getattr(app.state, "gauge_at", -1e9) < GAUGE_TTL_S:
        return
    app.state.gauge_at = now
    pipe = client.pipeline(transaction=False)
    for seg in segments.order:
        pipe.zcard(members_key(seg.name))
    try:
        sizes = await pipe.execute()
    except (RedisError, OSError):
        return
    gauge = app.state.metrics.segment_members
    for seg, size in zip(segments.order, sizes, strict=True):
        gauge.labels(seg.name).set(int(size))


# ---------------------------------------------------------------------------------------------
# routes


def _segments(request: Request) -> SegmentSet:
    return cast(SegmentSet, request.app.state.segments)


SegmentsDep = Annotated[SegmentSet, Depends(_segments)]
router = APIRouter(tags=["segments"])


@router.get(
    "/v1/segments",
    responses=error_responses(401, 403, 422, 503),
    dependencies=[Depends(require("read"))],
    summary="Segment definitions, sizes and entries in the last 24 hours",
)
async def list_segments(
    request: Request,
    segments: SegmentsDep,
    redis: RedisDep,
    now_ms: NowDep,
    as_of: AsOfQ = None,
) -> dict[str, Any]:
    """Each configured segment: its definition (rules as text), its current size (``members``),
    ``entries_24h`` (current members who entered within the 24 h before ``as_of``; members who
    entered and already left are not counted) and ``exits_24h`` (customers whose last exit is
    within it)."""
    as_of_ms = now_ms if as_of is None else parse_as_of(as_of)
    body = await asegments_summary(redis, segments, as_of_ms)
    gauge = request.app.state.metrics.segment_members
    for row in body["segments"]:
        gauge.labels(row["name"]).set(row["members"])
    return body


@router.get(
    "/v1/segments/{name}/members",
    responses=error_responses(401, 403, 404, 422, 503),
    dependencies=[Depends(require("admin"))],
    summary="A segment's current members, paged",
)
async def list_members(
    segments: SegmentsDep,
    redis: RedisDep,
    name: Annotated[str, Path(min_length=1, max_length=64, description="The segment name.")],
    cursor: Annotated[
        str | None, Query(max_length=1000, description="next_cursor of the previous page.")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="Members per page (1 to 1000).")
    ] = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Members in order of ``(since, customer id)``; ``next_cursor`` is ``null`` on the last
    page. A member present for the whole walk comes exactly once."""
    if name not in segments.names:
        raise ApiError(404, "unknown_segment", f"no segment {name!r} is configured")
    try:
        after = None if cursor is None else decode_cursor(cursor)
    except ValueError as exc:
        raise ApiError(422, "bad_cursor", str(exc)) from None
    page, nxt = await amembers_page(redis, name, after, limit)
    return members_body(name, page, nxt)
