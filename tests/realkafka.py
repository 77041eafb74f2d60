"""A real Apache Kafka broker (KRaft, one node) for the tests the embedded broker cannot run.

tansu, the session's embedded broker, has no CreatePartitions. Apache Kafka's jars come from
Maven Central through ``mvn`` into a cache inside the venv (``.venv/kafka-<version>/jars``);
the broker then runs from them with the machine's ``java``, on free ports of 127.0.0.1, in a
temporary directory, for the duration of a ``with`` block.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nextbest.runtime import free_port

KAFKA_VERSION = "4.1.0"
#: the plugin is given in full so that mvn does not pick an old default (2.8)
COPY_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
#: what mvn says when it cannot reach the repository at all (a machine without that network)
UNREACHABLE = ("Unknown host", "UnknownHost", "Network is unreachable", "Connection refused",
               "Connect timed out", "connect timed out", "No route to host")  # fmt: skip

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>nextbest.tests</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


class KafkaUnavailable(RuntimeError):
    """The broker's jars cannot be had on this machine: Maven's repository is out of reach."""


def missing_tools() -> list[str]:
    """The programs the real broker needs that are not on PATH."""
    return [t for t in ("java", "mvn") if shutil.which(t) is None]


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """Where the jars of one Kafka version are cached: beside the venv's own packages."""
    return Path(sys.prefix) / f"kafka-{version}"


def resolve_jars(version: str = KAFKA_VERSION, home: Path | None = None) -> Path:
    """The directory of the broker's jars, downloaded by Maven the first time.

    A marker file is written last: a download cut short is done again. Raises
    :class:`KafkaUnavailable` when Maven cannot reach its repository, ``RuntimeError`` when it
    fails otherwise.
    """
    home = home or kafka_home(version)
    jars, marker = home / "jars", home / "complete"
    if marker.exists() and any(jars.glob("kafka_2.13-*.jar")):
        return jars
    shutil.rmtree(jars, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kafka-pom-") as tmp:
        (Path(tmp) / "pom.xml").write_text(POM.format(version=version))
        proc = subprocess.run(
            ["mvn", "-q", "-B", COPY_GOAL, f"-DoutputDirectory={jars}", "-DincludeScope=runtime"],
            cwd=tmp, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr)[-3000:]
        cause = next((line for line in out.splitlines() if any(s in line for s in UNREACHABLE)), "")
        if cause:
            hint = re.search(
                r"(Unknown host|No route to host|Connection refused)( [\w.-]+)?", cause
            )
            raise KafkaUnavailable(
                f"Maven cannot reach its repository to fetch Apache Kafka {version} "
                f"({hint.group(0) if hint else 'no network'}); REAL_KAFKA_BROKERS=host:port "
                f"runs these tests against a running broker\n{out}"
            )
        raise RuntimeError(f"mvn could not fetch Apache Kafka {version} (exit "
                           f"{proc.returncode}):\n{out}")  # fmt: skip
    if not any(jars.glob("kafka_2.13-*.jar")):
        raise RuntimeError(f"mvn ran but left no kafka_2.13 jar in {jars}")
    marker.write_text(f"{version}\n")
    return jars


def cluster_id() -> str:
    """A random cluster id as Kafka writes them (URL-safe base64 of 16 bytes, no padding)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def server_properties(workdir: Path, port: int, controller_port: int) -> str:
    """A single node that is broker and controller, sized for tests."""
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},"
        f"CONTROLLER://127.0.0.1:{controller_port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={workdir / 'data'}",
        "num.partitions=1",
        "default.replication.factor=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "num.network.threads=2",
        "num.io.threads=2",
        "log.flush.interval.ms=60000",
        "",
    ])  # fmt: skip


def _java(jars: Path, *args: str, heap: str = "512m") -> list[str]:
    return ["java", f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            "-cp", str(jars / "*"), *args]  # fmt: skip


def _answers(address: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        meta = AdminClient({"bootstrap.servers": address}).list_topics(timeout=2)
    except Exception:  # not up yet
        return False
    return bool(meta.brokers)


def _stop(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextmanager
def kafka_broker(jars: Path, workdir: Path, timeout: float = 60) -> Iterator[str]:
    """Start a one-node KRaft Kafka from ``jars`` in ``workdir``; yield its ``host:port``;
    stop it (SIGTERM, then SIGKILL) on the way out. Its output goes to ``workdir/kafka.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, controller_port = free_port(), free_port()
    while controller_port == port:
        controller_port = free_port()
    props = workdir / "server.properties"
    props.write_text(server_properties(workdir, port, controller_port))
    log = workdir / "kafka.log"
    env = {**os.environ, "LOG_DIR": str(workdir)}
    fmt = subprocess.run(
        _java(jars, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id(),
              "-c", str(props), heap="256m"),
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    if fmt.returncode != 0:
        raise RuntimeError(f"kafka-storage format failed (exit {fmt.returncode}):\n"
                           f"{fmt.stdout}{fmt.stderr}")  # fmt: skip
    address = f"127.0.0.1:{port}"
    with log.open("ab") as fh:
        cmd = _java(jars, "kafka.Kafka", str(props))
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(address):
            if proc.poll() is not None:
                raise RuntimeError(f"kafka exited {proc.returncode} while starting:\n"
                                   f"{log.read_text(errors='replace')[-5000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"kafka did not answer on {address} in {timeout:.0f} s:\n"
                                   f"{log.read_text(errors='replace')[-5000:]}")  # fmt: skip
            time.sleep(0.5)
        yield address
    finally:
        _stop(proc)
