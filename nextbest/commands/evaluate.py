"""``nextbest evaluate EVENTS --truth FILE``: replay a simulated history into a temporary Redis
and score the models against the simulator's truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from nextbest.commands.common import (
    REPLAY_WRITE_INTERVAL_MS,
    UsageError,
    positive_int,
    sigterm_as_interrupt,
)
from nextbest.running import flow_config, run_flow
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser(
        "evaluate", help="replay a simulated history and score the models against its truth"
    )
    ev.add_argument("events", metavar="EVENTS", help="simulated events (JSONL, without holdout)")
    ev.add_argument("--truth", required=True, metavar="FILE", help="the simulator's truth file")
    ev.add_argument("--json", action="store_true", help="print the report as one JSON object")
    ev.add_argument(
        "--holdout-days",
        type=positive_int,
        metavar="H",
        help="the simulation's holdout: warn for a target whose horizon differs",
    )
    ev.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    """Replay a simulated history into a temporary Redis and score the models against the truth."""
    from models import targets
    from nextbest.evaluate import TruthError, evaluate, report_lines

    events, truth = Path(args.events), Path(args.truth)
    for p in (events, truth):
        if not p.is_file():
            raise UsageError(f"evaluate: no such file: {p}")
    try:
        with sigterm_as_interrupt():
            report = evaluate(
                events,
                truth,
                settings,
                flow_config(settings, REPLAY_WRITE_INTERVAL_MS, segments=False),
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
