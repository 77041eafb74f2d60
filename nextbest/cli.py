"""The ``nextbest`` command line: replay, run, serve, profile, simulate, demo.

Every command reads the settings once (bad values fail at start naming the variable), uses the
configured Redis/Kafka or the embedded ones, and stops whatever it started before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import orjson

from nextbest import __version__
from nextbest.running import (
    Progress,
    flow_config,
    kafka_flow,
    print_summary,
    progress_line,
    run_flow,
    sink_gave_up,
    sink_options,
)
from nextbest.settings import ConfigError, Settings

log = logging.getLogger("nextbest")

EXIT_USAGE = 2
REPLAY_WRITE_INTERVAL_MS = 2000
EXIT_NOT_FOUND = 1


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2 (no traceback, no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


class UsageError(Exception):
    """A wrong argument discovered after parsing (missing file, bad timestamp)."""


def _die(msg: str, code: int = EXIT_USAGE) -> NoReturn:
    print(f"nextbest: {msg}", file=sys.stderr)
    raise SystemExit(code)


# ---------------------------------------------------------------------------------------------
# helpers


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def _stop_on_signals(stop: Any) -> Iterator[None]:
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
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a command the way Ctrl-C does (cleanly, releasing embedded services)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------
# commands


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Run the profile flow over JSONL files to their end and print a summary."""
    from dataflows.flow import FlowStats, build_flow
    from dataflows.metrics import serve_metrics
    from dataflows.sinks import DeadLetterFileSink, RedisSink
    from dataflows.sources import JsonlFilesSource
    from nextbest.runtime import redis_url

    paths = [Path(p) for p in args.files]
    for p in paths:
        if not p.is_file():
            raise UsageError(f"replay: no such file: {p}")
    dead_letter = (
        Path(args.dead_letter) if args.dead_letter else settings.home_path / "dead-letter.jsonl"
    )
    with redis_url(settings) as url:
        serve_metrics(settings.metrics_port)
        stats = FlowStats()
        options = sink_options(settings)
        flow = build_flow(
            JsonlFilesSource(paths, settings.batch_size),
            RedisSink(url, options),
            DeadLetterFileSink(dead_letter, options),
            stats,
            config=flow_config(settings, args.write_interval, models=not args.no_models),
        )
        t0 = time.perf_counter()
        show = not args.json and sys.stderr.isatty()
        with (
            _sigterm_as_interrupt(),
            Progress(lambda: progress_line(stats, t0), enabled=show),
            sink_gave_up(),
        ):
            run_flow(flow, settings)
        summary = stats.as_dict(time.perf_counter() - t0)
    summary["dead_letter_file"] = str(dead_letter)
    print_summary(summary, args.json, str(dead_letter))
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Consume the Kafka topics until stopped (SIGTERM or Ctrl-C stop it cleanly).

    When partitions are added to a topic (or a topic is recreated) the flow stops cleanly and
    starts again over every partition, resuming from the recovery snapshot if there is one.
    """
    from dataflows.flow import FlowStats
    from dataflows.metrics import serve_metrics
    from dataflows.sources import (
        StopRequest,
        TopicWatch,
        wait_for_topics,
    )
    from nextbest.runtime import ensure_topics, kafka_brokers, redis_url

    with redis_url(settings) as url, kafka_brokers(settings) as brokers:
        ensure_topics(
            brokers, [*settings.topics, settings.topic_dead_letter], settings.topic_partitions
        )
        serve_metrics(settings.metrics_port)
        stats = FlowStats()
        t0 = time.perf_counter()
        while True:
            stop = StopRequest()
            with _stop_on_signals(stop):
                found = wait_for_topics(brokers, settings.topics, stop.event)
            if found is None:  # stopped while waiting
                break
            layout = found
            flow = kafka_flow(settings, brokers, url, stop, stats, layout)
            parts = ", ".join(f"{t} ({n} partitions)" for t, (n, _) in layout.items())
            print(
                f"nextbest run: consuming {parts} from {brokers}; profiles -> {url}; "
                f"dead letters -> {settings.topic_dead_letter}",
                file=sys.stderr,
                flush=True,
            )
            watch = TopicWatch(brokers, layout, stop, settings.topic_check_interval_ms / 1000)
            watch.start()
            with (
                _stop_on_signals(stop),
                Progress(lambda: progress_line(stats, t0), interval=5, enabled=not args.quiet),
                sink_gave_up(),
            ):
                run_flow(flow, settings)
            if stop.failed:
                _die(f"run: {stop.why}", 3)
            if not stop.restart:
                break
            print(f"nextbest run: {stop.why}: starting again over every partition",
                  file=sys.stderr, flush=True)  # fmt: skip
        summary = stats.as_dict(time.perf_counter() - t0)
    print_summary(summary, args.json, None)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the HTTP API until stopped."""
    from nextbest.runtime import redis_url
    from serving.app import run_server

    host = args.host or settings.host
    port = args.port or settings.port
    with (
        redis_url(settings) as url,
        _sigterm_as_interrupt(),
        contextlib.suppress(KeyboardInterrupt),
    ):
        run_server(settings, url, host, port)
    return 0


def cmd_profile(args: argparse.Namespace, settings: Settings) -> int:
    """Print one profile as JSON, computed as of a time."""
    import redis

    from features.store import read_link, read_profile
    from nextbest.runtime import redis_url
    from schemas.keys import customer_key, device_key
    from serving.scoring import ModelSet

    if (args.id is None) == (args.anonymous_id is None):
        raise UsageError("profile: give a customer ID or --anonymous-id X (one of them)")
    as_of = _as_of_ms("profile", args.as_of)
    with redis_url(settings) as url:
        client: redis.Redis = redis.Redis.from_url(url)
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
            view, bounds = read_profile(client, key)
            models = ModelSet()
            if view is not None:
                models.refresh(client)
        finally:
            client.close()
    if view is None:
        print(f"nextbest: no profile for {what}", file=sys.stderr)
        return EXIT_NOT_FOUND
    doc = models.document(view, as_of, bounds, resolved_from)
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    """Simulate a shop population to a JSONL file or to the Kafka topics."""
    from nextbest.simulator import SimConfig, produce_to_kafka, simulate_to_file

    if args.out is None and not args.kafka:
        raise UsageError("simulate: give --out FILE or --kafka")
    if not 0.0 <= args.bad_rate <= 1.0:
        raise UsageError("simulate: --bad-rate must be in [0, 1]")
    if args.holdout_days >= args.days:
        raise UsageError("simulate: --holdout-days must be smaller than --days")
    try:
        cfg = SimConfig(
            customers=args.customers,
            days=args.days,
            seed=args.seed,
            holdout_days=args.holdout_days,
            bad_rate=args.bad_rate,
        )
    except ValueError as exc:
        raise UsageError(f"simulate: {exc}") from None
    truth = Path(args.truth) if args.truth else None
    if args.kafka:
        from nextbest.runtime import ensure_topics, kafka_brokers

        with kafka_brokers(settings) as brokers:
            ensure_topics(brokers, settings.topics, settings.topic_partitions)
            stats = produce_to_kafka(
                cfg,
                brokers,
                truth,
                topics=(settings.topic_clickstream, settings.topic_transactions),
            )
        where = f"topics {settings.topic_clickstream}, {settings.topic_transactions} at {brokers}"
    else:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        stats = simulate_to_file(cfg, out, truth)
        where = str(out)
    rate = stats.events / stats.seconds if stats.seconds else 0.0
    print(
        f"simulated {stats.events:,} events ({stats.bad:,} malformed) for {stats.customers:,} "
        f"customers in {stats.seconds:.1f} s ({rate:,.0f} events/s) -> {where}",
        file=sys.stderr,
    )
    return 0


def _as_of_ms(command: str, raw: str | None) -> int:
    """``--as-of`` (RFC 3339 with zone or epoch ms) as epoch ms; now when absent."""
    from schemas.events import parse_as_of

    if raw is None:
        return _now_ms()
    parsed = parse_as_of(raw)
    if parsed is None:
        raise UsageError(f"{command}: bad --as-of {raw!r} (RFC 3339 with zone or epoch ms)")
    return parsed


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write every profile with its scores as of a time (JSONL or CSV), streamed."""
    import redis

    from nextbest.export import FORMATS, export_profiles
    from nextbest.runtime import redis_url
    from schemas.events import format_ts

    as_of = _as_of_ms("export", args.as_of)
    if args.format not in FORMATS:
        raise UsageError(f"export: unknown --format {args.format!r} (jsonl or csv)")
    out_path = Path(args.out) if args.out else None
    if out_path is not None and not out_path.parent.is_dir():
        raise UsageError(f"export: no such directory: {out_path.parent}")
    t0 = time.perf_counter()
    with redis_url(settings) as url, contextlib.ExitStack() as stack:
        client: redis.Redis = redis.Redis.from_url(url)
        stack.callback(client.close)
        out = (
            stack.enter_context(out_path.open("w", encoding="utf-8", newline=""))
            if out_path is not None
            else sys.stdout
        )
        n = export_profiles(
            client,
            out,
            as_of,
            args.format,
            include_anonymous=args.include_anonymous,
            progress=sys.stderr.isatty(),
        )
    where = str(out_path) if out_path is not None else "stdout"
    print(
        f"exported {n:,} profiles ({args.format}) as of {format_ts(as_of)} -> {where} "
        f"in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    """Replay a simulated history into a temporary Redis and score the models against the truth."""
    from models import targets
    from nextbest.evaluate import TruthError, evaluate, report_lines

    events, truth = Path(args.events), Path(args.truth)
    for p in (events, truth):
        if not p.is_file():
            raise UsageError(f"evaluate: no such file: {p}")
    try:
        with _sigterm_as_interrupt():
            report = evaluate(
                events,
                truth,
                settings,
                flow_config(settings, REPLAY_WRITE_INTERVAL_MS),
                run_flow,
                holdout_days=args.holdout_days,
            )
    except TruthError as exc:
        raise UsageError(f"evaluate: {exc}") from None
    if args.holdout_days is not None:
        for t in targets.NAMES:
            if not report[t]["horizon_matches"]:
                print(
                    f"nextbest: warning: {t} horizon is {report[t]['horizon_days']} days but the "
                    f"holdout is {args.holdout_days} days: the outcomes do not measure its target",
                    file=sys.stderr,
                )
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print("\n".join(report_lines(report)))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Simulate, stream through the dataflow and serve the API (bounded with --events)."""
    from nextbest.demo import run_demo

    with _sigterm_as_interrupt():
        return run_demo(settings, events=args.events, customers=args.customers, port=args.port)


# ---------------------------------------------------------------------------------------------
# parser


def _positive_int(raw: str) -> int:
    try:
        v = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}")
    return v


def _nonneg_int(raw: str) -> int:
    try:
        v = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {raw!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {raw!r}")
    return v


def _port(raw: str) -> int:
    v = _positive_int(raw)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in [1, 65535], got {raw!r}")
    return v


def _duration(raw: str) -> int:
    from nextbest.settings import duration_ms

    try:
        return duration_ms(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {raw!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its help texts are the CLI reference in the README)."""
    p = _Parser(
        prog="nextbest",
        description="nextbest: real-time customer profiles, segments and next best actions.",
        epilog="Configuration comes from NEXTBEST_* environment variables (see README).",
    )
    p.add_argument("--version", action="version", version=f"nextbest {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    r = sub.add_parser("replay", help="run the dataflow over JSONL files to their end")
    r.add_argument("files", nargs="+", metavar="FILE", help="JSONL event files")
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    r.add_argument(
        "--dead-letter",
        metavar="PATH",
        help="dead-letter JSONL file (default: $NEXTBEST_HOME/dead-letter.jsonl, appended)",
    )
    r.add_argument(
        "--no-models",
        action="store_true",
        help="profiles only: take no training snapshots, learn no models (for comparisons)",
    )
    r.add_argument(
        "--write-interval",
        type=_duration,
        default=REPLAY_WRITE_INTERVAL_MS,
        metavar="DURATION",
        help="write a changed profile to Redis at most this often (wall time; a backfill "
        "coalesces more than a live run; every profile is written at the end; default 2s)",
    )
    r.set_defaults(func=cmd_replay)

    k = sub.add_parser("run", help="consume the Kafka topics until stopped (SIGTERM/Ctrl-C)")
    k.add_argument("--json", action="store_true", help="print the final summary as JSON")
    k.add_argument("--quiet", action="store_true", help="no periodic progress lines")
    k.set_defaults(func=cmd_run)

    s = sub.add_parser("serve", help="serve the HTTP API")
    s.add_argument("--host", help="listen address (default: $NEXTBEST_HOST)")
    s.add_argument("--port", type=_port, help="listen port (default: $NEXTBEST_PORT)")
    s.set_defaults(func=cmd_serve)

    pr = sub.add_parser("profile", help="print a customer's profile as JSON")
    pr.add_argument("id", metavar="ID", nargs="?", help="customer id")
    pr.add_argument(
        "--anonymous-id", metavar="X", help="a visitor's anonymous id (resolved to its customer)"
    )
    pr.add_argument("--as-of", metavar="TS", help="RFC 3339 time with zone, or epoch ms")
    pr.set_defaults(func=cmd_profile)

    sm = sub.add_parser("simulate", help="simulate a shop population's events")
    sm.add_argument(
        "--customers", type=_positive_int, default=1000, metavar="N", help="population size"
    )
    sm.add_argument("--days", type=_positive_int, default=30, metavar="D", help="days of history")
    sm.add_argument(
        "--seed", type=int, default=42, metavar="S", help="random seed (same seed, same bytes)"
    )
    sm.add_argument(
        "--holdout-days",
        type=_nonneg_int,
        default=0,
        metavar="H",
        help="simulate but do not write the last H days (the truth file reports them)",
    )
    sm.add_argument(
        "--bad-rate", type=_rate, default=0.0, metavar="R", help="share of malformed lines"
    )
    sm.add_argument("--out", metavar="FILE", help="JSONL output file")
    sm.add_argument("--truth", metavar="FILE", help="per-customer latent truth (JSONL)")
    sm.add_argument(
        "--kafka", action="store_true", help="produce to the clickstream/transactions topics"
    )
    sm.set_defaults(func=cmd_simulate)

    ex = sub.add_parser("export", help="write every profile with its scores (JSONL or CSV)")
    ex.add_argument(
        "--as-of", metavar="TS", help="RFC 3339 time with zone, or epoch ms (default now)"
    )
    ex.add_argument("--format", default="jsonl", metavar="FMT", help="jsonl (default) or csv")
    ex.add_argument("--out", metavar="FILE", help="output file (default: stdout)")
    ex.add_argument(
        "--include-anonymous", action="store_true", help="also anonymous visitors' profiles"
    )
    ex.set_defaults(func=cmd_export)

    ev = sub.add_parser(
        "evaluate", help="replay a simulated history and score the models against its truth"
    )
    ev.add_argument("events", metavar="EVENTS", help="simulated events (JSONL, without holdout)")
    ev.add_argument("--truth", required=True, metavar="FILE", help="the simulator's truth file")
    ev.add_argument("--json", action="store_true", help="print the report as one JSON object")
    ev.add_argument(
        "--holdout-days",
        type=_positive_int,
        metavar="H",
        help="the simulation's holdout: warn for a target whose horizon differs",
    )
    ev.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="simulate, stream through the dataflow, serve the API")
    d.add_argument(
        "--events",
        type=_positive_int,
        metavar="N",
        help="bounded: stream about N events, print the summary and exit",
    )
    d.add_argument(
        "--customers", type=_positive_int, default=3000, metavar="N", help="population size"
    )
    d.add_argument("--port", type=_port, default=None, help="API port (default $NEXTBEST_PORT)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        _die(f"config error: {exc}")
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code: int = args.func(args, settings)
    except UsageError as exc:
        _die(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code
