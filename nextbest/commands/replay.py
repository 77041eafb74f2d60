"""``nextbest replay FILE...``: run the profile flow over JSONL files to their end."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nextbest.commands.common import (
    REPLAY_WRITE_INTERVAL_MS,
    UsageError,
    duration,
    sigterm_as_interrupt,
)
from nextbest.running import (
    Progress,
    flow_config,
    print_summary,
    progress_line,
    run_flow,
    sink_gave_up,
    sink_options,
)
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        type=duration,
        default=REPLAY_WRITE_INTERVAL_MS,
        metavar="DURATION",
        help="write a changed profile to Redis at most this often (wall time; a backfill "
        "coalesces more than a live run; every profile is written at the end; default 2s)",
    )
    r.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Run the profile flow over JSONL files to their end and print a summary."""
    from dataflows.deadletters import DeadLetterFileSink, SegmentEventsFileSink
    from dataflows.flow import FlowStats, build_flow
    from dataflows.metrics import serve_metrics
    from dataflows.sinks import RedisSink
    from dataflows.sources import JsonlFilesSource
    from nextbest.runtime import redis_url

    paths = [Path(p) for p in args.files]
    for p in paths:
        if not p.is_file():
            raise UsageError(f"replay: no such file: {p}")
    dead_letter = (
        Path(args.dead_letter) if args.dead_letter else settings.home_path / "dead-letter.jsonl"
    )
    segment_events = settings.home_path / "segment-events.jsonl"
    with redis_url(settings) as url:
        serve_metrics(settings.metrics_port)
        stats = FlowStats()
        options = sink_options(settings)
        cfg = flow_config(settings, args.write_interval, models=not args.no_models, redis_url=url)
        flow = build_flow(
            JsonlFilesSource(paths, settings.batch_size),
            RedisSink(url, options),
            DeadLetterFileSink(dead_letter, options),
            config=cfg,
            segment_sink=SegmentEventsFileSink(segment_events, options),
        )
        t0 = time.perf_counter()
        show = not args.json and sys.stderr.isatty()
        with (
            sigterm_as_interrupt(),
            Progress(lambda: progress_line(stats, t0), enabled=show),
            sink_gave_up(),
        ):
            run_flow(flow, settings)
        summary = stats.as_dict(time.perf_counter() - t0)
    summary["dead_letter_file"] = str(dead_letter)
    if cfg.segments is not None:
        summary["segment_events_file"] = str(segment_events)
    print_summary(summary, args.json, str(dead_letter))
    return 0
