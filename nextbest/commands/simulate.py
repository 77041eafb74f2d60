"""``nextbest simulate``: a simulated shop population to a JSONL file or the Kafka topics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nextbest.commands.common import UsageError, nonneg_int, positive_int, unit_rate
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sm = sub.add_parser("simulate", help="simulate a shop population's events")
    sm.add_argument(
        "--customers", type=positive_int, default=1000, metavar="N", help="population size"
    )
    sm.add_argument(
        "--days",
        type=positive_int,
        metavar="D",
        help="simulated days, holdout included (default: 30 for shop, 270 + H for the others)",
    )
    sm.add_argument(
        "--scenario",
        default="shop",
        metavar="NAME",
        help="population shape: shop (default: steady clickstream and purchases), purchases "
        "(a transaction log of one acquisition cohort, buy-till-you-die), cohort (the shop's "
        "clickstream for one cohort that mostly churns soon), drift (the shop with a strongly "
        "drifting base rate); see nextbest/scenarios.py",
    )
    sm.add_argument(
        "--seed", type=int, default=42, metavar="S", help="random seed (same seed, same bytes)"
    )
    sm.add_argument(
        "--holdout-days",
        type=nonneg_int,
        default=0,
        metavar="H",
        help="simulate but do not write the last H days (the truth file reports them)",
    )
    sm.add_argument(
        "--bad-rate", type=unit_rate, default=0.0, metavar="R", help="share of malformed lines"
    )
    sm.add_argument("--out", metavar="FILE", help="JSONL output file")
    sm.add_argument("--truth", metavar="FILE", help="per-customer latent truth (JSONL)")
    sm.add_argument(
        "--kafka", action="store_true", help="produce to the clickstream/transactions topics"
    )
    sm.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    """Simulate a shop population to a JSONL file or to the Kafka topics."""
    from nextbest.simulator import (
        SCENARIOS,
        SimConfig,
        produce_to_kafka,
        scenario_days,
        simulate_to_file,
    )

    if args.scenario not in SCENARIOS:
        raise UsageError(
            f"simulate: unknown --scenario {args.scenario!r} (choose from {', '.join(SCENARIOS)})"
        )
    if args.out is None and not args.kafka:
        raise UsageError("simulate: give --out FILE or --kafka")
    if not 0.0 <= args.bad_rate <= 1.0:
        raise UsageError("simulate: --bad-rate must be in [0, 1]")
    days = scenario_days(args.scenario, args.holdout_days, args.days)
    if args.holdout_days >= days:
        raise UsageError("simulate: --holdout-days must be smaller than --days")
    try:
        cfg = SimConfig(
            customers=args.customers,
            days=days,
            seed=args.seed,
            holdout_days=args.holdout_days,
            bad_rate=args.bad_rate,
            scenario=args.scenario,
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
        f"customers over {days} days ({args.scenario}) in {stats.seconds:.1f} s "
        f"({rate:,.0f} events/s) -> {where}",
        file=sys.stderr,
    )
    return 0
