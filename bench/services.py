"""The Redis server and Kafka-protocol broker one bench run starts, uses and stops."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from nextbest.runtime import free_port, start_broker, start_redis, stop_process, stop_redis

log = logging.getLogger("bench")

#: The repository root: the ``nextbest`` CLI subprocesses run from here.
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Services:
    """Addresses of the bench's own Redis and broker, and its scratch directory."""

    workdir: Path
    redis_url: str
    brokers: str

    def client(self) -> redis.Redis:
        """A new Redis client on the bench's Redis."""
        client: redis.Redis = redis.Redis.from_url(self.redis_url, socket_timeout=30)
        return client

    def cli_env(self, home: Path) -> dict[str, str]:
        """Environment for a ``python -m nextbest`` subprocess using these services.

        Inherited ``NEXTBEST_*`` variables are dropped, so the user's configuration cannot leak
        into the measurement; the metrics endpoint gets a free port (it stays enabled, as in
        production).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
        env.update(
            {
                "NEXTBEST_REDIS_URL": self.redis_url,
                "NEXTBEST_KAFKA_BROKERS": self.brokers,
                "NEXTBEST_HOME": str(home),
                "NEXTBEST_METRICS_PORT": str(free_port()),
            }
        )
        return env


def nextbest_command(*args: str) -> list[str]:
    """The command line of the ``nextbest`` CLI run with this interpreter."""
    return [sys.executable, "-m", "nextbest", *args]


@contextlib.contextmanager
def running_services(workdir: Path, broker: bool = True) -> Iterator[Services]:
    """Start Redis (and the broker) under ``workdir``; stop both on exit, whatever happens."""
    redis_proc, url = start_redis(workdir / "redis")
    try:
        client = redis.Redis.from_url(url, socket_timeout=10)
        try:
            # No background RDB saves while measuring (start_redis configures "save 60 1000").
            client.config_set("save", "")
        finally:
            client.close()
        broker_proc: subprocess.Popen[bytes] | None = None
        brokers = ""
        if broker:
            broker_proc, brokers = start_broker(workdir / "broker")
        try:
            yield Services(workdir=workdir, redis_url=url, brokers=brokers)
        finally:
            if broker_proc is not None:
                stop_process(broker_proc.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    broker_proc.wait(10)
    finally:
        with contextlib.suppress(redis.RedisError):
            client = redis.Redis.from_url(url, socket_timeout=30)
            try:
                client.flushall()  # nothing worth saving: make the shutdown save trivial
            finally:
                client.close()
        stop_redis(url, redis_proc.pid)
        if redis_proc.poll() is None:
            stop_process(redis_proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            redis_proc.wait(10)
