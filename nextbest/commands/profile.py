"""``nextbest profile ID | --anonymous-id X``: print one profile as JSON, as of a time."""

from __future__ import annotations

import argparse
import sys

import orjson

from nextbest.commands.common import EXIT_NOT_FOUND, UsageError, as_of_ms
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pr = sub.add_parser("profile", help="print a customer's profile as JSON")
    pr.add_argument("id", metavar="ID", nargs="?", help="customer id")
    pr.add_argument(
        "--anonymous-id", metavar="X", help="a visitor's anonymous id (resolved to its customer)"
    )
    pr.add_argument("--as-of", metavar="TS", help="RFC 3339 time with zone, or epoch ms")
    pr.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace, settings: Settings) -> int:
    """Print one profile as JSON, computed as of a time."""
    import redis

    from features.redis_conn import connect
    from features.store import read_link, read_stored_profile
    from nextbest.runtime import redis_url
    from schemas.keys import customer_key, device_key
    from serving.scoring import ModelSet

    if (args.id is None) == (args.anonymous_id is None):
        raise UsageError("profile: give a customer ID or --anonymous-id X (one of them)")
    as_of = as_of_ms("profile", args.as_of)
    with redis_url(settings) as url:
        client: redis.Redis = connect(url)
        try:
            resolved_from = None
            if args.anonymous_id is not None:
                linked = read_link(client, args.anonymous_id)
                key = customer_key(linked) if linked else device_key(args.anonymous_id)
                resolved_from = args.anonymous_id
                what = f"visitor {args.anonymous_id!r}"
            else:
                key = customer_key(args.id)
                what = f"customer {args.id!r}"
            view, bounds, segments = read_stored_profile(client, key)
            models = ModelSet()
            if view is not None:
                models.refresh(client)
        finally:
            client.close()
    if view is None:
        print(f"nextbest: no profile for {what}", file=sys.stderr)
        return EXIT_NOT_FOUND
    doc = models.document(view, as_of, bounds, resolved_from, segments)
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
