"""``nextbest demo``: simulate, stream through the dataflow and serve the API (the work is in
:mod:`nextbest.demo`)."""

from __future__ import annotations

import argparse

from nextbest.commands.common import (
    port_number,
    positive_float,
    positive_int,
    sigterm_as_interrupt,
)
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("demo", help="simulate, stream through the dataflow, serve the API")
    d.add_argument(
        "--events",
        type=positive_int,
        metavar="N",
        help="bounded: stream about N events of the history, print the summary and exit",
    )
    d.add_argument(
        "--customers", type=positive_int, default=1000, metavar="N", help="population size"
    )
    d.add_argument(
        "--rate",
        type=positive_float,
        default=300.0,
        metavar="R",
        help="live events per second once the history is streamed (default 300)",
    )
    d.add_argument(
        "--live-for",
        type=positive_float,
        metavar="S",
        help="stop after S seconds of live events (default: until Ctrl-C)",
    )
    d.add_argument(
        "--port", type=port_number, default=None, help="API port (default $NEXTBEST_PORT)"
    )
    d.add_argument(
        "--keep", action="store_true", help="keep the store of the previous demo (default: clean)"
    )
    d.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Simulate, stream through the dataflow and serve the API (bounded with --events)."""
    from nextbest.demo import run_demo

    with sigterm_as_interrupt():
        return run_demo(settings, events=args.events, customers=args.customers, port=args.port,
                        keep=args.keep, live_for=args.live_for, rate=args.rate)  # fmt: skip
