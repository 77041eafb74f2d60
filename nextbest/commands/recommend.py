"""``nextbest recommend ID | --anonymous-id X | --similar P``: recommendations as JSON.

The same code as ``GET /v1/customers/{id}/recommendations`` (:class:`serving.reco.Recommender`)
against the configured (or embedded) Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from nextbest.commands.common import CLI_REDIS_BUDGET_S, UsageError, as_of_ms
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("recommend", help="print product recommendations for a customer as JSON")
    r.add_argument("id", metavar="ID", nargs="?", help="customer id")
    r.add_argument("--anonymous-id", metavar="X", help="a visitor's anonymous id")
    r.add_argument("--similar", metavar="P", help="products like product P instead")
    r.add_argument("-n", type=int, default=10, help="how many products (default: 10)")
    r.add_argument("--context-product", metavar="P", help="the product on the page")
    r.add_argument("--category", metavar="C", help="only products of this category")
    r.add_argument("--as-of", metavar="TS", help="RFC 3339 time with zone, or epoch ms")
    r.set_defaults(func=cmd_recommend)


def reco_config(settings: Settings) -> Any:
    """The recommendations settings of ``NEXTBEST_RECOMMENDATIONS``; a bad file is a usage
    error (exit 2) naming file, line and field."""
    from decisions.recommend import RecoConfigError, load_config

    try:
        return load_config(settings.recommendations)
    except RecoConfigError as exc:
        raise UsageError(f"NEXTBEST_RECOMMENDATIONS: {exc}") from None


def cmd_recommend(args: argparse.Namespace, settings: Settings) -> int:
    """Print one answer as JSON."""
    from nextbest.runtime import redis_url
    from serving.reco import MAX_N

    given = [x for x in (args.id, args.anonymous_id, args.similar) if x is not None]
    if len(given) != 1:
        raise UsageError("recommend: give a customer ID, --anonymous-id X or --similar P (one)")
    if not 1 <= args.n <= MAX_N:
        raise UsageError(f"recommend: -n must be in [1, {MAX_N}], got {args.n}")
    as_of = as_of_ms("recommend", args.as_of)
    cfg = reco_config(settings)
    with redis_url(settings) as url:
        body = asyncio.run(_recommend(url, cfg, args, as_of))
    sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


async def _recommend(url: str, cfg: Any, args: argparse.Namespace, as_of: int) -> Any:
    from features.redis_conn import aclose
    from serving.app import create_redis
    from serving.reco import Recommender

    client = create_redis(url)
    try:
        from features.store import CATALOG_VERSION_KEY

        rec = Recommender(cfg, client, budget_s=CLI_REDIS_BUDGET_S)
        await rec.catalog.refresh(client, await client.get(CATALOG_VERSION_KEY))
        if args.similar is not None:
            return await rec.similar(args.similar, args.n, as_of)
        return await rec.recommend(
            as_of,
            args.n,
            customer_id=args.id,
            anonymous_id=args.anonymous_id,
            context_product=args.context_product,
            category=args.category,
        )
    finally:
        await aclose(client)
