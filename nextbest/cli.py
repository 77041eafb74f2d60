"""The ``nextbest`` command line: replay, run, serve, profile, simulate, export, evaluate, demo.

This module is the entry point (``nextbest = "nextbest.cli:main"``): it assembles the commands,
one module each under :mod:`nextbest.commands`, reads the settings once (bad values fail at start
naming the variable) and maps errors to exit codes. Every command uses the configured Redis/Kafka
or the embedded ones, and stops whatever it started before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import redis
from redis.exceptions import RedisClusterException

from nextbest import __version__
from nextbest.commands import COMMANDS
from nextbest.commands.common import EXIT_UNAVAILABLE, EXIT_USAGE, UsageError, die
from nextbest.settings import ConfigError, Settings

log = logging.getLogger("nextbest")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2 (no traceback, no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its help texts are the CLI reference in the README)."""
    p = _Parser(
        prog="nextbest",
        description="nextbest: real-time customer profiles, segments, next best actions and "
        "product recommendations.",
        epilog="Configuration comes from NEXTBEST_* environment variables (see README).",
    )
    p.add_argument("--version", action="version", version=f"nextbest {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        die(f"config error: {exc}")
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code: int = args.func(args, settings)
    except UsageError as exc:
        die(str(exc))
    except ConfigError as exc:  # (found when a command loads a config file: segments, webhooks)
        die(f"config error: {exc}")
    except (redis.ConnectionError, redis.TimeoutError, RedisClusterException) as exc:
        die(f"Redis unreachable (NEXTBEST_REDIS_URL): {exc}", EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code
