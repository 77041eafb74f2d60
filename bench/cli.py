"""``python -m bench``: options, the order of the sections, and the report.

One run simulates one file, starts its own Redis and broker in a temporary directory, measures
(a) baseline, (b') the flow without models (``replay --no-models``), (b) full (models on),
(b'') the flow without product knowledge (``NEXTBEST_PRODUCTS=off``), (a) baseline again,
(d) memory (of what (b) wrote), (c) freshness (with its transport baseline first), (e)
timer-driven segment transitions (:mod:`bench.timers`) and (f) next-best-action and
recommendations latency against the trivial endpoint of the same server, with Locust
(:mod:`bench.nba`), (g) the closed loop of next best action (:mod:`bench.nba_loop`), stops
everything it started, and prints a readable report (``--json``: one JSON object on stdout).
Progress goes to stderr. Aims are reported, never asserted; every ratio is against the baseline
of the same run, ``models`` compares (b) with (b') and ``products`` (b) with (b'') of the same
run; (f) compares NBA and recommendations with ``/healthz`` of the same server and run. The exit
code is 1 when a section could not be measured (its ``error`` says why), else 0. ``--only nba``
runs section (f) alone (no simulated file; its own Redis and broker only).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.baseline import run_baseline
from bench.freshness import measure_freshness
from bench.full import BenchError, run_replay
from bench.memory import measure_memory
from bench.nba import AIM_P99_MS as AIM_NBA_P99_MS
from bench.nba import AIM_RATIO as AIM_NBA_RATIO
from bench.nba import measure_nba, render_nba
from bench.nba_loop import AIM_LIFT_CAPTURE, measure_nba_loop, render_nba_loop
from bench.services import Services, running_services
from bench.timers import measure_timer_latency
from bench.workload import customers_for, make_workload

log = logging.getLogger("bench")

#: Aims from the profile issue: reported against, never asserted.
AIM_RATIO = 0.4
AIM_MODELS_RATIO = 0.8
#: Aim from the recommendations issue: the flow with product knowledge / without, >= this.
AIM_PRODUCTS_RATIO = 0.8
AIM_P99_MS = 250.0
AIM_MEDIAN_BYTES = 2048

#: Defaults of a full run and of ``--quick`` (a smoke run: about 80 s on this 2-core machine).
FULL = {"events": 300_000, "days": 90, "duration": 20.0, "memory_sample": 2000}
QUICK = {"events": 20_000, "days": 30, "duration": 5.0, "memory_sample": 500}
#: Section (f): customers, Locust users, seconds per run (each endpoint, each round), rounds.
NBA_FULL = {"customers": 500, "users": 10, "duration": 15, "rounds": 2}
NBA_QUICK = {"customers": 100, "users": 10, "duration": 2, "rounds": 1}
#: Section (g), the closed loop: customers and days.
LOOP_FULL = {"customers": 2000, "days": 90}
LOOP_QUICK = {"customers": 120, "days": 14}


def _positive_int(raw: str) -> int:
    v = int(raw)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}")
    return v


def _positive_float(raw: str) -> float:
    v = float(raw)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {raw!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The bench's command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "nextbest benchmarks: baseline vs full flow throughput, the flow with vs without "
            "models, freshness, memory."
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small smoke run (~20k events, 5 s of freshness, 500 sampled profiles)",
    )
    p.add_argument(
        "--events",
        type=_positive_int,
        help="about how many lines to simulate (default 300000; --quick 20000)",
    )
    p.add_argument(
        "--customers", type=_positive_int, help="population size (default: sized for --events)"
    )
    p.add_argument("--days", type=_positive_int, help="simulated days (default 90; --quick 30)")
    p.add_argument("--seed", type=int, default=42, help="simulator seed (default 42)")
    p.add_argument(
        "--bad-rate", type=float, default=0.01, help="share of malformed lines (default 0.01)"
    )
    p.add_argument(
        "--rate", type=_positive_float, default=2000.0, help="freshness produce rate, events/s"
    )
    p.add_argument(
        "--duration",
        type=_positive_float,
        help="seconds of producing for freshness (default 20; --quick 5)",
    )
    p.add_argument(
        "--memory-sample",
        type=_positive_int,
        help="profiles sampled for memory (default 2000; --quick 500)",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=1000, help="baseline source batch size"
    )
    p.add_argument(
        "--nba-users", type=_positive_int, help="Locust users of section (f) (default 10)"
    )
    p.add_argument(
        "--nba-duration",
        type=_positive_int,
        help="seconds of each Locust run of section (f) (default 15; --quick 2)",
    )
    p.add_argument(
        "--only",
        choices=["nba"],
        help="run one section alone: nba = (f) next best action latency with Locust",
    )
    p.add_argument("--workdir", help="keep the file, logs and service data here (kept after)")
    return p


def _section(
    result: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]
) -> dict[str, Any] | None:
    log.info("bench: %s ...", name)
    t0 = time.perf_counter()
    try:
        out = fn()
    except BenchError as exc:
        log.error("bench: %s failed: %s", name, exc)
        result[name] = {"error": str(exc)}
        return None
    except Exception as exc:
        log.error("bench: %s failed:\n%s", name, traceback.format_exc())
        result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return None
    result[name] = out
    log.info("bench: %s done in %.1f s", name, time.perf_counter() - t0)
    return out


def _combine_baselines(
    first: dict[str, Any] | None, second: dict[str, Any] | None
) -> dict[str, Any] | None:
    """One baseline section from its runs before and after the full flow (mean events/s)."""
    runs = [r for r in (first, second) if r is not None]
    if not runs:
        return None
    rates = [float(r["events_per_s"]) for r in runs]
    mean = sum(rates) / len(rates)
    return {
        **runs[0],
        "events_per_s": round(mean, 1),
        "seconds": round(sum(float(r["seconds"]) for r in runs) / len(runs), 3),
        "runs_events_per_s": rates,
        "spread": round((max(rates) - min(rates)) / mean, 3) if mean > 0 else 0.0,
    }


def _models_section(no_models: dict[str, Any], full: dict[str, Any] | None) -> dict[str, Any]:
    """The models comparison: the full flow (models on) against the same replay ``--no-models``."""
    if "error" in no_models:
        return {"error": f"the flow without models: {no_models['error']}"}
    if full is None:
        return {"error": "needs the full flow (models on)", "no_models": no_models}
    off = float(no_models["events_per_s_reported"])
    on = float(full["events_per_s_reported"])
    off_wall = float(no_models["events_per_s_wall"])
    if off <= 0 or off_wall <= 0:
        return {"error": "the flow without models reported no throughput", "no_models": no_models}
    ratio = on / off
    return {
        "events_per_s_models": on,
        "events_per_s_no_models": off,
        "models_over_no_models": round(ratio, 3),
        "models_over_no_models_wall": round(float(full["events_per_s_wall"]) / off_wall, 3),
        "basis": "replay's reported events_per_s, models on (the full section) / --no-models, "
        "same file and Redis, flushed before each",
        "meets_aim": ratio >= AIM_MODELS_RATIO,
        "no_models": no_models,
    }


def _products_section(off: dict[str, Any], full: dict[str, Any] | None) -> dict[str, Any]:
    """Recommendations' cost in the flow: the full flow against the same replay with
    ``NEXTBEST_PRODUCTS=off``, run right after it."""
    if "error" in off:
        return {"error": f"the flow without products: {off['error']}"}
    if full is None or float(off["events_per_s_reported"]) <= 0:
        return {"error": "needs the full flow and the flow without products", "no_products": off}
    ratio = float(full["events_per_s_reported"]) / float(off["events_per_s_reported"])
    return {
        "events_per_s_products": full["events_per_s_reported"],
        "events_per_s_no_products": off["events_per_s_reported"],
        "products_over_no_products": round(ratio, 3),
        "products_over_no_products_wall": round(
            float(full["events_per_s_wall"]) / float(off["events_per_s_wall"]), 3
        ),
        "basis": "replay's reported events_per_s, product knowledge on (the full section) / "
        "NEXTBEST_PRODUCTS=off, same file and Redis, flushed before each",
        "meets_aim": ratio >= AIM_PRODUCTS_RATIO,
        "no_products": off,
    }


def _nba_section(args: argparse.Namespace, svc: Services) -> dict[str, Any]:
    """Section (f) with the preset of ``--quick`` or of a full run, and the options."""
    preset = dict(NBA_QUICK if args.quick else NBA_FULL)
    preset["users"] = args.nba_users or preset["users"]
    preset["duration"] = args.nba_duration or preset["duration"]
    return measure_nba(svc, **preset)


def _loop_section(args: argparse.Namespace) -> dict[str, Any]:
    """Section (g) with the preset of ``--quick`` or of a full run."""
    preset = LOOP_QUICK if args.quick else LOOP_FULL
    return measure_nba_loop(preset["customers"], preset["days"], args.seed)


def run_only_nba(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """``--only nba``: section (f) alone, against its own Redis and broker."""
    result: dict[str, Any] = {
        "config": {
            "quick": bool(args.quick),
            "only": "nba",
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "aims": {"nba_p99_ms_max": AIM_NBA_P99_MS, "nba_over_trivial_min": AIM_NBA_RATIO},
    }
    with running_services(workdir / "services") as svc:
        _section(result, "nba", lambda: _nba_section(args, svc))
    result["config"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["errors"] = sorted(
        name for name, sec in result.items() if isinstance(sec, dict) and "error" in sec
    )
    return result


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run every section; the result is the JSON report."""
    if args.only == "nba":
        return run_only_nba(args, workdir)
    preset = QUICK if args.quick else FULL
    events = args.events or int(preset["events"])
    days = args.days or int(preset["days"])
    duration = args.duration or float(preset["duration"])
    sample = args.memory_sample or int(preset["memory_sample"])
    result: dict[str, Any] = {
        "config": {
            "quick": bool(args.quick),
            "target_events": events,
            "days": days,
            "seed": args.seed,
            "bad_rate": args.bad_rate,
            "freshness_rate_per_s": args.rate,
            "freshness_duration_s": duration,
            "memory_sample": sample,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "aims": {
            "full_over_baseline_min": AIM_RATIO,
            "models_over_no_models_min": AIM_MODELS_RATIO,
            "products_over_no_products_min": AIM_PRODUCTS_RATIO,
            "freshness_p99_ms_max": AIM_P99_MS,
            "median_profile_bytes_max": AIM_MEDIAN_BYTES,
            "nba_p99_ms_max": AIM_NBA_P99_MS,
            "nba_over_trivial_min": AIM_NBA_RATIO,
            "nba_lift_capture_min": AIM_LIFT_CAPTURE,
        },
    }
    log.info("bench: simulating about %s lines over %d days ...", f"{events:,}", days)
    customers = args.customers or customers_for(events, days, args.seed, args.bad_rate)
    wl = make_workload(
        workdir / "events.jsonl",
        customers=customers,
        days=days,
        seed=args.seed,
        bad_rate=args.bad_rate,
    )
    result["workload"] = wl.as_dict()
    log.info("bench: %s lines for %s customers -> %s", f"{wl.lines:,}", f"{customers:,}", wl.path)

    # The baseline runs before and after the full flow; the ratio uses their mean, and their
    # spread shows how steady the machine was meanwhile.
    first = _section(result, "baseline", lambda: run_baseline(wl.path, args.batch_size))
    with running_services(workdir / "services") as svc:
        # The flow without models right before the full flow (each flushes Redis first), so the
        # models comparison is of two neighbouring runs; memory then reads what (b) wrote.
        _section(result, "no_models", lambda: run_replay(svc, wl.path, wl.lines, models=False))
        full = _section(result, "full", lambda: run_replay(svc, wl.path, wl.lines))
        # and without product knowledge right after (recommendations' cost in the flow)
        _section(result, "no_products",
                 lambda: run_replay(svc, wl.path, wl.lines, products=False))  # fmt: skip
        second = _section(result, "baseline", lambda: run_baseline(wl.path, args.batch_size))
        baseline = _combine_baselines(first, second)
        result["baseline"] = baseline if baseline is not None else result["baseline"]
        if full is not None:

            def memory() -> dict[str, Any]:
                client = svc.client()
                try:
                    out = measure_memory(client, sample)
                finally:
                    client.close()
                med = out.get("median_bytes")
                out["meets_aim"] = med is not None and med <= AIM_MEDIAN_BYTES
                return out

            _section(result, "memory", memory)
        else:
            result["memory"] = {"error": "skipped: the full flow did not run"}

        def freshness() -> dict[str, Any]:
            out = measure_freshness(
                svc,
                wl.path,
                rate=args.rate,
                duration=duration,
                transport_duration=min(duration, 10.0),
            )
            p99 = out.get("p99_ms")
            out["meets_aim"] = p99 is not None and p99 <= AIM_P99_MS
            return out

        _section(result, "freshness", freshness)

        def timers() -> dict[str, Any]:
            out = measure_timer_latency(svc, rate=args.rate, duration=max(duration, 6.0))
            p99 = out.get("p99_ms")
            out["meets_aim"] = p99 is not None and p99 <= 1000 and out["missing"] == 0
            return out

        _section(result, "timers", timers)
        _section(result, "nba", lambda: _nba_section(args, svc))
    _section(result, "nba_loop", lambda: _loop_section(args))

    if baseline is not None and full is not None and baseline["events_per_s"] > 0:
        base = float(baseline["events_per_s"])
        ratio = float(full["events_per_s_reported"]) / base
        result["ratio"] = {
            "full_over_baseline": round(ratio, 3),
            "full_wall_over_baseline": round(float(full["events_per_s_wall"]) / base, 3),
            "basis": "replay's reported events_per_s / mean of the two baseline runs, same file",
            "meets_aim": ratio >= AIM_RATIO,
        }
    else:
        result["ratio"] = {"error": "needs both baseline and full"}
    result["models"] = _models_section(result.pop("no_models"), full)
    result["products"] = _products_section(result.pop("no_products"), full)
    result["config"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["errors"] = sorted(
        name for name, sec in result.items() if isinstance(sec, dict) and "error" in sec
    )
    return result


# ---------------------------------------------------------------------------------------------
# report


def _n(x: Any) -> str:
    return f"{x:,.0f}" if isinstance(x, int | float) else str(x)


def _aim(ok: Any) -> str:
    return "met" if ok else "NOT met"


def render(r: dict[str, Any]) -> str:
    """The readable report."""
    lines: list[str] = []
    add = lines.append
    wl = r.get("workload", {})
    cfg = r.get("config", {})
    if cfg.get("only") == "nba":
        add(
            f"nextbest bench, section (f) alone: machine {cfg.get('cpus')} CPUs, load average "
            f"{cfg.get('load_average_at_start')} at start, {cfg.get('load_average_at_end')} at end"
        )
        add("")
        lines.extend(render_nba(r.get("nba", {"error": "not run"})))
        return "\n".join(lines)
    add(
        f"nextbest bench: {_n(wl.get('lines'))} lines ({_n(wl.get('events'))} events, "
        f"{_n(wl.get('bad'))} malformed), {_n(wl.get('customers'))} simulated people x "
        f"{wl.get('days')} days, seed {wl.get('seed')}"
    )
    add(
        f"machine: {cfg.get('cpus')} CPUs, load average {cfg.get('load_average_at_start')} at "
        f"start, {cfg.get('load_average_at_end')} at end (other work skews absolute figures)"
    )
    add("")
    b = r.get("baseline", {})
    if "error" in b:
        add(f"(a) baseline   ERROR: {b['error']}")
    else:
        runs = " / ".join(_n(x) for x in b["runs_events_per_s"])
        add(
            f"(a) baseline   read+decode+count per key (in-process Bytewax)  "
            f"{b['seconds']:.2f} s  {_n(b['events_per_s'])} events/s  ({_n(b['keys'])} keys; "
            f"runs before/after full: {runs}, spread {b['spread']:.0%})"
        )
    f = r.get("full", {})
    if "error" in f:
        add(f"(b) full       ERROR: {f['error']}")
    else:
        add(
            f"(b) full       nextbest replay --json -> Redis                  "
            f"{f['wall_seconds']:.2f} s  {_n(f['events_per_s_wall'])} events/s measured by the "
            f"bench (process wall time)"
        )
        add(
            f"                                                                "
            f"{f['reported_seconds']} s  {_n(f['events_per_s_reported'])} events/s reported by "
            f"replay"
        )
    ra = r.get("ratio", {})
    if "error" not in ra:
        add(
            f"    ratio full/baseline  {ra['full_over_baseline']:.2f} (reported)  "
            f"{ra['full_wall_over_baseline']:.2f} (wall, incl. process start)   "
            f"aim >= {AIM_RATIO}: {_aim(ra['meets_aim'])}"
        )
    mo = r.get("models", {})
    nm = mo.get("no_models")
    if nm is not None:
        add(
            f"(b') no models nextbest replay --json --no-models -> Redis      "
            f"{nm['wall_seconds']:.2f} s  {_n(nm['events_per_s_wall'])} events/s measured by the "
            f"bench (process wall time)"
        )
        add(
            f"                                                                "
            f"{nm['reported_seconds']} s  {_n(nm['events_per_s_reported'])} events/s reported by "
            f"replay"
        )
    if "error" in mo:
        add(f"    models       ERROR: {mo['error']}")
    else:
        add(
            f"    ratio models/no models  {mo['models_over_no_models']:.2f} (reported, "
            f"{_n(mo['events_per_s_models'])} vs {_n(mo['events_per_s_no_models'])} events/s)  "
            f"{mo['models_over_no_models_wall']:.2f} (wall)   "
            f"aim >= {AIM_MODELS_RATIO}: {_aim(mo['meets_aim'])}"
        )
    po = r.get("products", {})
    if "error" in po:
        add(f"    products     ERROR: {po['error']}")
    elif po:
        add(
            f"    ratio products on/off   {po['products_over_no_products']:.2f} (reported, "
            f"{_n(po['events_per_s_products'])} vs {_n(po['events_per_s_no_products'])} "
            f"events/s)  {po['products_over_no_products_wall']:.2f} (wall)   "
            f"aim >= {AIM_PRODUCTS_RATIO}: {_aim(po['meets_aim'])}"
        )
    add("")
    c = r.get("freshness", {})
    if "error" in c:
        add(f"(c) freshness  ERROR: {c['error']}")
    else:
        add(
            f"(c) freshness  {_n(c['rate_per_s'])} events/s for {c['duration_s']:g} s "
            f"(achieved {_n(c['achieved_rate_per_s'])}/s) against nextbest run"
        )
        if c["measured"]:
            add(
                f"    produce -> visible in Redis: p50 {c['p50_ms']:.1f} ms  "
                f"p99 {c['p99_ms']:.1f} ms  max {c['max_ms']:.1f} ms   "
                f"measured {_n(c['measured'])} of {_n(c['produced'])} produced   "
                f"aim p99 <= {AIM_P99_MS:g} ms: {_aim(c['meets_aim'])}"
            )
        else:
            add(f"    no event became visible ({_n(c['produced'])} produced)")
        seg = c.get("segment_transitions", {}).get("event_driven_ms", {})
        if seg.get("count"):
            add(
                f"    event -> its segment transition on segment-events: p50 {seg['p50']:.1f} ms  "
                f"p99 {seg['p99']:.1f} ms  max {seg['max']:.1f} ms  (n={_n(seg['count'])}; "
                f"aim p99 <= 1000 ms: {_aim(seg['p99'] <= 1000)})"
            )
        iso = c["isolated"]
        if iso.get("count"):
            add(
                f"    isolated events (alone in flight on their key, gap {iso['gap_s']:g} s): "
                f"p50 {iso['p50']:.1f} ms  p99 {iso['p99']:.1f} ms  max {iso['max']:.1f} ms  "
                f"(n={_n(iso['count'])})"
            )
        for kind, s in c["by_kind"].items():
            if s.get("count"):
                add(
                    f"    {kind:<9} events: p50 {s['p50']:.1f} ms  p99 {s['p99']:.1f} ms  "
                    f"measured {_n(s['count'])} of {_n(s['produced'])}"
                )
        t = c["transport"]["latency_ms"]
        if t.get("count"):
            ratio = c.get("over_transport", {})
            add(
                f"    transport baseline (same broker and rate, plain consumers): "
                f"p50 {t['p50']:.1f} ms  p99 {t['p99']:.1f} ms  max {t['max']:.1f} ms  "
                f"(n={_n(t['count'])});  flow/transport p50 x{ratio.get('p50')}  "
                f"p99 x{ratio.get('p99')}"
            )
        add(f"    nextbest run ready (consuming) after {c['run_ready_seconds']:.1f} s")
    add("")
    m = r.get("memory", {})
    if "error" in m:
        add(f"(d) memory     ERROR: {m['error']}")
    elif m.get("sampled"):
        encs = ", ".join(f"{enc} {n / m['sampled']:.0%}" for enc, n in m["encodings"].items())
        add(
            f"(d) memory     {_n(m['sampled'])} of {_n(m['profile_keys'])} profiles: median "
            f"{_n(m['median_bytes'])} B  p90 {_n(m['p90_bytes'])} B  max {_n(m['max_bytes'])} B  "
            f"(median {m['fields_median']:g} fields)   aim median <= {AIM_MEDIAN_BYTES} B: "
            f"{_aim(m['meets_aim'])}"
        )
        add(
            f"    encoding: {encs}   (compact {m['compact_share']:.0%}; Redis "
            f"{m['redis_version']}, hash max entries {m['hash_max_entries']}, "
            f"value {m['hash_max_value']})"
        )
        for kind, s in m["by_kind"].items():
            if s.get("count"):
                add(
                    f"    {kind:<9} profiles: median {_n(s['median_bytes'])} B  "
                    f"p90 {_n(s['p90_bytes'])} B  (n={_n(s['count'])})"
                )
    else:
        add("(d) memory     no profiles found in Redis")
    add("")
    e = r.get("timers", {})
    if "error" in e:
        add(f"(e) timers     ERROR: {e['error']}")
    elif e:
        lat = e["latency_ms"]
        got = (
            f"p50 {lat['p50']:.1f} ms  p99 {lat['p99']:.1f} ms  max {lat['max']:.1f} ms"
            if lat.get("count")
            else "none"
        )
        add(
            f"(e) timers     watermark passes a flip -> its transition on segment-events: {got}  "
            f"({_n(e['transitions'])} of {_n(e['carts'])} abandoned carts; event time x"
            f"{e['event_time_speed']:g}; aim p99 <= 1000 ms: {_aim(e['meets_aim'])})"
        )
    if "nba" in r:
        add("")
        lines.extend(render_nba(r["nba"]))
    if "nba_loop" in r:
        add("")
        lines.extend(render_nba_loop(r["nba_loop"]))
    if r.get("errors"):
        add("")
        add(f"sections with errors: {', '.join(r['errors'])}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    keep = args.workdir is not None
    workdir = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="nb-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, workdir)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["workdir"] = str(workdir) if keep else None
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(render(result))
    return 1 if result["errors"] else 0
