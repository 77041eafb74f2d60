"""``nextbest segments``: the segments and their sizes (as ``GET /v1/segments``); ``segments
members NAME`` (one page, as ``GET /v1/segments/{name}/members``); ``segments rebuild NAME``
(re-evaluate one segment over every profile now, emitting backfill transitions)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from nextbest.commands.common import UsageError, as_of_ms, positive_int
from nextbest.settings import ConfigError, Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sg = sub.add_parser("segments", help="list segments with sizes; members NAME; rebuild NAME")
    sg.add_argument("--json", action="store_true", help="print JSON (as GET /v1/segments)")
    sg.add_argument("--as-of", metavar="TS", help="end of the 24 h entries window (default now)")
    sg.set_defaults(func=cmd_list)
    subs = sg.add_subparsers(dest="segments_command", metavar="SUBCOMMAND")
    mem = subs.add_parser("members", help="one page of a segment's members")
    mem.add_argument("name", metavar="NAME", help="segment name")
    mem.add_argument("--limit", type=positive_int, default=100, help="members per page (100)")
    mem.add_argument("--cursor", metavar="C", help="next_cursor of the previous page")
    mem.add_argument("--json", action="store_true", help="print JSON (as the HTTP API)")
    mem.set_defaults(func=cmd_members)
    rb = subs.add_parser(
        "rebuild", help="re-evaluate a segment over every profile; emit backfill transitions"
    )
    rb.add_argument("name", metavar="NAME", help="segment name")
    rb.add_argument(
        "--as-of", metavar="TS", help="evaluate as of this time (default now); RFC 3339 or ms"
    )
    rb.add_argument("--json", action="store_true", help="print the summary as JSON")
    rb.set_defaults(func=cmd_rebuild)


def definitions(settings: Settings) -> Any:
    """The configured segments; a bad file is a configuration error (exit 2)."""
    from features.segments import SegmentConfigError
    from serving.segments import load_definitions

    try:
        return load_definitions(settings.segments)
    except SegmentConfigError as exc:
        raise ConfigError(f"NEXTBEST_SEGMENTS: {exc}") from None


def configured_segment(command: str, settings: Settings, name: str) -> Any:
    """The definition of segment ``name``; a usage error (exit 2) naming the configured ones
    when there is none."""
    segs = definitions(settings)
    if name not in segs.names:
        known = ", ".join(segs.names) or "none (NEXTBEST_SEGMENTS=off)"
        raise UsageError(f"{command}: no segment {name!r} is configured (configured: {known})")
    return segs[name]


def _table(body: dict[str, Any]) -> str:
    rows = [("segment", "members", "entries_24h", "exits_24h", "description")]
    for s in body["segments"]:
        exits = "-" if s["exits_24h"] is None else str(s["exits_24h"])
        rows.append((s["name"], f"{s['members']:,}", f"{s['entries_24h']:,}", exits,
                     s["description"]))  # fmt: skip
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}  {r[4]}" for r in rows
    ]
    lines.append(
        f"entries_24h: members who entered since {body['window']['from']} (and are still in); "
        "exits_24h: customers whose last exit is since then"
    )
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    """Print the segments with their sizes and recent entries."""
    import redis

    from features.redis_conn import connect
    from nextbest.runtime import redis_url
    from serving.segments import segments_summary

    segs = definitions(settings)
    as_of = as_of_ms("segments", args.as_of)
    with redis_url(settings) as url:
        client: redis.Redis = connect(url)
        try:
            body = segments_summary(client, segs, as_of)
        finally:
            client.close()
    if args.json:
        sys.stdout.write(orjson.dumps(body).decode() + "\n")
    else:
        print(_table(body))
    return 0


def cmd_members(args: argparse.Namespace, settings: Settings) -> int:
    """Print one page of a segment's members."""
    import redis

    from features.redis_conn import connect
    from nextbest.runtime import redis_url
    from serving.segments import decode_cursor, members_body, members_page

    configured_segment("segments members", settings, args.name)
    try:
        cursor = None if args.cursor is None else decode_cursor(args.cursor)
    except ValueError as exc:
        raise UsageError(f"segments members: {exc}") from None
    with redis_url(settings) as url:
        client: redis.Redis = connect(url)
        try:
            page, nxt = members_page(client, args.name, cursor, args.limit)
        finally:
            client.close()
    body = members_body(args.name, page, nxt)
    if args.json:
        sys.stdout.write(orjson.dumps(body).decode() + "\n")
        return 0
    for m in body["members"]:
        print(f"{m['customer_id']}\t{m['since']}")
    if nxt is not None:
        print(f"next page: nextbest segments members {args.name} --cursor {nxt}", file=sys.stderr)
    return 0


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    """Re-evaluate one segment over every customer profile; emit backfill transitions."""
    import redis

    from features.redis_conn import connect
    from nextbest.runtime import redis_url
    from nextbest.segments import rebuild, transitions_output

    seg = configured_segment("segments rebuild", settings, args.name)
    as_of = as_of_ms("segments rebuild", args.as_of)
    with redis_url(settings) as url:
        client: redis.Redis = connect(url)
        where, emit, close = transitions_output(settings)
        try:
            res = rebuild(client, seg, as_of, emit, progress=sys.stderr.isatty())
        finally:
            close()
            client.close()
    summary = {**res.as_dict(), "output": where}
    if args.json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        print(
            f"rebuilt {res.segment} as of {summary['as_of']}: {res.profiles:,} profiles, "
            f"{res.members:,} members; entered {res.entered:,}, exited {res.exited:,} "
            f"(backfill) -> {where}; stale index entries removed {res.index_removed:,}"
        )
    return 0
