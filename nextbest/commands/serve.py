"""``nextbest serve``: serve the HTTP API until stopped."""

from __future__ import annotations

import argparse
import contextlib

from nextbest.commands.common import port_number, sigterm_as_interrupt
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("serve", help="serve the HTTP API")
    s.add_argument("--host", help="listen address (default: $NEXTBEST_HOST)")
    s.add_argument("--port", type=port_number, help="listen port (default: $NEXTBEST_PORT)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the HTTP API until stopped."""
    from nextbest.commands.segments import definitions
    from nextbest.runtime import redis_url
    from serving.app import run_server

    definitions(settings)  # a bad segments file stops here (exit 2), before anything starts
    host = args.host or settings.host
    port = args.port or settings.port
    with (
        redis_url(settings) as url,
        sigterm_as_interrupt(),
        contextlib.suppress(KeyboardInterrupt),
    ):
        run_server(settings, url, host, port)
    return 0
