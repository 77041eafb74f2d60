"""What the commands share: usage errors and exit codes, signal handling, argument types,
``--as-of``."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn, TypeVar

T = TypeVar("T", int, float)

EXIT_USAGE = 2
EXIT_NOT_FOUND = 1
#: A service a command needs (Redis) did not answer.
EXIT_UNAVAILABLE = 3
REPLAY_WRITE_INTERVAL_MS = 2000
#: The Redis budget of ``decide`` and ``recommend`` (seconds): ``serve`` answers within 0.1 s or
#: degrades, a person previewing an answer can wait (a slow Redis still fails after this).
CLI_REDIS_BUDGET_S = 2.0


class UsageError(Exception):
    """A wrong argument discovered after parsing (missing file, bad timestamp)."""


def die(msg: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``nextbest: msg`` to stderr and exit with ``code``."""
    print(f"nextbest: {msg}", file=sys.stderr)
    raise SystemExit(code)


def now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def stop_on_signals(stop: Any) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (a :class:`~dataflows.sources.StopRequest`): the source
    ends and the flow finishes cleanly."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set(signal.Signals(signum).name)

    prev_term = signal.signal(signal.SIGTERM, handler)
    prev_int = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev_term)
        signal.signal(signal.SIGINT, prev_int)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a command the way Ctrl-C does (cleanly, releasing embedded services)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def as_of_ms(command: str, raw: str | None) -> int:
    """``--as-of`` (RFC 3339 with zone or epoch ms) as epoch ms; now when absent."""
    from schemas.events import parse_as_of

    if raw is None:
        return now_ms()
    parsed = parse_as_of(raw)
    if parsed is None:
        raise UsageError(f"{command}: bad --as-of {raw!r} (RFC 3339 with zone or epoch ms)")
    return parsed


# ---------------------------------------------------------------------------------------------
# argument types


def _number(raw: str, parse: Callable[[str], T], ok: Callable[[T], bool], what: str) -> T:
    """``raw`` parsed, if ``ok`` says it is fine; else the argparse error "expected {what}"."""
    try:
        v = parse(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {raw!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {raw!r}")
    return v


def positive_int(raw: str) -> int:
    return _number(raw, int, lambda v: v > 0, "a positive integer")


def positive_float(raw: str) -> float:
    return _number(raw, float, lambda v: 0 < v < float("inf"), "a positive number")


def nonneg_int(raw: str) -> int:
    return _number(raw, int, lambda v: v >= 0, "an integer >= 0")


def port_number(raw: str) -> int:
    v = positive_int(raw)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in [1, 65535], got {raw!r}")
    return v


def duration(raw: str) -> int:
    from nextbest.settings import duration_ms

    try:
        return duration_ms(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def unit_rate(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {raw!r}") from None
