"""``nextbest evaluate-recs EVENTS --truth FILE``: replay a simulated history into a temporary
Redis and score the recommendations against the simulator's latent truth
(:mod:`nextbest.reco_eval`): the engine's own recommender, over the same Redis reads as the API."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from nextbest.commands.common import REPLAY_WRITE_INTERVAL_MS, UsageError, sigterm_as_interrupt
from nextbest.running import flow_config, run_flow
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser(
        "evaluate-recs",
        help="replay a simulated history and score the recommendations against its truth",
    )
    ev.add_argument("events", metavar="EVENTS", help="simulated events (JSONL, without holdout)")
    ev.add_argument("--truth", required=True, metavar="FILE", help="the simulator's truth file")
    ev.add_argument("--json", action="store_true", help="print the report as one JSON object")
    ev.set_defaults(func=cmd_evaluate_recs)


def cmd_evaluate_recs(args: argparse.Namespace, settings: Settings) -> int:
    """Replay, then recommend as of the history's end to every truth customer who bought in the
    holdout and for every held-out session prefix; print the report."""
    events, truth = Path(args.events), Path(args.truth)
    for p in (events, truth):
        if not p.is_file():
            raise UsageError(f"evaluate-recs: no such file: {p}")
    from decisions.recommend import RecoConfigError, load_config

    try:
        reco_cfg = load_config(settings.recommendations)
    except RecoConfigError as exc:
        raise UsageError(str(exc)) from None
    with sigterm_as_interrupt():
        report = evaluate_recs(events, truth, settings, reco_cfg)
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print(report["table"])
    return 0


def evaluate_recs(events: Path, truth: Path, settings: Settings, reco_cfg: Any) -> dict[str, Any]:
    """Replay ``events`` into a fresh temporary Redis and evaluate (the report as JSON, with
    ``table``: the printed report)."""
    import redis.asyncio as aioredis

    from dataflows.deadletters import DeadLetterFileSink
    from dataflows.flow import build_flow
    from dataflows.sinks import RedisSink
    from dataflows.sources import JsonlFilesSource
    from nextbest.evaluate import newest_ts
    from nextbest.reco_eval import evaluate, format_report
    from nextbest.runtime import start_redis, stop_process
    from serving.reco import Recommender

    as_of = newest_ts(events)
    if as_of is None:
        raise UsageError(f"evaluate-recs: {events}: no event with a valid ts")
    t0 = time.perf_counter()
    cfg = dataclasses.replace(
        flow_config(settings, REPLAY_WRITE_INTERVAL_MS, segments=False),
        recovery=False,
        models=False,
        products=True,
    )
    with tempfile.TemporaryDirectory(prefix="nextbest-evaluate-recs-") as tmp:
        proc, url = start_redis(Path(tmp) / "redis")
        loop = asyncio.new_event_loop()
        try:
            flow = build_flow(
                JsonlFilesSource([events], settings.batch_size),
                RedisSink(url),
                DeadLetterFileSink(Path(tmp) / "dead-letter.jsonl"),
                config=cfg,
            )
            run_flow(flow)
            replay_s = time.perf_counter() - t0
            client = aioredis.Redis.from_url(url)
            rec = Recommender(reco_cfg, client)

            def recommend(customer_id: str, prefix: list[str] | None, k: int) -> list[str]:
                body = loop.run_until_complete(
                    rec.recommend(as_of, k, customer_id=customer_id, recent=prefix)
                )
                return [i["product_id"] for i in body["items"]]

            report = evaluate(events, truth, recommend, k=10)
            loop.run_until_complete(client.aclose())
        finally:
            loop.close()
            stop_process(proc.pid)
            proc.wait(15)
    out: dict[str, Any] = report.to_json()
    out["replay_seconds"] = round(replay_s, 3)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["table"] = format_report(report)
    return out
