"""``nextbest export``: every stored profile as of a time, with its model scores, streamed.

The export walks the profile hashes with ``SCAN`` (``nb:{c:*}:profile``, plus ``nb:{a:*}:profile``
with ``include_anonymous``) in pages of :data:`PAGE` keys, reads each page with one pipelined
``HGETALL`` round trip and writes its rows before reading the next, so memory stays flat however
many profiles there are. Each row is the profile document of ``nextbest profile`` (features as of
``as_of``, RFM fields) plus ``scores`` (``{churn, propensity}``: probability, source and model
version) from the checkpoints loaded once at the start. ``SCAN`` order is Redis's: rows are not
sorted, and a profile written while the export runs may appear with either version (or, if it is
created mid-export, not at all).

Formats
-------
``jsonl``
    One profile document per line, exactly as ``nextbest profile`` prints it (compact).
``csv``
    A header and one row per profile with the fixed columns of :data:`CSV_COLUMNS`: ``id``
    (customer or anonymous id), ``kind``, ``as_of``, the windowed counts and revenues, lifetime
    purchases and revenue, average order value, first/last seen and last purchase times, days since
    last purchase / last seen, tenure, cart items / value / abandoned, ``events_total``,
    ``top_categories`` (joined by ``|``), ``rfm_r``, ``rfm_f``, ``rfm_m``, ``rfm_segment`` and,
    per target, ``<target>_probability``, ``<target>_source`` and ``<target>_model_version``.
    Missing values are empty cells; booleans are ``true``/``false``.

JSONL rows of customers carry ``segments`` (each current membership with ``since``), read in the
same pipelined round trip as the profiles.

The targeted list (``--segment NAME``)
--------------------------------------
:func:`export_segment` walks only that segment's membership index (``nb:{seg:<name>}:members``,
in order of ``(since, customer id)``, pages of :data:`PAGE` as ``GET /v1/segments/{name}/members``
does), reads the page's profiles and memberships with one pipelined round trip, and writes each
member's row (as above) plus ``segment`` and ``segment_since`` (when it entered, RFC 3339; CSV:
two more columns at the end). A member whose profile is gone by the time it is read is skipped.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any, Final

import orjson
import redis

from features.profile import LayoutError, from_fields
from features.redis_conn import scan_pages
from features.registry import BY_NAME, CSV_FEATURES
from features.rfm import RfmBoundaries
from features.store import (
    BOUNDARIES_KEY,
    NAMESPACE,
    decode_memberships,
    profile_key,
    segments_key,
)
from models.labels import TARGETS
from schemas.events import format_ts
from serving.scoring import ModelSet
from serving.segments import decode_cursor, members_page

__all__ = ["CSV_COLUMNS", "FORMATS", "PAGE", "SEGMENT_COLUMNS", "export_profiles", "export_segment"]

#: Keys asked of each ``SCAN`` call (and read per pipelined round trip).
PAGE: Final = 1000
FORMATS: Final = ("jsonl", "csv")

#: The profile features' columns (:data:`features.registry.CSV_FEATURES`): cells, then lists.
_CELLS: Final = tuple(n for n in CSV_FEATURES if BY_NAME[n].csv == "cell")
_JOINED: Final = tuple(n for n in CSV_FEATURES if BY_NAME[n].csv == "joined")
_RFM: Final = ("rfm_r", "rfm_f", "rfm_m", "rfm_segment")
#: The CSV header, in order.
CSV_COLUMNS: Final[tuple[str, ...]] = (
    "id",
    "kind",
    "as_of",
    *CSV_FEATURES,
    *_RFM,
    *(f"{t}_{part}" for t in TARGETS for part in ("probability", "source", "model_version")),
)


#: The targeted list's CSV header: :data:`CSV_COLUMNS`, the segment and when the member entered.
SEGMENT_COLUMNS: Final[tuple[str, ...]] = (*CSV_COLUMNS, "segment", "segment_since")


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def csv_row(doc: Mapping[str, Any]) -> list[Any]:
    """The :data:`CSV_COLUMNS` cells of a scored profile document."""
    ident = doc.get("customer_id", doc.get("anonymous_id"))
    row: list[Any] = [ident, doc.get("kind"), doc.get("as_of")]
    row.extend(_cell(doc.get(name)) for name in _CELLS)
    row.extend("|".join(doc.get(name) or ()) for name in _JOINED)
    row.extend(_cell(doc.get(name)) for name in _RFM)
    scores = doc.get("scores") or {}
    for t in TARGETS:
        s = scores.get(t) or {}
        row.extend(_cell(s.get(k)) for k in ("probability", "source", "model_version"))
    return row


def _patterns(include_anonymous: bool) -> list[str]:
    kinds = ["c", "a"] if include_anonymous else ["c"]
    return [f"{NAMESPACE}:{{{k}:*}}:profile" for k in kinds]


def _pages(client: redis.Redis, pattern: str) -> Iterator[list[Any]]:
    """Key pages of a ``SCAN`` over ``pattern`` (every primary of a Redis Cluster in turn).

    ``SCAN`` returns every key that exists for the whole walk; a key may come twice if Redis
    rehashes the keyspace meanwhile (rare). Rows are not deduplicated: that would need memory
    growing with the population.
    """
    return scan_pages(client, pattern, PAGE)


def _boundaries(raw: Any) -> RfmBoundaries | None:
    if not raw:
        return None
    try:
        return RfmBoundaries.decode(raw)
    except Exception:  # a corrupt publication must not break the export
        return None


def _start(
    client: redis.Redis, out: IO[str], fmt: str, header: tuple[str, ...]
) -> tuple[ModelSet, RfmBoundaries | None, Any]:
    """What an export needs first: the format checked, the models and RFM boundaries loaded
    once, and a CSV writer with its header (``None`` for JSONL)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    models = ModelSet()
    models.refresh(client)
    bounds = _boundaries(client.get(BOUNDARIES_KEY))
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(header)
    return models, bounds, writer


def export_profiles(
    client: redis.Redis,
    out: IO[str],
    as_of_ms: int,
    fmt: str = "jsonl",
    include_anonymous: bool = False,
    progress: bool = False,
) -> int:
    """Write every stored profile as of ``as_of_ms`` to ``out``; return the rows written.

    Profiles whose hash cannot be decoded (an older layout) are skipped, as ``nextbest profile``
    reports them absent.
    """
    models, bounds, writer = _start(client, out, fmt, CSV_COLUMNS)
    n = 0
    t0 = last = time.monotonic()
    for pattern in _patterns(include_anonymous):
        for keys in _pages(client, pattern):
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.hgetall(k)
                pipe.hgetall(_segments_key_of(k))
            chunk: list[str] = []
            got = pipe.execute()
            for raw, members in zip(got[0::2], got[1::2], strict=True):
                if not raw:
                    continue  # deleted between SCAN and HGETALL
                try:
                    v = from_fields(raw)
                except LayoutError:
                    continue
                segs = decode_memberships(members) if v.key.startswith("c:") else None
                doc = models.document(v, as_of_ms, bounds, segments=segs)
                if writer is not None:
                    writer.writerow(csv_row(doc))
                else:
                    chunk.append(orjson.dumps(doc).decode())
                n += 1
            if chunk:
                out.write("\n".join(chunk) + "\n")
            now = time.monotonic()
            if progress and now - last >= 0.5:
                last = now
                rate = n / max(now - t0, 1e-9)
                print(
                    f"\r  {n:>12,} profiles  {rate:>9,.0f}/s", end="", file=sys.stderr, flush=True
                )
    if progress:
        print(f"\r  {n:>12,} profiles", file=sys.stderr, flush=True)
    out.flush()
    return n


def _segments_key_of(key: bytes | str) -> str:
    """The memberships key beside a profile key.

    >>> _segments_key_of(b"nb:{c:42}:profile")
    'nb:{c:42}:segments'
    """
    k = key.decode() if isinstance(key, bytes) else key
    return k[: -len("profile")] + "segments"


def export_segment(
    client: redis.Redis,
    out: IO[str],
    segment: str,
    as_of_ms: int,
    fmt: str = "jsonl",
) -> int:
    """Write the members of ``segment`` (the targeted list) as of ``as_of_ms``; return the rows
    written. The caller checks that the segment is configured."""
    models, bounds, writer = _start(client, out, fmt, SEGMENT_COLUMNS)
    n = 0
    cursor = None
    while True:
        page, nxt = members_page(client, segment, cursor, PAGE)
        pipe = client.pipeline(transaction=False)
        for cid, _ in page:
            pipe.hgetall(profile_key(f"c:{cid}"))
            pipe.hgetall(segments_key(f"c:{cid}"))
        got = pipe.execute()
        chunk: list[str] = []
        for (_, since), raw, members in zip(page, got[0::2], got[1::2], strict=True):
            if not raw:
                continue  # left the store since the index was read
            try:
                v = from_fields(raw)
            except LayoutError:
                continue
            doc = models.document(v, as_of_ms, bounds, segments=decode_memberships(members))
            doc["segment"] = segment
            doc["segment_since"] = format_ts(since)
            if writer is not None:
                writer.writerow([*csv_row(doc), segment, doc["segment_since"]])
            else:
                chunk.append(orjson.dumps(doc).decode())
            n += 1
        if chunk:
            out.write("\n".join(chunk) + "\n")
        if nxt is None:
            break
        cursor = decode_cursor(nxt)
    out.flush()
    return n
