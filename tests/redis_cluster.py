"""A real Redis Cluster for tests: three masters from the same ``redis-server`` binary as the
embedded runtime, each in its own directory with its own cluster config file, the 16384 slots
assigned here, joined with ``CLUSTER MEET``."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from nextbest.runtime import free_port, redis_server_binary

SLOTS = 16384


@dataclass
class Cluster:
    """A started cluster: its masters' ports (in slot order) and processes."""

    ports: list[int]
    procs: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        """A node's plain URL (what NEXTBEST_REDIS_URL holds with NEXTBEST_REDIS_CLUSTER=1)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node(self, i: int) -> redis.Redis:
        """A plain client of master ``i`` (its own keys only)."""
        return redis.Redis(host="127.0.0.1", port=self.ports[i], socket_timeout=5)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(n: int) -> list[int]:
    """``n`` distinct free ports whose cluster bus ports (port + 10000) are free too."""
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in out and p + 10000 <= 65535 and _bindable(p + 10000):
            out.append(p)
    return out


def _wait(check: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise AssertionError(f"Redis Cluster: timed out waiting for {what}")


def _version(client: redis.Redis) -> tuple[int, ...]:
    raw = str(client.info("server")["redis_version"])
    return tuple(int(x) for x in raw.split(".")[:2])


def start_cluster(base: Path, masters: int = 3) -> Cluster:
    """Start ``masters`` cluster-enabled servers under ``base``, give each a contiguous share of
    the slots, join them and wait until every one says ``cluster_state:ok``."""
    binary = redis_server_binary()
    ports = _ports(masters)
    procs: list[subprocess.Popen[bytes]] = []
    for port in ports:
        d = base / f"node-{port}"
        d.mkdir(parents=True)
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout", "2000",
                "--dir", str(d), "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--logfile", str(d / "redis.log")]  # fmt: skip
        procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      start_new_session=True))  # fmt: skip
    cluster = Cluster(ports, procs)
    try:
        nodes = [cluster.node(i) for i in range(masters)]
        for n in nodes:
            _wait(n.ping, "a node to answer")
        bounds = [SLOTS * i // masters for i in range(masters + 1)]
        for n, lo, hi in zip(nodes, bounds, bounds[1:], strict=False):
            if _version(n) >= (7, 0):
                n.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi - 1)
            else:
                n.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi))
        for n in nodes[1:]:
            n.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])

        def ok() -> bool:
            for n in nodes:
                info = n.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text or f"cluster_known_nodes:{masters}" not in text:
                    return False
            return True

        _wait(ok, "cluster_state:ok on every node")
        for n in nodes:
            n.close()
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    """Stop every node (nothing is kept)."""
    for proc in cluster.procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in cluster.procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_cluster(base: Path) -> Iterator[Cluster]:
    """A cluster for the duration of the block."""
    cluster = start_cluster(base)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
