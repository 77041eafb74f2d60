"""The module-level flow (``python -m bytewax.run nextbest.flow:flow``) against real services."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from nextbest.runtime import ensure_topics
from tests.chaos import produce
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    env.update(extra)
    return env


def test_bytewax_run_of_the_module_flow(kafka_brokers: str, redis_url: str, tmp_path: Path) -> None:
    topic = "module-flow-in"
    ensure_topics(kafka_brokers, [topic, "module-flow-dead"], 2)
    t0 = 1_767_225_600_000
    produce(kafka_brokers, topic, [
        orjson.dumps({"event_id": f"m{i}", "type": "page_view", "ts": t0 + i * 1000,
                      "customer_id": f"m{i % 5}"}) for i in range(50)
    ] + [b"not json"])  # fmt: skip
    url = f"{redis_url}?db=12"
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = _env({"NEXTBEST_KAFKA_BROKERS": kafka_brokers, "NEXTBEST_REDIS_URL": url,
                "NEXTBEST_TOPIC_CLICKSTREAM": topic, "NEXTBEST_TOPIC_TRANSACTIONS": topic,
                "NEXTBEST_TOPIC_DEAD_LETTER": "module-flow-dead",
                "NEXTBEST_HOME": str(tmp_path / "home"), "NEXTBEST_METRICS_PORT": "0"})  # fmt: skip
    log = tmp_path / "run.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "nextbest.flow:flow"],
                                env=env, stdout=fh, stderr=fh, cwd=REPO)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        keys = [f"nb:{{c:m{c}}}:profile" for c in range(5)]
        while time.monotonic() < deadline:
            if all(client.hget(k, "ne") == b"10" for k in keys):
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        else:
            raise AssertionError(log.read_text()[-3000:])
    finally:
        proc.kill()
        proc.wait(30)


def test_the_module_flow_needs_external_services(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", "import nextbest.flow"], env=_env({}),
                         capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert out.returncode != 0
    assert "NEXTBEST_REDIS_URL" in out.stderr and "NEXTBEST_KAFKA_BROKERS" in out.stderr
