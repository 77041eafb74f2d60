"""``nextbest catalog load FILE``: load a product catalogue (JSONL or CSV) into Redis.

Good rows load whatever the bad ones are; each bad row is reported with its line and reason
(:mod:`features.catalog`). The load replaces the previous catalogue whole; serving sees the
new one within a request (it reads the catalogue's version on every answer).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import redis

from features.redis_conn import connect
from features.store import CATALOG_KEY, CATALOG_VERSION_KEY
from nextbest.commands.common import UsageError
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("catalog", help="load the product catalogue (JSONL or CSV) into Redis")
    verbs = c.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    load = verbs.add_parser("load", help="replace the catalogue with FILE's good rows")
    load.add_argument("file", metavar="FILE", help="JSONL, or CSV with a header row (.csv)")
    load.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    c.set_defaults(func=cmd_catalog)


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    """Load the catalogue; exit 1 when no row could be loaded."""
    from features.catalog import parse_file
    from nextbest.runtime import redis_url

    path = Path(args.file)
    try:
        items, errors = parse_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"catalog load: cannot read {path}: {exc}") from None
    for e in errors[:100]:
        print(f"{path}:{e.line}: {e.reason}: {e.detail}", file=sys.stderr)
    if len(errors) > 100:
        print(f"... and {len(errors) - 100} more rejected rows", file=sys.stderr)
    if not items:
        print(f"nextbest: catalog load: no valid row in {path}; nothing loaded", file=sys.stderr)
        return 1
    with redis_url(settings) as url:
        client = connect(url)
        try:
            version = write_catalog(client, items)
        finally:
            client.close()
    summary = {
        "file": str(path),
        "loaded": len(items),
        "rejected": len(errors),
        "rejected_by_reason": dict(Counter(e.reason for e in errors)),
        "out_of_stock": sum(1 for i in items if not i.in_stock),
        "version": version,
    }
    if args.json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        print(
            f"loaded {len(items):,} products ({summary['out_of_stock']:,} out of stock), "
            f"rejected {len(errors):,} rows; catalogue version {version}"
        )
    return 0


def write_catalog(client: redis.Redis, items: Iterable[Any], chunk: int = 1000) -> str:
    """Replace the loaded catalogue with ``items`` (:class:`features.catalog.CatalogItem`):
    written to a temporary key, renamed over the catalogue (readers see the old one or the new
    one, never half), then a new version. Returns the version."""
    from features.catalog import encode_item

    tmp = CATALOG_KEY + ":loading"
    client.delete(tmp)
    batch: list[Any] = []
    n = 0
    for item in items:
        batch.extend((item.product_id, encode_item(item)))
        n += 1
        if len(batch) >= 2 * chunk:
            client.hset(tmp, items=batch)
            batch = []
    if batch:
        client.hset(tmp, items=batch)
    if n:
        client.rename(tmp, CATALOG_KEY)
    else:
        client.delete(CATALOG_KEY)
    version = uuid.uuid4().hex
    client.set(CATALOG_VERSION_KEY, version)
    return version
