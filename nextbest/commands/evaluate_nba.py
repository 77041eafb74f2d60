"""``nextbest evaluate-nba``: next best action in a closed loop against simulated customers.

The shop simulator (:class:`nextbest.nba_sim.ShopWorld`) lives ``--days`` days in chunks of
:data:`CHUNK_HOURS` of event time. For each chunk:

1. every session of a registered customer that starts in it is a **decision point**: the engine
   is asked through the real decision code (:meth:`serving.nba.Decider.decide`, channel ``web``,
   ``as_of`` = the session's start) against a fresh temporary Redis, which the real dataflow
   (:func:`dataflows.flow.build_flow`, models on) keeps up to date; the Decider logs each
   decision record to a log that captures it;
2. the served action's outcome is drawn from the truth (:func:`nextbest.nba_sim.truth`): an
   ``impression`` a second after the decision and, with the true probability, a ``conversion``
   (with the served action's value) 2-30 minutes later; an annoying offer lowers the customer's
   visit rate (:meth:`~nextbest.nba_sim.ShopWorld.annoy`);
3. the chunk's events, the decision records and the outcome events go into the running dataflow
   (an in-process queue source, on a background thread), with a sync marker; the loop waits until
   the marker's profile is in Redis and reloads the models (:meth:`ModelSet.arefresh`) before the
   next chunk's decisions.

So the engine decides on profiles as of the end of the previous chunk (``as_of`` the visit's
start), and its action models learn from the decisions it logged, as in production.

At every decision point three policies are scored on the same eligible candidates (the
decision record's, or the served fallback when nothing was eligible): the **engine** (the
expected reward of the action it served, and its realised reward), **uniform random** (the mean
expected reward over the candidates) and the **oracle** (the best candidate by the truth). The
reward is the conversion's value (``--reward value``, the default: what the engine's arbitration
maximises, true P x the candidate's value) or the conversion itself (``--reward conversion``).
The report has the three per period (a week) and over the last half of the run, and the
**lift capture** ``(engine - random) / (oracle - random)`` over the last half; the aim is >= 0.6.

Not deterministic to the last digit: the engine's exploration draws are seeded by its decision
ids (random UUIDs), and the profile a decision reads depends on the sync; the world (events,
traits, truth) is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import heapq
import queue
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.records import RawRecord
from nextbest.commands.common import UsageError, positive_int
from nextbest.nba_sim import (
    ShopWorld,
    Traits,
    VisitState,
    annoys,
    lift_capture,
    point_rewards,
    truth,
)
from nextbest.settings import Settings
from nextbest.simulator import DAY_MS, HOUR_MS, SimConfig, event_doc, fast_format_ts

__all__ = ["AIM", "CaptureLog", "Ledger", "QueueSource", "report_lines", "run_closed_loop"]

#: The lift capture the engine should reach over the last half of the run.
AIM: Final = 0.6
#: Event-time hours per loop step (decisions, then the step's events into the flow).
CHUNK_HOURS: Final = 6
#: Days per report period.
PERIOD_DAYS: Final = 7
#: The customer whose profile marks how far the dataflow got (one page view per step).
SYNC_CUSTOMER: Final = "nba-sync"
#: Seconds to wait for the dataflow to process a step before giving up.
SYNC_TIMEOUT_S: Final = 120.0
CHANNEL: Final = "web"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate-nba",
        help="next best action in a closed loop with simulated customers: lift over random "
        "against the oracle",
    )
    p.add_argument("--customers", type=positive_int, default=2000, help="simulated people")
    p.add_argument("--days", type=positive_int, default=90, help="simulated days (default 90)")
    p.add_argument("--seed", type=int, default=42, help="seed of the world (default 42)")
    p.add_argument("--catalog", metavar="FILE", help="action catalogue (default: the shipped one)")
    p.add_argument(
        "--reward", choices=("value", "conversion"), default="value",
        help="a conversion's value (default) or the conversion itself",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_evaluate_nba)


def cmd_evaluate_nba(args: argparse.Namespace, settings: Settings) -> int:
    """Run the closed loop and print the report."""
    from decisions.catalog import ActionConfigError

    if args.days < 2:
        raise UsageError("evaluate-nba: --days must be >= 2 (the report compares halves)")
    try:
        report = run_closed_loop(
            customers=args.customers,
            days=args.days,
            seed=args.seed,
            catalog=args.catalog,
            reward=args.reward,
            settings=settings,
            progress=None if args.json else _progress,
        )
    except ActionConfigError as exc:
        raise UsageError(f"evaluate-nba: --catalog: {exc}") from None
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print("\n".join(report_lines(report)))
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The dataflow's input: a queue filled by the loop


class _QueuePartition(StatefulSourcePartition[RawRecord, None]):
    def __init__(self, q: queue.Queue[list[bytes] | None]) -> None:
        self._q = q
        self._n = 0
        self._idle = False

    def next_batch(self) -> list[RawRecord]:
        try:
            lines = self._q.get_nowait()
        except queue.Empty:
            self._idle = True
            return []
        self._idle = False
        if lines is None:
            raise StopIteration
        out = [RawRecord(b, f"nba:{self._n + i + 1}") for i, b in enumerate(lines)]
        self._n += len(out)
        return out

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(milliseconds=2) if self._idle else None

    def snapshot(self) -> None:
        return None


class QueueSource(FixedPartitionedSource[RawRecord, None]):
    """One partition reading lists of lines from a queue; ``None`` ends the input (not
    resumable: the loop starts from an empty store)."""

    def __init__(self, q: queue.Queue[list[bytes] | None]) -> None:
        self.queue = q

    def list_parts(self) -> list[str]:
        return ["loop"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _QueuePartition:
        return _QueuePartition(self.queue)


class CaptureLog:
    """A decision log that keeps every record the Decider writes (key, bytes)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    def write(self, key: str, record: bytes) -> bool:
        self.records.append((key, record))
        return True

    def close(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# Bookkeeping


@dataclass
class Ledger:
    """Per decision point: day, the engine's expected and realised reward, random's, the
    oracle's, and whether the served action's propensity came from its model.

    >>> led = Ledger()
    >>> led.add(0, 0.2, 1.0, 0.1, 0.3, False); led.add(8, 0.3, 0.0, 0.1, 0.3, True)
    >>> [p["decisions"] for p in led.periods(14)], led.summary(7, 14)["lift_capture"]
    ([1, 1], 1.0)
    """

    rows: list[tuple[int, float, float, float, float, bool]] = field(default_factory=list)

    def add(
        self, day: int, engine: float, realised: float, random_: float, oracle: float, model: bool
    ) -> None:
        """One decision point."""
        self.rows.append((day, engine, realised, random_, oracle, model))

    def summary(self, first_day: int, last_day: int) -> dict[str, Any]:
        """Means per decision over days ``[first_day, last_day)``."""
        rows = [r for r in self.rows if first_day <= r[0] < last_day]
        n = len(rows)

        def mean(i: int) -> float | None:
            return round(sum(float(r[i]) for r in rows) / n, 6) if n else None

        engine, random_, oracle = mean(1), mean(3), mean(4)
        capture = None
        if engine is not None and random_ is not None and oracle is not None:
            c = lift_capture(engine, random_, oracle)
            capture = None if c is None else round(c, 4)
        return {
            "from_day": first_day,
            "to_day": last_day,
            "decisions": n,
            "engine": engine,
            "engine_realised": mean(2),
            "random": random_,
            "oracle": oracle,
            "model_share": round(sum(r[5] for r in rows) / n, 4) if n else None,
            "lift_capture": capture,
        }

    def periods(self, days: int, length: int = PERIOD_DAYS) -> list[dict[str, Any]]:
        """:meth:`summary` per period of ``length`` days."""
        return [self.summary(d, min(d + length, days)) for d in range(0, days, length)]


def _model_source(rec: Any) -> bool:
    """Whether the served action's propensity came from its model."""
    for c in rec.candidates:
        if c.action_id == rec.served:
            return bool(c.source == "model")
    return False


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Step:
    """What one step (chunk) produced for the dataflow, and its counts."""

    lines: list[tuple[int, int, bytes]] = field(default_factory=list)  # (ts, seq, line)


def _outcome(
    seq: int, seed: int, ts: int, customer_id: str, decision_id: str, action: str, kind: str,
    value: float | None,
) -> bytes:  # fmt: skip
    d: dict[str, Any] = {
        "event_id": f"nba-{seed}-{seq}",
        "type": "decision_outcome",
        "ts": fast_format_ts(ts),
        "customer_id": customer_id,
        "decision_id": decision_id,
        "action_id": action,
        "outcome": kind,
    }
    if value is not None:
        d["value"] = round(value, 2)
    return orjson.dumps(d)


def run_closed_loop(
    customers: int = 2000,
    days: int = 90,
    seed: int = 42,
    catalog: str | Path | None = None,
    reward: str = "value",
    settings: Settings | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the closed loop (see the module docstring) and return its report.

    ``catalog``: an action catalogue file (``None``: the shipped one; a bad file raises
    :class:`decisions.catalog.ActionConfigError`); ``progress`` is called with one line per
    period as the loop goes.
    """
    from decisions.catalog import load_catalog
    from models.targets import NAMES
    from serving.segments import load_definitions

    if reward not in ("value", "conversion"):
        raise ValueError(f"reward: value or conversion, not {reward!r}")
    if days < 2:
        raise ValueError("days must be >= 2")
    settings = (settings or Settings.from_env()).replace(recovery_dir=None)
    cat = load_catalog(catalog, load_definitions(settings.segments).names, NAMES)
    cfg = SimConfig(customers=customers, days=days, seed=seed)
    return asyncio.run(_run(cfg, cat, reward, settings, progress))


def _flow_config(settings: Settings, url: str, cat: Any) -> Any:
    from nextbest.running import flow_config

    cfg = flow_config(settings, write_interval_ms=0, models=True, redis_url=url)
    # recovery off; a checkpoint whenever a model learned something (the loop reloads them)
    # and the action models learn this loop's catalogue (--catalog), whatever NEXTBEST_ACTIONS
    return dataclasses.replace(cfg, recovery=False, checkpoint_interval_ms=0, actions=cat)


async def _run(
    cfg: SimConfig,
    cat: Any,
    reward: str,
    settings: Settings,
    progress: Callable[[str], None] | None,
) -> dict[str, Any]:
    from dataflows.deadletters import DeadLetterFileSink, SegmentEventsFileSink
    from dataflows.flow import build_flow
    from dataflows.sinks import RedisSink
    from nextbest.runtime import start_redis, stop_process
    from serving.app import create_redis
    from serving.nba import Decider
    from serving.scoring import ModelSet

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nextbest-nba-") as tmp:
        home = Path(tmp)
        proc, url = start_redis(home / "redis", persist=False)
        q: queue.Queue[list[bytes] | None] = queue.Queue()
        failure: list[BaseException] = []
        thread: threading.Thread | None = None
        client = create_redis(url)
        try:
            flow = build_flow(
                QueueSource(q),
                RedisSink(url),
                DeadLetterFileSink(home / "dead-letter.jsonl"),
                source_label="evaluate-nba",
                config=_flow_config(settings, url, cat),
                segment_sink=SegmentEventsFileSink(home / "segment-events.jsonl"),
            )

            def run() -> None:
                from bytewax.testing import run_main

                try:
                    run_main(flow)  # type: ignore[no-untyped-call]
                except BaseException as exc:  # reported by the loop
                    failure.append(exc)

            thread = threading.Thread(target=run, name="evaluate-nba-flow", daemon=True)
            thread.start()
            models = ModelSet(tuple("action:" + a for a in cat.ids))
            log = CaptureLog()
            decider = Decider(cat, models, client, log)
            loop = _Loop(cfg, cat, reward, decider, log, models, client, q, failure, progress)
            await loop.run()
            q.put(None)
            while thread.is_alive():
                await asyncio.sleep(0.05)
            if failure:
                raise RuntimeError(f"the dataflow failed: {failure[0]!r}") from failure[0]
            report = await loop.report(home / "dead-letter.jsonl")
        finally:
            if thread is not None and thread.is_alive():
                q.put(None)
            await client.aclose(close_connection_pool=True)
            stop_process(proc.pid)
            proc.wait(15)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


class _Loop:
    """The closed loop's state while it runs."""

    def __init__(
        self,
        cfg: SimConfig,
        cat: Any,
        reward: str,
        decider: Any,
        log: CaptureLog,
        models: Any,
        client: Any,
        q: queue.Queue[list[bytes] | None],
        failure: list[BaseException],
        progress: Callable[[str], None] | None,
    ) -> None:
        self.cfg, self.cat, self.reward = cfg, cat, reward
        self.decider, self.log, self.models, self.client = decider, log, models, client
        self.q, self.failure, self.progress = q, failure, progress
        self.world = ShopWorld(cfg)
        self.rng = random.Random(f"nextbest-nba-outcomes-{cfg.seed}")
        self.ledger = Ledger()
        self.pending: list[tuple[int, int, bytes]] = []  # heap: lines due in a later step
        self.seq = 0
        self.n_events = 0
        self.syncs = 0
        self.served: Counter[str] = Counter()
        self.selections: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.oracle_choice: Counter[str] = Counter()
        self.annoyed = 0
        self.degraded = 0
        self.priors = {a.id: a.prior for a in cat.actions}

    def _push(self, ts: int, line: bytes) -> None:
        self.seq += 1
        heapq.heappush(self.pending, (ts, self.seq, line))

    async def run(self) -> None:
        cfg, world = self.cfg, self.world
        start, step_ms = cfg.start_ms, CHUNK_HOURS * HOUR_MS
        n_event = 0
        for day in range(cfg.days):
            events = world.day_events(day)
            day_start = start + day * DAY_MS
            i = 0
            for t1 in range(day_start + step_ms, day_start + DAY_MS + 1, step_ms):
                j = i
                while j < len(events) and events[j][0] < t1:
                    j += 1
                chunk = events[i:j]
                i = j
                for visit, state in world.walk(chunk):
                    await self._decide(visit.ts, visit.day, visit.index, visit.customer_id, state)
                for ev in chunk:
                    n_event += 1
                    self._push(ev[0], orjson.dumps(event_doc(ev, f"e-{cfg.seed}-{n_event}")))
                await self._step(t1)
            if self.progress is not None and (day + 1) % PERIOD_DAYS == 0:
                self.progress(_period_line(self.ledger.summary(day + 1 - PERIOD_DAYS, day + 1)))
        self.n_events = n_event

    async def _decide(
        self, ts: int, day: int, index: int, customer_id: str, state: VisitState
    ) -> None:
        from schemas.decisions import decode_decision

        before = len(self.log.records)
        body = await self.decider.decide(CHANNEL, ts, 1, customer_id=customer_id)
        if len(self.log.records) != before + 1:
            raise RuntimeError(f"the Decider logged {len(self.log.records) - before} records")
        line = self.log.records[-1][1]
        rec = decode_decision(line)
        self._push(ts, line)
        self.selections[rec.selection] += 1
        if rec.degraded:
            self.degraded += 1
        traits = self.world.traits[index]
        if rec.candidates:
            cands = [(c.action_id, c.value) for c in rec.candidates]
        elif rec.served is not None:  # the fallback: the only thing any policy could serve
            cands = [(rec.served, float(body["actions"][0]["value"]))]
        else:
            cands = []
        probs = [self._p(a, traits, state) for a, _ in cands]
        per_value = self.reward == "value"
        rewards = [p * (v if per_value else 1.0) for p, (_, v) in zip(probs, cands, strict=True)]
        served = next((k for k, (a, _) in enumerate(cands) if a == rec.served), None)
        pr = point_rewards(rewards, served)
        if cands:
            self.oracle_choice[cands[max(range(len(cands)), key=rewards.__getitem__)][0]] += 1
        realised = 0.0
        if served is not None and rec.served is not None:
            action, value = cands[served]
            self.served[action] += 1
            self._push(ts + 1000, self._outcome(ts + 1000, customer_id, rec, "impression", None))
            self.outcomes["impression"] += 1
            if self.rng.random() < probs[served]:
                at = ts + int(self.rng.uniform(2.0, 30.0) * 60_000)
                self._push(at, self._outcome(at, customer_id, rec, "conversion", value))
                self.outcomes["conversion"] += 1
                realised = value if self.reward == "value" else 1.0
            if annoys(action, traits, state):
                self.annoyed += 1
                self.world.annoy(index)
        self.ledger.add(day, pr.engine, realised, pr.random, pr.oracle, _model_source(rec))

    def _outcome(
        self, ts: int, customer_id: str, rec: Any, kind: str, value: float | None
    ) -> bytes:
        assert rec.served is not None
        self.seq += 1
        return _outcome(self.seq, self.cfg.seed, ts, customer_id, rec.decision_id, rec.served,
                        kind, value)  # fmt: skip

    def _p(self, action: str, traits: Traits, state: VisitState) -> float:
        return truth(action, traits, state, self.priors.get(action, 0.0))

    async def _step(self, t1: int) -> None:
        """Send the lines due before ``t1`` and a sync marker; wait for the flow, reload the
        models."""
        from features.profile.codec import from_fields
        from features.store import profile_key
        from schemas.keys import customer_key

        lines: list[bytes] = []
        while self.pending and self.pending[0][0] < t1:
            lines.append(heapq.heappop(self.pending)[2])
        self.syncs += 1
        marker = {"event_id": f"nba-sync-{self.cfg.seed}-{self.syncs}", "type": "page_view",
                  "ts": fast_format_ts(t1 - 1), "customer_id": SYNC_CUSTOMER}  # fmt: skip
        self.q.put(lines)
        self.q.put([orjson.dumps(marker)])
        key = profile_key(customer_key(SYNC_CUSTOMER))
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while True:
            raw = await self.client.hgetall(key)
            if raw and from_fields(raw).events_total >= self.syncs:
                break
            if self.failure:
                raise RuntimeError(f"the dataflow failed: {self.failure[0]!r}") from self.failure[0]
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dataflow did not process step {self.syncs} in time")
            await asyncio.sleep(0.002)
        await self.models.arefresh(self.client)

    async def report(self, dead_letter: Path) -> dict[str, Any]:
        """The report (after the flow ended)."""
        from features.store import model_keys

        days = self.cfg.days
        half = days // 2
        last = self.ledger.summary(half, days)
        action_models: dict[str, int | None] = {}
        for a in self.cat.actions:
            raw = await self.client.get(model_keys(f"action:{a.id}")[2])
            action_models[a.id] = int(raw) if raw is not None else None
        dead: Counter[str] = Counter()
        if dead_letter.exists():
            with dead_letter.open("rb") as fh:
                for line in fh:
                    try:
                        dead[str(orjson.loads(line).get("reason", "?"))] += 1
                    except (orjson.JSONDecodeError, AttributeError):
                        dead["?"] += 1
        return {
            "customers": self.cfg.customers,
            "days": days,
            "seed": self.cfg.seed,
            "reward": self.reward,
            "catalog": self.cat.source,
            "chunk_hours": CHUNK_HOURS,
            "decisions": len(self.ledger.rows),
            "records_captured": len(self.log.records),
            "selections": dict(sorted(self.selections.items())),
            "degraded": self.degraded,
            "served": dict(self.served.most_common()),
            "oracle_choice": dict(self.oracle_choice.most_common()),
            "outcomes": dict(sorted(self.outcomes.items())),
            "annoying_offers": self.annoyed,
            "events": self.n_events,
            "dead_lettered": dict(dead.most_common()),
            "periods": self.ledger.periods(days),
            "last_half": last,
            "lift_capture": last["lift_capture"],
            "aim": AIM,
            "meets_aim": last["lift_capture"] is not None and last["lift_capture"] >= AIM,
            "action_models": action_models,
        }


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _period_line(p: dict[str, Any]) -> str:
    return (
        f"days {p['from_day']:>3}-{p['to_day'] - 1:<3} {p['decisions']:>8,} "
        f"{_fmt(p['engine']):>9} {_fmt(p['engine_realised']):>9} {_fmt(p['random']):>9} "
        f"{_fmt(p['oracle']):>9} {_fmt(p['model_share'], '.2f'):>6} "
        f"{_fmt(p['lift_capture'], '.3f'):>8}"
    )


def report_lines(report: dict[str, Any]) -> list[str]:
    """The human table of a report."""
    head = (
        f"{'period':<12} {'decisions':>8} {'engine':>9} {'realised':>9} {'random':>9} "
        f"{'oracle':>9} {'model':>6} {'capture':>8}"
    )
    last = report["last_half"]
    models = report["action_models"]
    trained = [a for a, v in models.items() if v is not None]
    verdict = "meets" if report["meets_aim"] else "below"
    return [
        f"reward per decision ({report['reward']}); model: share of served propensities from "
        f"the action's model",
        head,
        *(_period_line(p) for p in report["periods"]),
        "last half " + _period_line(last)[5:],
        f"lift capture (last half, days {last['from_day']}-{last['to_day'] - 1}) = "
        f"(engine - random) / (oracle - random) = {_fmt(report['lift_capture'], '.3f')} "
        f"({verdict} the aim of {report['aim']})",
        f"{report['decisions']:,} decisions ({report['records_captured']:,} decision records, "
        f"{report['degraded']:,} degraded), {report['events']:,} events, "
        f"{report['customers']:,} customers x {report['days']} days, seed {report['seed']}, "
        f"{report['seconds']:.0f} s",
        "served: " + ", ".join(f"{a} {n:,}" for a, n in report["served"].items()),
        "the oracle's: " + ", ".join(f"{a} {n:,}" for a, n in report["oracle_choice"].items()),
        f"action models trained: {', '.join(trained) if trained else 'none'}",
    ]
