"""One settings object, read once from the environment and validated at start.

Every setting is declared once here, with its environment variable, default and meaning; the
README's configuration table is generated from :data:`SPECS` (a test keeps them in sync). A bad
value fails at start with a message that names the variable.

>>> s = Settings.from_env({"NEXTBEST_METRICS_PORT": "9200"})
>>> s.metrics_port, s.redis_url
(9200, None)
>>> Settings.from_env({"NEXTBEST_METRICS_PORT": "x"})
Traceback (most recent call last):
...
nextbest.settings.ConfigError: NEXTBEST_METRICS_PORT: expected an integer in [0, 65535], got 'x'
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataflows.config import FlowConfig
    from schemas.consent import ConsentDefaults
    from schemas.identifiers import IdentifierHasher

#: The generated identity salt, under NEXTBEST_HOME (when NEXTBEST_IDENTITY_SALT is unset).
SALT_FILE = "identity-salt"


class ConfigError(ValueError):
    """A setting has a bad value; the message names the environment variable."""


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            v = int(raw)
        except ValueError:
            v = lo - 1
        if not lo <= v <= hi:
            raise ValueError(f"expected an integer in [{lo}, {hi}], got {raw!r}")
        return v

    return parse


def _nonempty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://", "redis+cluster://",
                           "rediss+cluster://")):  # fmt: skip
        raise ValueError(
            "expected a redis://, rediss://, unix://, redis+cluster:// or rediss+cluster:// URL, "
            f"got {raw!r}"
        )
    return raw


def _brokers(raw: str) -> str:
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts or any(":" not in p for p in parts):
        raise ValueError(f"expected host:port[,host:port...], got {raw!r}")
    return ",".join(parts)


_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(raw: str) -> int:
    """A duration: a number with a unit ``ms``, ``s``, ``m``, ``h`` or ``d`` (bare: seconds).

    >>> duration_ms("10m"), duration_ms("90"), duration_ms("1.5h")
    (600000, 90000, 5400000)
    """
    text = raw.strip().lower()
    unit = next((u for u in ("ms", "s", "m", "h", "d") if text.endswith(u)), "")
    number = text[: len(text) - len(unit)] if unit else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a duration like 10m, 600s or 1h, got {raw!r}") from None
    if not 0 <= value < 1e12:
        raise ValueError(f"expected a non-negative duration, got {raw!r}")
    return int(value * _UNITS[unit or "s"])


def _model_name(raw: str) -> str:
    v = raw.strip().lower()
    if v not in {"logreg", "hat", "arf"}:
        raise ValueError(f"expected logreg, hat or arf, got {raw!r}")
    return v


def _on_off(raw: str) -> bool:
    v = raw.strip().lower()
    if v in {"on", "1", "true", "yes"}:
        return True
    if v in {"off", "0", "false", "no"}:
        return False
    raise ValueError(f"expected on or off, got {raw!r}")


def _consent_defaults(raw: str) -> ConsentDefaults:
    from schemas.consent import parse_defaults

    return parse_defaults(raw)


def _auth_mode(raw: str) -> str:
    if raw not in ("auto", "on", "off"):
        raise ValueError(f"expected auto, on or off, got {raw!r}")
    return raw


_ORIGIN_RE = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def _origins(raw: str) -> tuple[str, ...]:
    """``https://a.example,http://localhost:3000`` -> a tuple; ``*`` allows any origin."""
    out = tuple(o.strip() for o in raw.split(",") if o.strip())
    for o in out:
        if o != "*" and not _ORIGIN_RE.fullmatch(o):
            raise ValueError(f"expected origins like https://shop.example[:port] or *, got {o!r}")
    return out


def _offset_reset(raw: str) -> str:
    v = raw.strip().lower()
    if v not in {"earliest", "latest", "fail"}:
        raise ValueError(f"expected earliest, latest or fail, got {raw!r}")
    return v


def _log_level(raw: str) -> str:
    v = raw.upper()
    if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return v


@dataclass(frozen=True)
class Spec:
    """How one setting is read: variable, default (as text), parser and meaning."""

    env: str
    default: str | None
    parse: Callable[[str], Any]
    doc: str


#: Every setting: attribute name -> spec. The README's configuration table lists these.
SPECS: dict[str, Spec] = {
    "home": Spec(
        "NEXTBEST_HOME",
        "./.nextbest",
        _nonempty,
        "Directory for embedded-mode data: the embedded Redis's data and socket, the shared "
        "embedded broker's address, dead-letter files.",
    ),
    "redis_url": Spec(
        "NEXTBEST_REDIS_URL",
        None,
        _redis_url,
        "External Redis (redis://, rediss:// or unix://; a Redis Cluster: redis+cluster:// or "
        "rediss+cluster://, any node). Unset: an embedded redis-server (pip-installed binary) "
        "shared by all commands using the same NEXTBEST_HOME.",
    ),
    "redis_cluster": Spec(
        "NEXTBEST_REDIS_CLUSTER",
        "off",
        _on_off,
        "`on`: NEXTBEST_REDIS_URL (redis:// or rediss://, any node) is a Redis Cluster, as with "
        "the redis+cluster:// scheme (see Operations, Redis Cluster). Needs NEXTBEST_REDIS_URL: "
        "the embedded Redis is one server.",
    ),
    "kafka_brokers": Spec(
        "NEXTBEST_KAFKA_BROKERS",
        None,
        _brokers,
        "Kafka bootstrap servers (host:port,...). Unset: `run` and `simulate --kafka` share an "
        "embedded Kafka-protocol broker (tansu, memory only) under NEXTBEST_HOME.",
    ),
    "topic_clickstream": Spec(
        "NEXTBEST_TOPIC_CLICKSTREAM", "clickstream", _nonempty, "Clickstream events topic."
    ),
    "topic_transactions": Spec(
        "NEXTBEST_TOPIC_TRANSACTIONS", "transactions", _nonempty, "Transaction events topic."
    ),
    "topic_dead_letter": Spec(
        "NEXTBEST_TOPIC_DEAD_LETTER",
        "dead-letter",
        _nonempty,
        "Topic that receives rejected events when reading from Kafka.",
    ),
    "topic_segment_events": Spec(
        "NEXTBEST_TOPIC_SEGMENT_EVENTS",
        "segment-events",
        _nonempty,
        "Topic of segment transitions (one record per entry or exit, keyed by customer id): "
        "written by the flow, read by `deliver`.",
    ),
    "topic_delivery_dead_letter": Spec(
        "NEXTBEST_TOPIC_DELIVERY_DEAD_LETTER",
        "segment-events-dead-letter",
        _nonempty,
        "Topic that receives the transitions `deliver` gave up on (a 4xx, or out of attempts), "
        "with the destination, the attempts and the last status or error.",
    ),
    "webhooks": Spec(
        "NEXTBEST_WEBHOOKS",
        None,
        _nonempty,
        "YAML file of the webhook destinations `deliver` POSTs transitions to (see Delivery); "
        "validated at start.",
    ),
    "delivery_group": Spec(
        "NEXTBEST_DELIVERY_GROUP",
        "nextbest-deliver",
        _nonempty,
        "Kafka consumer group of `deliver`: its committed offsets are where a restart resumes; "
        "processes in one group share the partitions.",
    ),
    "topic_partitions": Spec(
        "NEXTBEST_TOPIC_PARTITIONS",
        "3",
        _int_in(1, 1024),
        "Partitions used when nextbest creates a missing topic.",
    ),
    "metrics_port": Spec(
        "NEXTBEST_METRICS_PORT",
        "9464",
        _int_in(0, 65535),
        "Port of the dataflow's Prometheus /metrics endpoint (`run`, `replay`, `demo`); 0 "
        "disables it. `serve` exposes /metrics on its own HTTP port.",
    ),
    "host": Spec("NEXTBEST_HOST", "127.0.0.1", _nonempty, "Address `serve` listens on."),
    "port": Spec("NEXTBEST_PORT", "8000", _int_in(1, 65535), "Port `serve` listens on."),
    "batch_size": Spec(
        "NEXTBEST_BATCH_SIZE",
        "1000",
        _int_in(1, 100_000),
        "Most events read per source batch and profiles written per Redis pipeline.",
    ),
    "allowed_lateness_ms": Spec(
        "NEXTBEST_ALLOWED_LATENESS",
        "10m",
        duration_ms,
        "How far behind the newest event of the same profile an event may be and still be applied "
        "as if in order (e.g. 10m, 600s); older events are dead-lettered with reason `late`. "
        "Also what the event-time watermark trails the newest event by.",
    ),
    "retention_days": Spec(
        "NEXTBEST_RETENTION_DAYS",
        "400",
        _int_in(1, 100_000),
        "A profile with no event for this many days of event time is dropped from the dataflow "
        "state and from Redis.",
    ),
    "recovery_dir": Spec(
        "NEXTBEST_RECOVERY_DIR",
        None,
        _nonempty,
        "Directory of Bytewax recovery snapshots for `run` and `replay` (created and initialised "
        "when missing). Unset: no snapshots; a restart starts from empty state.",
    ),
    "segments": Spec(
        "NEXTBEST_SEGMENTS",
        None,
        _nonempty,
        "Segment definitions (YAML; format in the README, JSON Schema in "
        "`schemas/json/segments.schema.json`). Unset: the built-in segments; `off`: no segments.",
    ),
    "actions": Spec(
        "NEXTBEST_ACTIONS",
        None,
        _nonempty,
        "Action catalogue of next best action (YAML; format in the README, JSON Schema in "
        "`schemas/json/actions.schema.json`). Unset: the shipped example catalogue "
        "`decisions/actions.yaml`.",
    ),
    "recommendations": Spec(
        "NEXTBEST_RECOMMENDATIONS",
        None,
        _nonempty,
        "How recommendations are blended and filtered (YAML; fields in the README, "
        '"Recommendations"). Unset: the shipped `decisions/recommendations.yaml`.',
    ),
    "products": Spec(
        "NEXTBEST_PRODUCTS",
        "on",
        _on_off,
        "Product knowledge in the dataflow (popularity, trending, co-occurrence: what "
        "recommendations read); `off` leaves it out of `run` and `replay`.",
    ),
    "auth": Spec(
        "NEXTBEST_AUTH",
        "auto",
        _auth_mode,
        "API keys on the HTTP API: `on` (keys required), `off` (no checks; `serve` refuses it "
        "unless bound to a loopback address: for the embedded demo only) or `auto` (`on` when "
        "NEXTBEST_API_KEYS is set; else `off` on loopback, and `serve` refuses to start on any "
        'other address). See the README, "Access control".',
    ),
    "api_keys": Spec(
        "NEXTBEST_API_KEYS",
        None,
        _nonempty,
        "The API keys file (YAML: each key's name, SHA-256 and scopes `collect`, `read`, "
        "`admin`; `nextbest keys new` makes one). Keys themselves are never stored.",
    ),
    "cors_origins": Spec(
        "NEXTBEST_CORS_ORIGINS",
        "",
        _origins,
        "Comma-separated origins (`https://shop.example`) allowed to call the collect, "
        "decision and recommendation routes from a browser (CORS, preflight included). "
        "Unset: no CORS headers.",
    ),
    "decision_log": Spec(
        "NEXTBEST_DECISION_LOG",
        None,
        _nonempty,
        "Where `serve` logs every decision: a JSONL file path, or `kafka` for the decisions "
        "topic. Unset: the decisions topic of the broker `serve` uses (NEXTBEST_KAFKA_BROKERS "
        "or the embedded one, which `run` reads: the feedback loop closes), else "
        "`NEXTBEST_HOME/decisions.jsonl`.",
    ),
    "topic_decisions": Spec(
        "NEXTBEST_TOPIC_DECISIONS",
        "decisions",
        _nonempty,
        "Topic of the decision log (one record per served decision, keyed by profile key).",
    ),
    "snapshot_interval_s": Spec(
        "NEXTBEST_SNAPSHOT_INTERVAL",
        "5",
        _int_in(1, 3600),
        "Seconds between Bytewax epochs, i.e. between recovery snapshots.",
    ),
    "process_id": Spec(
        "NEXTBEST_PROCESS_ID",
        None,
        _int_in(0, 1023),
        "This process's index (0, 1, ...) in a cluster of `run` processes (see Scaling out); "
        "with NEXTBEST_ADDRESSES. Unset: `run` is the only process.",
    ),
    "addresses": Spec(
        "NEXTBEST_ADDRESSES",
        None,
        _brokers,
        "Every `run` process's host:port for the Bytewax cluster, comma-separated, in process "
        "order (the same list on every process); with NEXTBEST_PROCESS_ID.",
    ),
    "workers_per_process": Spec(
        "NEXTBEST_WORKERS_PER_PROCESS",
        "1",
        _int_in(1, 64),
        "Bytewax worker threads per `run` process (the same on every process).",
    ),
    "recovery_partitions": Spec(
        "NEXTBEST_RECOVERY_PARTITIONS",
        None,
        _int_in(1, 1024),
        "Recovery partitions of a `run` cluster, fixed when it first starts: in an empty "
        "NEXTBEST_RECOVERY_DIR, process i creates the partitions j < this with j % processes == i."
        " Unset: one per process. Set it to the first count before adding processes (see "
        "Scaling out).",
    ),
    "write_interval_ms": Spec(
        "NEXTBEST_WRITE_INTERVAL",
        "100ms",
        duration_ms,
        "A changed profile is written to Redis at most once per this much wall time; changes in "
        "between are coalesced into the next write (bounds freshness; 0 writes every batch).",
    ),
    "churn_horizon_days": Spec(
        "NEXTBEST_CHURN_HORIZON_DAYS",
        "90",
        _int_in(1, 3650),
        "Churn model target: no purchase in the next this many days.",
    ),
    "propensity_horizon_days": Spec(
        "NEXTBEST_PROPENSITY_HORIZON_DAYS",
        "7",
        _int_in(1, 3650),
        "Propensity model target: at least one purchase in the next this many days.",
    ),
    "idle_snapshot_days": Spec(
        "NEXTBEST_IDLE_SNAPSHOT_DAYS",
        "7",
        _int_in(1, 3650),
        "Training snapshots: one per customer every this many days, as of the start (00:00 UTC) "
        "of that day, whether or not the customer has events (the days spread over customers).",
    ),
    "model_pipeline": Spec(
        "NEXTBEST_MODEL",
        "logreg",
        _model_name,
        "Online model pipeline: `logreg` (scaling + logistic regression), `hat` (Hoeffding "
        "adaptive tree) or `arf` (adaptive random forest).",
    ),
    "model_min_examples": Spec(
        "NEXTBEST_MODEL_MIN_EXAMPLES",
        "500",
        _int_in(0, 10**9),
        "Labelled examples a model must have learned (a tenth of them, at least 1, of each label) "
        "before its scores replace the prior.",
    ),
    "checkpoint_every": Spec(
        "NEXTBEST_CHECKPOINT_EVERY",
        "20000",
        _int_in(1, 10**9),
        "A model checkpoint is published to Redis every this many learned examples ...",
    ),
    "checkpoint_interval_ms": Spec(
        "NEXTBEST_CHECKPOINT_INTERVAL",
        "60s",
        duration_ms,
        "... or this much wall time after the last one, whichever comes first (and at the end "
        "of a replay). Publishing pauses the worker for a moment (the model is serialised on "
        "it): frequent checkpoints show in the freshness tail.",
    ),
    "dead_letter_max_bytes": Spec(
        "NEXTBEST_DEAD_LETTER_MAX_BYTES",
        "65536",
        _int_in(4096, 900_000),
        "Largest dead-letter record (bytes of JSON). A record over it keeps a prefix of the "
        "original bytes with `truncated`, `original_size` and the `sha256` of the whole; "
        "keep it well under the broker's message limit (1 MB by default).",
    ),
    "sink_retry_limit_ms": Spec(
        "NEXTBEST_SINK_RETRY_LIMIT",
        "0",
        duration_ms,
        "How long a sink keeps retrying a write that fails for a retriable reason (Redis or "
        "the broker unreachable, loading, read-only, out of memory) before the flow stops "
        "with an error; 0: retry until it succeeds (the flow stalls, input is held).",
    ),
    "reproject_rate": Spec(
        "NEXTBEST_REPROJECT_RATE",
        "10000",
        _int_in(1, 10**7),
        "Keys per second re-written to Redis when the dataflow finds that Redis lost its data "
        "(a restart without persistence, a failover to an empty replica, a FLUSHALL).",
    ),
    "max_future_ms": Spec(
        "NEXTBEST_MAX_FUTURE",
        "1d",
        duration_ms,
        "An event from Kafka whose `ts` is more than this ahead of its message's timestamp (when "
        "it was produced) is dead-lettered as `future_timestamp` (one such event would move the "
        "event-time watermark years ahead and expire every profile); 0 disables the check. "
        "Files carry no record time: `replay` trusts its history.",
    ),
    "kafka_offset_reset": Spec(
        "NEXTBEST_KAFKA_OFFSET_RESET",
        "earliest",
        _offset_reset,
        "What `run` does with a stored position outside its partition (topic deleted and "
        "recreated, retention passed it): `earliest` reads the partition from its start, "
        "`latest` from its end, `fail` stops with an error. Always logged and counted.",
    ),
    "topic_check_interval_ms": Spec(
        "NEXTBEST_TOPIC_CHECK_INTERVAL",
        "10s",
        duration_ms,
        "How often `run` checks its topics for added partitions or a recreated topic; on a "
        "change it stops the flow cleanly and starts it again over every partition.",
    ),
    "log_level": Spec("NEXTBEST_LOG_LEVEL", "INFO", _log_level, "Log level."),
    "consent": Spec(
        "NEXTBEST_CONSENT",
        "",
        _consent_defaults,
        "Each consent purpose's default before a person decides: comma-separated "
        "`purpose=granted|withdrawn` (purposes `analytics`, `personalization`, `marketing`); "
        'unset ones are granted. See the README, "Privacy" (e.g. `marketing=withdrawn` for '
        "opt-in marketing).",
    ),
    "traits": Spec(
        "NEXTBEST_TRAITS",
        None,
        _nonempty,
        "How profile traits are merged per trait: latest event time wins, or a source priority "
        '(YAML; format in the README, "Traits"). Unset: the shipped `features/traits.yaml`.',
    ),
    "identity_salt": Spec(
        "NEXTBEST_IDENTITY_SALT",
        None,
        _nonempty,
        "Secret salt of the identifier hashes (HMAC-SHA256 of normalised emails and phone "
        "numbers; at least 16 characters). Unset: a random salt generated once into "
        "`NEXTBEST_HOME/identity-salt` (mode 0600), with a warning. Changing it makes every "
        "stored identifier hash unmatchable. Never logged.",
    ),
}


@dataclass(frozen=True)
class Settings:
    """Validated settings; build with :meth:`from_env`."""

    home: str
    redis_url: str | None
    redis_cluster: bool
    kafka_brokers: str | None
    topic_clickstream: str
    topic_transactions: str
    topic_dead_letter: str
    topic_segment_events: str
    topic_delivery_dead_letter: str
    webhooks: str | None
    delivery_group: str
    topic_partitions: int
    metrics_port: int
    host: str
    port: int
    batch_size: int
    allowed_lateness_ms: int
    retention_days: int
    recovery_dir: str | None
    segments: str | None
    actions: str | None
    recommendations: str | None
    products: bool
    auth: str
    api_keys: str | None
    cors_origins: tuple[str, ...]
    decision_log: str | None
    topic_decisions: str
    snapshot_interval_s: int
    process_id: int | None
    addresses: str | None
    workers_per_process: int
    recovery_partitions: int | None
    write_interval_ms: int
    churn_horizon_days: int
    propensity_horizon_days: int
    idle_snapshot_days: int
    model_pipeline: str
    model_min_examples: int
    checkpoint_every: int
    checkpoint_interval_ms: int
    dead_letter_max_bytes: int
    sink_retry_limit_ms: int
    reproject_rate: int
    max_future_ms: int
    kafka_offset_reset: str
    topic_check_interval_ms: int
    log_level: str
    consent: ConsentDefaults
    traits: str | None
    identity_salt: str | None = field(repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; raise :class:`ConfigError` naming the variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            spec = SPECS[f.name]
            raw = env.get(spec.env)
            if raw is None or raw == "":
                raw = spec.default
            if raw is None:
                values[f.name] = None
                continue
            try:
                values[f.name] = spec.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{spec.env}: {exc}") from None
        settings = cls(**values)
        _ = settings.redis_client_url  # a cluster without a usable URL fails here
        return settings

    @property
    def redis_client_url(self) -> str | None:
        """The configured Redis URL as clients take it (:func:`features.redis_conn.connect`):
        its cluster form (``redis+cluster://``) when ``NEXTBEST_REDIS_CLUSTER`` is on; ``None``
        for the embedded Redis. A cluster with no URL, a ``unix://`` one or a database other
        than 0 raises :class:`ConfigError`.

        >>> Settings.from_env({"NEXTBEST_REDIS_URL": "redis://h:7000",
        ...                    "NEXTBEST_REDIS_CLUSTER": "on"}).redis_client_url
        'redis+cluster://h:7000'
        >>> Settings.from_env({"NEXTBEST_REDIS_CLUSTER": "on"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        nextbest.settings.ConfigError: NEXTBEST_REDIS_CLUSTER: needs NEXTBEST_REDIS_URL (a ...
        """
        url = self.redis_url
        if not self.redis_cluster:
            if url is not None and url.partition("://")[0].endswith("+cluster"):
                _cluster_db(url, "NEXTBEST_REDIS_URL")
            return url
        from features.redis_conn import cluster_url  # (redis' import: only when it is needed)

        if url is None:
            raise ConfigError("NEXTBEST_REDIS_CLUSTER: needs NEXTBEST_REDIS_URL (a node of the "
                              "cluster); the embedded Redis is one server")  # fmt: skip
        try:
            url = cluster_url(url)
        except ValueError as exc:
            raise ConfigError(f"NEXTBEST_REDIS_CLUSTER: {exc}") from None
        _cluster_db(url, "NEXTBEST_REDIS_CLUSTER")
        return url

    @property
    def home_path(self) -> Path:
        """``home`` as an absolute path (created on demand by the runtime)."""
        return Path(self.home).expanduser().resolve()

    @property
    def retention_ms(self) -> int:
        """Retention in milliseconds of event time."""
        return self.retention_days * 86_400_000

    @property
    def topics(self) -> list[str]:
        """The input topics (once each: both kinds of events may share one topic): the events
        and the decision log (whose outcomes train the action models)."""
        return list(
            dict.fromkeys([self.topic_clickstream, self.topic_transactions, self.topic_decisions])
        )

    def flow_config(self, **overrides: Any) -> FlowConfig:
        """The dataflow's configuration, derived from these settings; ``overrides`` replace
        fields (the CLI's flags, tests). The label horizons' lag follows the lateness: label
        ticks come at day granularity, behind the watermark's lateness.

        >>> cfg = Settings.from_env({}).flow_config(lateness_ms=1000)
        >>> cfg.lateness_ms, cfg.horizons.watermark_lag_ms, cfg.checkpoint_every
        (1000, 172801000, 20000)
        """
        from dataflows.config import FlowConfig
        from models.labels import DAY_MS, Horizons
        from models.targets import REGISTRY

        lateness = overrides.get("lateness_ms", self.allowed_lateness_ms)
        values: dict[str, Any] = {
            "lateness_ms": self.allowed_lateness_ms,
            "retention_ms": self.retention_ms,
            "recovery": self.recovery_dir is not None,
            "write_interval_ms": self.write_interval_ms,
            "horizons": Horizons.of_ms(
                lag=lateness + 2 * DAY_MS,
                **{t.name: getattr(self, t.horizon_setting) * DAY_MS for t in REGISTRY},
            ),
            "model_pipeline": self.model_pipeline,
            "model_min_examples": self.model_min_examples,
            "checkpoint_every": self.checkpoint_every,
            "checkpoint_interval_ms": self.checkpoint_interval_ms,
            "idle_snapshot_days": self.idle_snapshot_days,
            "reproject_rate": self.reproject_rate,
            "max_future_ms": self.max_future_ms,
            "products": self.products,
            "traits": _trait_policy(self.traits),
            "consent": self.consent,
        }
        if self.identity_salt is not None:
            values["ids"] = self.identity_hasher()
        values.update(overrides)
        return FlowConfig(**values)

    def identity_hasher(self) -> IdentifierHasher:
        """The hasher of identifiers: ``NEXTBEST_IDENTITY_SALT``, else the salt file under
        ``NEXTBEST_HOME`` (created once, mode 0600, with a warning)."""
        from schemas.identifiers import IdentifierHasher

        if self.identity_salt is not None:
            if len(self.identity_salt) < 16:
                raise ConfigError("NEXTBEST_IDENTITY_SALT: must be at least 16 characters")
            return IdentifierHasher(self.identity_salt.encode())
        return IdentifierHasher(_salt_file(self.home_path / SALT_FILE))

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed (for the CLI's flags and for tests)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return Settings(**d)


def _cluster_db(url: str, env: str) -> None:
    """A Redis Cluster has database 0 only.

    >>> _cluster_db("redis+cluster://h:7000/2", "X")
    Traceback (most recent call last):
    ...
    nextbest.settings.ConfigError: X: a Redis Cluster has database 0 only, got 2
    """
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    db = parse_qs(parts.query).get("db", [parts.path.strip("/") or "0"])[0]
    if db != "0":
        raise ConfigError(f"{env}: a Redis Cluster has database 0 only, got {db}")


def _trait_policy(path: str | None) -> Any:
    from features.trait_policy import TraitConfigError, load_policy

    try:
        return load_policy(path)
    except TraitConfigError as exc:
        raise ConfigError(f"NEXTBEST_TRAITS: {exc}") from None


def _salt_file(path: Path) -> bytes:
    """The salt in ``path``, generated (32 random bytes, hex, mode 0600) when missing."""
    import logging
    import secrets

    try:
        salt = path.read_bytes().strip()
    except FileNotFoundError:
        pass
    else:
        if len(salt) < 16:
            raise ConfigError(f"the identity salt file {path} is too short: restore it, or set "
                              "NEXTBEST_IDENTITY_SALT")  # fmt: skip
        return salt
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_hex(32).encode())
    try:
        os.link(tmp, path)  # atomic, and never over a salt another process made first
    except FileExistsError:
        return path.read_bytes().strip()
    finally:
        tmp.unlink()
    logging.getLogger(__name__).warning(
        "NEXTBEST_IDENTITY_SALT is unset: generated a random identity salt in %s; set "
        "NEXTBEST_IDENTITY_SALT in production (the same on every process)",
        path,
    )
    return path.read_bytes().strip()


def settings_table() -> str:
    """The README's configuration table (Markdown)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for spec in SPECS.values():
        default = "(unset)" if spec.default is None else f"`{spec.default}`"
        rows.append(f"| `{spec.env}` | {default} | {spec.doc} |")
    return "\n".join(rows)


def update_readme(path: Path) -> bool:
    """Rewrite the configuration table between the README's markers; True if it changed."""
    start, end = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
    text = path.read_text()
    i, j = text.index(start) + len(start), text.index(end)
    new = text[:i] + settings_table() + "\n" + text[j:]
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    update_readme(Path(__file__).resolve().parent.parent / "README.md")
