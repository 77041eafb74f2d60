"""``nextbest serve``: serve the HTTP API until stopped."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from nextbest.commands.common import UsageError, port_number, sigterm_as_interrupt
from nextbest.settings import Settings

if TYPE_CHECKING:
    from serving.decision_log import DecisionLog

log = logging.getLogger(__name__)

#: How long ``serve`` waits for the broker when it checks the topics at start (seconds).
TOPICS_TIMEOUT = 5.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("serve", help="serve the HTTP API")
    s.add_argument("--host", help="listen address (default: $NEXTBEST_HOST)")
    s.add_argument("--port", type=port_number, help="listen port (default: $NEXTBEST_PORT)")
    s.set_defaults(func=cmd_serve)


@contextlib.contextmanager
def collect_brokers(settings: Settings) -> Iterator[tuple[str | None, str | None]]:
    """The brokers ``POST /v1/events`` writes to, for the block: ``NEXTBEST_KAFKA_BROKERS``, or
    the embedded broker shared with ``run`` (started if needed), with the input and dead-letter
    topics created when missing.

    Yields ``(brokers, None)``, or ``(None, why)`` when there is no usable broker: serving
    profiles does not need one, so ``serve`` goes on and the route answers 503
    ``collect_disabled`` with ``why``.
    """
    from nextbest.runtime import RuntimeStartError, ensure_topics, kafka_brokers

    with contextlib.ExitStack() as stack:
        brokers: str | None = None
        why: str | None = None
        try:
            brokers = stack.enter_context(kafka_brokers(settings))
        except (RuntimeStartError, OSError) as exc:
            why = f"the embedded Kafka broker could not be started: {exc}"
            log.warning("serve: POST /v1/events disabled: %s", why)
        if brokers is not None:
            topics = [*settings.topics, settings.topic_dead_letter]
            try:
                ensure_topics(brokers, topics, settings.topic_partitions, timeout=TOPICS_TIMEOUT)
            except Exception as exc:  # unreachable broker (KafkaException), refused creation
                # The producer reconnects by itself; a write to a missing topic answers 503.
                log.warning("serve: cannot check the topics on %s (%s); going on", brokers, exc)
        yield brokers, why


def decision_log(settings: Settings, brokers: str | None) -> DecisionLog:
    """Where served decisions go (``NEXTBEST_DECISION_LOG``): a JSONL file, or the decisions
    topic (``kafka``; the default when ``serve`` has a broker, external or embedded: ``run``
    reads the topic, so outcomes train the action models)."""
    from serving.decision_log import JsonlDecisionLog, KafkaDecisionLog

    spec = settings.decision_log
    if spec == "kafka" or (spec is None and brokers is not None):
        if brokers is None:
            raise UsageError("NEXTBEST_DECISION_LOG=kafka: no Kafka broker is available")
        return KafkaDecisionLog(brokers, settings.topic_decisions)
    return JsonlDecisionLog(Path(spec) if spec else settings.home_path / "decisions.jsonl")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the HTTP API until stopped."""
    from nextbest.commands.decide import actions_catalog
    from nextbest.commands.segments import definitions
    from nextbest.runtime import redis_url
    from serving.app import run_server
    from serving.auth import AuthConfigError, auth_for

    definitions(settings)  # a bad segments file stops here (exit 2), before anything starts
    actions_catalog(settings)  # so does a bad action catalogue
    host = args.host or settings.host
    port = args.port or settings.port
    try:  # and so do missing or bad API keys (never serve an open API beyond loopback)
        auth = auth_for(settings.auth, settings.api_keys, host)
    except AuthConfigError as exc:
        raise UsageError(f"config error: {exc}") from None
    if auth is None:
        off = "no NEXTBEST_API_KEYS" if settings.api_keys is None else "keys ignored"
        log.warning("serve: API keys off (NEXTBEST_AUTH=%s, %s): loopback only", settings.auth, off)
    else:
        log.info("serve: API keys on (%d keys)", len(auth.keys))
    with (
        redis_url(settings) as url,
        collect_brokers(settings) as (brokers, why),
        sigterm_as_interrupt(),
        contextlib.suppress(KeyboardInterrupt),
    ):
        dlog = decision_log(settings, brokers)
        run_server(
            settings, url, host, port, brokers, collect_disabled=why, decision_log=dlog, auth=auth
        )
    return 0
