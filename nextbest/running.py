"""Running a flow in this process: its configuration and sinks' policy from the settings, the
recovery set-up, a live progress line, the summary, and a clean end when a sink gives up.
Shared by the commands (``nextbest.commands``) and the demo (``nextbest.demo``)."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, NoReturn

import orjson

from nextbest.settings import ConfigError, Settings

log = logging.getLogger(__name__)


def _die(msg: str, code: int) -> NoReturn:
    print(f"nextbest: {msg}", file=sys.stderr)
    raise SystemExit(code)


class Progress:
    """Prints a live progress line every ``interval`` seconds while a flow runs."""

    def __init__(self, render: Callable[[], str], interval: float = 1.0, enabled: bool = True):
        self._render = render
        self._interval = interval
        self._enabled = enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            print(self._render(), file=sys.stderr, flush=True)

    def __enter__(self) -> Progress:
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._enabled:
            self._thread.join()


def progress_line(stats: Any, t0: float, rate: float | None = None) -> str:
    """The live progress line; ``rate``: events/s to show (default: the average since ``t0``)."""
    dt = max(time.perf_counter() - t0, 1e-9)
    dead = sum(stats.dead_lettered.values())
    rate = stats.read / dt if rate is None else rate
    return (
        f"  {stats.read:>10,} events  {rate:>9,.0f} ev/s  "
        f"customers {stats.customers:,}  visitors {stats.visitors:,}  dead letters {dead:,}  "
        f"segments +{stats.entered:,}/-{stats.exited:,}"
    )


def print_summary(summary: dict[str, Any], as_json: bool, dead_letter: str | None) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
        return
    print(
        f"read {summary['read']:,} events in {summary['seconds']:.1f} s "
        f"({summary['events_per_s']:,.0f} events/s)"
    )
    print(f"accepted {summary['accepted']:,}")
    where = f" -> {dead_letter}" if dead_letter and summary["dead_lettered"] else ""
    print(f"dead-lettered {summary['dead_lettered']:,}{where}")
    for reason, n in summary["dead_lettered_by_reason"].items():
        print(f"  {reason:<28} {n:,}")
    print(f"customers {summary['customers']:,} (anonymous visitors {summary['visitors']:,})")


def flow_config(
    settings: Settings,
    write_interval_ms: int | None = None,
    models: bool = True,
    redis_url: str | None = None,
    segments: bool = True,
) -> Any:
    """The flow's configuration: the settings, with the command's flags; with ``segments``
    (and ``NEXTBEST_SEGMENTS`` not ``off``) the segment definitions, and the models and RFM
    boundaries published in ``redis_url`` for the rules that read scores and tiers."""
    extra: dict[str, Any] = {"models": models}
    if models:  # decision records and outcomes in the input train the action models
        from nextbest.commands.decide import actions_catalog

        extra["actions"] = actions_catalog(settings)
    if write_interval_ms is not None:
        extra["write_interval_ms"] = write_interval_ms
    if segments:
        extra["segments"] = segment_context(settings, redis_url)
    extra["ids"] = settings.identity_hasher()
    return settings.flow_config(**extra)


#: Under the recovery directory: the models and RFM boundaries segment rules read, as the run's
#: first start found them (:func:`segment_context`), and the marker of a clean stop.
CONTEXT_FILE: Final = "segment-context.msgpack"
CLEAN_STOP_FILE: Final = "clean-stop"


class _Published:
    """What the segment rules need from Redis, as raw bytes by key (``get`` like a client)."""

    def __init__(self, raw: dict[str, bytes | None]) -> None:
        self.raw = raw

    def get(self, key: str) -> bytes | None:
        return self.raw.get(key)


def _published(redis_url: str | None) -> dict[str, bytes | None]:
    """The published models and RFM boundaries: one ``GET`` each, pipelined (the keys are in
    different slots of a Redis Cluster: no ``MGET``)."""
    import redis
    from redis.exceptions import RedisClusterException

    from features.redis_conn import connect
    from features.store import BOUNDARIES_KEY, model_keys
    from models.targets import NAMES

    keys = [BOUNDARIES_KEY, *(k for t in NAMES for k in model_keys(t))]
    if redis_url is None:
        return {}
    client = None
    try:
        client = connect(redis_url)  # (a cluster client connects here, to read the slot map)
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.get(k)
        values = pipe.execute()
        return {k: v if isinstance(v, bytes) or v is None else str(v).encode()
                for k, v in zip(keys, values, strict=True)}  # fmt: skip
    except (redis.RedisError, RedisClusterException) as exc:
        log.warning("segments: no models or RFM boundaries from Redis (%s): priors", exc)
        return {}
    finally:
        if client is not None:
            client.close()


def _pinned_published(settings: Settings, redis_url: str | None) -> dict[str, bytes | None]:
    """The published models and boundaries the segment rules read. With a recovery directory
    that holds snapshots and no clean-stop marker (the last run crashed), those the crashed run
    read: a resume then gives the transitions the uninterrupted run would have. Otherwise
    (first start, or after a clean stop) those in Redis now, kept for the next resume."""
    import msgspec

    if settings.recovery_dir is None:
        return _published(redis_url)
    rec = Path(settings.recovery_dir)
    pin, clean = rec / CONTEXT_FILE, rec / CLEAN_STOP_FILE
    resuming = any(rec.glob("part-*.sqlite3"))
    if resuming and pin.exists() and not clean.exists():
        try:
            raw: dict[str, bytes | None] = msgspec.msgpack.decode(pin.read_bytes())
            log.info("segments: resuming with the models and RFM boundaries of the run before")
            return raw
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("segments: cannot read %s (%s): reading Redis", pin, exc)
    raw = _published(redis_url)
    rec.mkdir(parents=True, exist_ok=True)
    tmp = pin.with_suffix(".tmp")
    tmp.write_bytes(msgspec.msgpack.encode(raw))
    tmp.replace(pin)
    clean.unlink(missing_ok=True)
    return raw


def mark_clean_stop(settings: Settings) -> None:
    """The flow ended cleanly: the next start reads the newest models and boundaries for the
    segment rules (see :func:`segment_context`)."""
    if settings.recovery_dir is not None and Path(settings.recovery_dir).is_dir():
        (Path(settings.recovery_dir) / CLEAN_STOP_FILE).touch()


def segment_context(settings: Settings, redis_url: str | None = None) -> Any:
    """The segments for the flow: definitions (a bad file stops the command with the file,
    segment and field named), the published models (else the priors) and RFM boundaries, as
    Redis holds them when the run starts; with a recovery directory, a resume after a crash
    keeps those the crashed run started with (a clean stop lets the next start take the newest),
    so a crash changes no transition."""
    if settings.segments == "off":
        return None
    from typing import cast

    import redis

    from dataflows.steps.segments import SegmentContext
    from features.segments import SegmentConfigError, load_segments
    from features.store import BOUNDARIES_KEY, _boundaries
    from models.targets import NAMES, prior_of
    from serving.scoring import ModelSet

    try:
        segs = load_segments(settings.segments, NAMES)
    except SegmentConfigError as exc:
        raise ConfigError(f"NEXTBEST_SEGMENTS: {exc}") from None
    published = _Published(_pinned_published(settings, redis_url))
    models = ModelSet()
    models.refresh(cast(redis.Redis, published))
    bounds = _boundaries(published.get(BOUNDARIES_KEY))
    loaded = {t: lm.model for t, lm in models.models.items()}

    def scorer(target: str, feats: dict[str, float]) -> float:
        model = loaded.get(target)
        if model is not None:
            return model.predict(feats)[0]
        return prior_of(target)(feats)

    return SegmentContext(segs, bounds, scorer)


@contextlib.contextmanager
def sink_gave_up() -> Iterator[None]:
    """A sink that stopped retrying ends the command with its reason (exit 1), no traceback."""
    from dataflows.retry import SinkGaveUp

    try:
        yield
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, SinkGaveUp):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        _die(str(cause), 1)


def sink_options(settings: Settings, stop: threading.Event | None = None) -> Any:
    """The sinks' failure policy from the settings."""
    from dataflows.retry import SinkOptions

    return SinkOptions(
        retry_limit_ms=settings.sink_retry_limit_ms,
        fallback_dir=settings.home_path / "fallback",
        dead_letter_max_bytes=settings.dead_letter_max_bytes,
        stop=stop,
    )


#: The cyclic collector's thresholds in a flow process: young objects collected every 20,000
#: allocations instead of 700 (a flow allocates and frees many small containers per event).
GC_THRESHOLDS: Final = (20_000, 20, 20)


def _tune_gc() -> None:
    """What exists before the flow starts (modules, the flow graph) lives as long as the process:
    frozen out of the cyclic collector; young objects collected less often (README "Latency and
    garbage": 6 % less wall time on a replay, peak memory +1 %). Once per process: a flow
    started again (``run`` after its topics changed) finds it done."""
    if gc.get_threshold() == GC_THRESHOLDS:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_flow(flow: Any, settings: Settings | None = None, cluster: bool = False) -> None:
    """Run a flow in this process; with ``cluster`` (``run`` only) as this process of the
    cluster the settings describe (:mod:`nextbest.cluster`; by default the only process, one
    worker). Other commands (``replay``) ignore the cluster settings: run in a dataflow pod,
    which has them, they must not join its cluster. With a recovery directory, snapshot and
    resume from it."""
    from datetime import timedelta

    from bytewax.recovery import RecoveryConfig

    from nextbest.cluster import Cluster, cluster_of, execute, init_recovery

    member = cluster_of(settings) if settings is not None and cluster else Cluster(0, (), 1, 1)
    _tune_gc()
    if settings is None or settings.recovery_dir is None:
        execute(flow, member)
        return
    from dataflows.recovery_store import compact

    db_dir = Path(settings.recovery_dir)
    if not init_recovery(db_dir, member):
        # what erased (or expired) state left in free pages goes before Bytewax opens them
        compact(db_dir, purge=member.processes == 1)
    execute(
        flow,
        member,
        timedelta(seconds=settings.snapshot_interval_s),
        RecoveryConfig(db_dir),  # type: ignore[no-untyped-call]
    )
    mark_clean_stop(settings)
    compact(db_dir)  # (what erasures and retention dropped leaves the files now)


def kafka_flow(
    settings: Settings,
    brokers: str,
    redis_url: str,
    stop: Any,
    layout: Any = None,
) -> Any:
    """The flow over the input topics, with the sinks' policy from the settings. Without
    ``layout`` the topics' layout is read when the flow starts (and watched)."""
    from dataflows.deadletters import DeadLetterKafkaSink, SegmentEventsKafkaSink
    from dataflows.flow import build_flow
    from dataflows.sinks import RedisSink
    from dataflows.sources import KafkaTopicsSource, StoppableSource

    options = sink_options(settings, stop.event)
    source = KafkaTopicsSource(
        brokers,
        layout if layout is not None else list(settings.topics),
        settings.batch_size,
        settings.kafka_offset_reset,
        stop,
        watch_interval_s=settings.topic_check_interval_ms / 1000,
    )
    return build_flow(
        StoppableSource(source, stop.event),
        RedisSink(redis_url, options),
        DeadLetterKafkaSink(brokers, settings.topic_dead_letter, options),
        source_label="kafka",
        config=flow_config(settings, redis_url=redis_url),
        segment_sink=SegmentEventsKafkaSink(brokers, settings.topic_segment_events, options),
    )
