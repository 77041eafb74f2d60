"""``nextbest export``: every profile with its scores as of a time (JSONL or CSV), streamed;
with ``--segment NAME`` only that segment's members (the targeted list)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from nextbest.commands.common import UsageError, as_of_ms
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ex = sub.add_parser("export", help="write every profile with its scores (JSONL or CSV)")
    ex.add_argument(
        "--as-of", metavar="TS", help="RFC 3339 time with zone, or epoch ms (default now)"
    )
    ex.add_argument("--format", default="jsonl", metavar="FMT", help="jsonl (default) or csv")
    ex.add_argument("--out", metavar="FILE", help="output file (default: stdout)")
    ex.add_argument(
        "--include-anonymous", action="store_true", help="also anonymous visitors' profiles"
    )
    ex.add_argument(
        "--segment",
        metavar="NAME",
        help="only the members of this segment, with segment_since (the targeted list)",
    )
    ex.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write every profile with its scores as of a time (JSONL or CSV), streamed."""
    import redis

    from features.redis_conn import connect
    from nextbest.commands.segments import configured_segment
    from nextbest.export import FORMATS, export_profiles, export_segment
    from nextbest.runtime import redis_url
    from schemas.events import format_ts

    as_of = as_of_ms("export", args.as_of)
    if args.format not in FORMATS:
        raise UsageError(f"export: unknown --format {args.format!r} (jsonl or csv)")
    if args.segment is not None:
        if args.include_anonymous:
            raise UsageError("export: --segment lists customers: drop --include-anonymous")
        configured_segment("export", settings, args.segment)
    out_path = Path(args.out) if args.out else None
    if out_path is not None and not out_path.parent.is_dir():
        raise UsageError(f"export: no such directory: {out_path.parent}")
    t0 = time.perf_counter()
    with redis_url(settings) as url, contextlib.ExitStack() as stack:
        client: redis.Redis = connect(url)
        stack.callback(client.close)
        out = (
            stack.enter_context(out_path.open("w", encoding="utf-8", newline=""))
            if out_path is not None
            else sys.stdout
        )
        if args.segment is not None:
            n = export_segment(client, out, args.segment, as_of, args.format)
        else:
            n = export_profiles(
                client,
                out,
                as_of,
                args.format,
                include_anonymous=args.include_anonymous,
                progress=sys.stderr.isatty(),
            )
    where = str(out_path) if out_path is not None else "stdout"
    what = "profiles" if args.segment is None else f"members of {args.segment}"
    print(
        f"exported {n:,} {what} ({args.format}) as of {format_ts(as_of)} -> {where} "
        f"in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0
