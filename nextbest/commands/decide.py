"""``nextbest decide ID | --anonymous-id X``: the next best action for one profile, as JSON.

The same code as ``GET /v1/customers/{id}/next-best-action`` (:class:`serving.nba.Decider`)
against the configured (or embedded) Redis. By default a preview: the served action is not
counted in the contact counters and the decision is not logged; ``--record`` does both, as the
API does (to the JSONL decision log of ``NEXTBEST_DECISION_LOG``, default
``NEXTBEST_HOME/decisions.jsonl``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from nextbest.commands.common import CLI_REDIS_BUDGET_S, UsageError, as_of_ms
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("decide", help="print the next best action for a customer as JSON")
    d.add_argument("id", metavar="ID", nargs="?", help="customer id")
    d.add_argument("--anonymous-id", metavar="X", help="a visitor's anonymous id")
    d.add_argument("--channel", default="web", help="channel (default: web)")
    d.add_argument("-n", type=int, default=3, help="how many actions to list (default: 3)")
    d.add_argument("--as-of", metavar="TS", help="RFC 3339 time with zone, or epoch ms")
    d.add_argument(
        "--record",
        action="store_true",
        help="count the served action and log the decision, as the API does",
    )
    d.set_defaults(func=cmd_decide)


def cmd_decide(args: argparse.Namespace, settings: Settings) -> int:
    """Print one decision as JSON."""
    from nextbest.runtime import redis_url
    from serving.nba import MAX_N

    if (args.id is None) == (args.anonymous_id is None):
        raise UsageError("decide: give a customer ID or --anonymous-id X (one of them)")
    if not 1 <= args.n <= MAX_N:
        raise UsageError(f"decide: -n must be in [1, {MAX_N}], got {args.n}")
    as_of = as_of_ms("decide", args.as_of)
    cat = actions_catalog(settings)
    if args.channel not in cat.channels:
        raise UsageError(f"decide: --channel {args.channel!r}: one of {', '.join(cat.channels)}")
    with redis_url(settings) as url:
        body = asyncio.run(_decide(url, settings, cat, args, as_of))
    sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def actions_catalog(settings: Settings) -> Any:
    """The action catalogue of ``NEXTBEST_ACTIONS`` (eligibility may name the configured
    segments); a bad file is a usage error (exit 2) naming file, line, action and field."""
    from decisions.catalog import ActionConfigError, load_catalog
    from models.targets import NAMES
    from nextbest.commands.segments import definitions

    names = definitions(settings).names  # a bad segments file: exit 2, naming it
    try:
        return load_catalog(settings.actions, names, NAMES)
    except ActionConfigError as exc:
        raise UsageError(f"NEXTBEST_ACTIONS: {exc}") from None


async def _decide(
    url: str, settings: Settings, cat: Any, args: argparse.Namespace, as_of: int
) -> Any:
    from features.redis_conn import aclose
    from serving.app import create_redis
    from serving.decision_log import JsonlDecisionLog
    from serving.nba import Decider
    from serving.scoring import ModelSet

    client = create_redis(url)
    log = None
    if args.record:
        spec = settings.decision_log
        path = Path(spec) if spec and spec != "kafka" else settings.home_path / "decisions.jsonl"
        log = JsonlDecisionLog(path)
    try:
        models = ModelSet(tuple("action:" + a for a in cat.ids))
        await models.arefresh(client)
        from nextbest.commands.recommend import reco_config
        from serving.reco import Recommender

        recommender = Recommender(reco_config(settings), client, budget_s=CLI_REDIS_BUDGET_S)
        decider = Decider(cat, models, client, log, record=args.record, recommender=recommender,
                          budget_s=CLI_REDIS_BUDGET_S)  # fmt: skip
        return await decider.decide(
            args.channel, as_of, args.n, customer_id=args.id, anonymous_id=args.anonymous_id
        )
    finally:
        if log is not None:
            log.close()
        await aclose(client)
