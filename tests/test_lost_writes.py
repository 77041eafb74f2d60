"""The Redis sink notices a server that came back with only some of the writes it acknowledged
(a restart from an older snapshot here; a failover to a replica behind, or an AOF missing its
last second, leave the same): the projection marker survives, the write sequence does not
(:class:`dataflows.reproject.WriteSequence`). A real redis-server, restarted from its own RDB
file; the end-to-end heal through `nextbest run` is in ``test_chaos.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
import redis

from dataflows.metrics import REGISTRY
from dataflows.records import WriteProduct
from dataflows.sinks import RedisSink, SinkOptions
from features.store_keys import product_key
from nextbest.runtime import start_redis, stop_redis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    workdir = tmp_path / "redis"
    proc, url = start_redis(workdir, persist=False)
    yield workdir
    client = redis.Redis.from_url(url)
    with suppress(redis.ConnectionError):
        stop_redis(url, int(client.info("server")["process_id"]))
    proc.wait(10)


def _reprojections() -> float:
    return REGISTRY.get_sample_value("nextbest_redis_reprojections_total") or 0.0


def _restart_from(workdir: Path, rdb: Path) -> str:
    """Kill the server and start it again on ``rdb`` (a snapshot taken earlier)."""
    url = f"unix://{workdir / 'redis.sock'}"
    pid = int(redis.Redis.from_url(url).info("server")["process_id"])
    os.kill(pid, signal.SIGKILL)
    shutil.copy(rdb, workdir / "dump.rdb")
    _, url2 = start_redis(workdir, persist=False)
    assert url2 == url
    return url


def test_a_server_back_from_an_older_snapshot_is_re_projected(server: Path, tmp_path: Path) -> None:
    url = f"unix://{server / 'redis.sock'}"
    client = redis.Redis.from_url(url)
    sink = RedisSink(url, SinkOptions(fallback_dir=tmp_path / "fallback", check_interval_s=3600))
    part = sink.build("out", 0, 1)  # (its watch checks once now, then hourly: not in the way)
    start = sink.reprojection.generation  # (a new Redis: the marker's request, loss=False)
    lost = _reprojections()
    try:
        part.write_batch([WriteProduct("p1", b"{}")])
        client.save()
        same = shutil.copy(server / "dump.rdb", tmp_path / "same.rdb")

        # back with everything it acknowledged: nothing to do
        url = _restart_from(server, same)
        part.write_batch([WriteProduct("p2", b"{}")])
        assert sink.reprojection.generation == start
        client.save()
        older = shutil.copy(server / "dump.rdb", tmp_path / "older.rdb")
        part.write_batch([WriteProduct("p3", b"{}")])

        # back without p3, which it had acknowledged: the next batch's swap tells
        url = _restart_from(server, older)
        assert client.exists("nb:projection") and not client.exists(product_key("p3"))
        part.write_batch([WriteProduct("p4", b"{}")])
        assert sink.reprojection.generation == start + 1
        assert _reprojections() == lost + 1
    finally:
        part.close()
        client.close()
