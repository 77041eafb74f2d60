"""End to end through what a user touches: the CLI commands and the HTTP API, real services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from nextbest.runtime import free_port
from schemas import Event, decode_event
from tests.conftest import REPO, metric_sum, nextbest_cli

AS_OF = "2026-03-01T00:00:00Z"


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    full.update(env)
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "nextbest", *args], env=full, stdout=fh, stderr=fh, cwd=REPO
        )


def _stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"did not stop on SIGTERM:\n{log.read_text()}") from None


def _first_login_device(path: Path) -> str:
    for line in path.read_bytes().splitlines():
        ev = decode_event(line)
        if isinstance(ev, Event) and ev.type in ("login", "signup") and ev.anonymous_id:
            return ev.anonymous_id
    raise AssertionError("no login in the simulated file")


def _first_customers(path: Path, n: int) -> list[str]:
    seen: list[str] = []
    for line in path.read_text().splitlines():
        try:
            cid = json.loads(line).get("customer_id")
        except (ValueError, AttributeError):
            continue
        if isinstance(cid, str) and cid not in seen:
            seen.append(cid)
            if len(seen) == n:
                break
    return seen


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "events.jsonl"
    nextbest_cli(
        "simulate",
        "--customers",
        "300",
        "--days",
        "20",
        "--seed",
        "3",
        "--bad-rate",
        "0.01",
        "--out",
        str(out),
        env={},
    )
    return out


def test_replay_then_profile_cli_equals_http_embedded(sim_file: Path, tmp_path: Path) -> None:
    """Embedded Redis shared across commands: replay, then profile (CLI) == profile (HTTP)."""
    home = tmp_path / "home"
    env = {"NEXTBEST_HOME": str(home), "NEXTBEST_METRICS_PORT": "0"}
    out = nextbest_cli("replay", str(sim_file), "--json", env=env)
    summary = json.loads(out.stdout)
    assert summary["read"] == summary["accepted"] + summary["dead_lettered"]
    assert summary["read"] == len(sim_file.read_bytes().splitlines())
    assert summary["dead_lettered"] > 0 and summary["customers"] > 0

    # Every rejected line is in the dead-letter output, with its reason and position.
    dead = [json.loads(x) for x in Path(summary["dead_letter_file"]).read_text().splitlines()]
    assert len(dead) == summary["dead_lettered"]
    assert Counter(d["reason"] for d in dead) == Counter(summary["dead_lettered_by_reason"])
    lines = sim_file.read_text().splitlines()
    for d in dead:
        lineno = int(d["position"].rsplit(":", 1)[1])
        assert lines[lineno - 1] == d["data"]

    cid = _first_customers(sim_file, 1)[0]
    cli_doc = json.loads(nextbest_cli("profile", cid, "--as-of", AS_OF, env=env).stdout)
    assert cli_doc["customer_id"] == cid and cli_doc["events_total"] > 0

    port = free_port()
    log = tmp_path / "serve.log"
    server = _spawn(["serve", "--port", str(port)], env, log)
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz")
        r = httpx.get(
            f"http://127.0.0.1:{port}/v1/customers/{cid}/profile", params={"as_of": AS_OF}
        )
        assert r.status_code == 200
        assert r.json() == cli_doc
        # A visitor: the device of a login resolves to its customer, on the CLI and over HTTP.
        anon = _first_login_device(sim_file)
        cli_visitor = json.loads(
            nextbest_cli("profile", "--anonymous-id", anon, "--as-of", AS_OF, env=env).stdout
        )
        assert cli_visitor["resolved_from_anonymous_id"] == anon
        assert cli_visitor["kind"] == "customer" and anon in {
            i["anonymous_id"] for i in cli_visitor["identities"]
        }
        r = httpx.get(
            f"http://127.0.0.1:{port}/v1/visitors/{anon}/profile", params={"as_of": AS_OF}
        )
        assert r.status_code == 200 and r.json() == cli_visitor
        missing = httpx.get(f"http://127.0.0.1:{port}/v1/customers/nobody/profile")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    finally:
        assert _stop(server, log) == 0, log.read_text()

    # Nothing is left running: the last command out stopped the embedded Redis (after saving).
    assert not (home / "redis" / "state.json").exists()
    assert (home / "redis" / "dump.rdb").exists()
    missing_cli = nextbest_cli("profile", "nobody", env=env, check=False)
    assert missing_cli.returncode == 1 and "no profile" in missing_cli.stderr


def test_kafka_simulate_run_serve(
    kafka_brokers: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """simulate --kafka -> run consumes the broker -> the profile is visible over HTTP."""
    topics = {
        "NEXTBEST_TOPIC_CLICKSTREAM": "t-click",
        "NEXTBEST_TOPIC_TRANSACTIONS": "t-tx",
        "NEXTBEST_TOPIC_DEAD_LETTER": "t-dead",
    }
    env = {
        "NEXTBEST_KAFKA_BROKERS": kafka_brokers,
        "NEXTBEST_REDIS_URL": redis_url,
        "NEXTBEST_HOME": str(tmp_path / "home"),
        "NEXTBEST_METRICS_PORT": "0",
        **topics,
    }
    file_copy = tmp_path / "same.jsonl"
    sim = ["--customers", "120", "--days", "10", "--seed", "5", "--bad-rate", "0.02"]
    nextbest_cli("simulate", *sim, "--kafka", env=env)
    nextbest_cli("simulate", *sim, "--out", str(file_copy), env=env)
    n_lines = len(file_copy.read_bytes().splitlines())

    run_log = tmp_path / "run.log"
    metrics_port = free_port()
    runner = _spawn(
        ["run", "--json", "--quiet"], {**env, "NEXTBEST_METRICS_PORT": str(metrics_port)}, run_log
    )
    port = free_port()
    serve_log = tmp_path / "serve.log"
    server = _spawn(["serve", "--port", str(port)], env, serve_log)
    try:
        cid = _first_customers(file_copy, 1)[0]
        _wait_http(f"http://127.0.0.1:{port}/readyz")
        url = f"http://127.0.0.1:{port}/v1/customers/{cid}/profile"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = httpx.get(url)
            if r.status_code == 200:
                break
            time.sleep(0.2)
        assert r.status_code == 200, run_log.read_text()
        assert r.json()["customer_id"] == cid
        # The dataflow's metrics show when everything was read; then SIGTERM stops it cleanly.
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and metric_sum(metrics_port, "nextbest_events_read_total") < n_lines
        ):
            time.sleep(0.3)
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert 'nextbest_events_dead_lettered_total{reason="' in text
        assert cid not in text  # never an id as a label value
    finally:
        rc = _stop(runner, run_log)
        assert _stop(server, serve_log) == 0
    assert rc == 0, run_log.read_text()
    summary = json.loads(run_log.read_text().strip().splitlines()[-1])
    assert summary["read"] == n_lines
    assert summary["read"] == summary["accepted"] + summary["dead_lettered"]
    # The rejects went to the dead-letter topic, with their reasons.
    dead = _read_topic(kafka_brokers, "t-dead")
    assert len(dead) == summary["dead_lettered"]
    assert Counter(d["reason"] for d in dead) == Counter(summary["dead_lettered_by_reason"])
    assert all(d["position"].startswith("kafka:t-") for d in dead)


def _customers_of_valid_events(path: Path) -> set[str]:
    out = set()
    for line in path.read_bytes().splitlines():
        ev = decode_event(line)
        if isinstance(ev, Event) and ev.customer_id is not None:
            out.add(ev.customer_id)
    return out


def _read_topic(brokers: str, topic: str) -> list[dict[str, Any]]:
    """Every message of a topic, decoded as JSON (reads until 3 s of silence)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": "reader", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[dict[str, Any]] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3:
            for m in c.consume(500, timeout=0.5):
                if m.error() is None:
                    out.append(json.loads(m.value()))
                    quiet_since = time.monotonic()
        return out
    finally:
        c.close()


@pytest.mark.parametrize(
    "args",
    [
        ["replay"],
        ["replay", "--nope", "x"],
        ["profile"],
        ["simulate", "--customers", "-3", "--out", "x"],
        ["simulate", "--days", "ten", "--out", "x"],
        ["serve", "--port", "99999"],
        ["demo", "--events", "0"],
        ["frobnicate"],
    ],
)
def test_wrong_arguments_one_line_exit_2(args: list[str], tmp_path: Path) -> None:
    out = nextbest_cli(*args, env={"NEXTBEST_HOME": str(tmp_path)}, check=False)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "/no/such/file.jsonl"],
        ["profile", "x", "--as-of", "yesterday"],
        ["simulate", "--days", "5", "--holdout-days", "5", "--out", "x"],
        ["simulate", "--bad-rate", "2", "--out", "x"],
        ["simulate"],
    ],
)
def test_wrong_values_one_line_exit_2(args: list[str], tmp_path: Path) -> None:
    out = nextbest_cli(*args, env={"NEXTBEST_HOME": str(tmp_path)}, check=False)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("NEXTBEST_METRICS_PORT", "abc"),
        ("NEXTBEST_REDIS_URL", "http://x"),
        ("NEXTBEST_KAFKA_BROKERS", "nohostport"),
        ("NEXTBEST_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_config_fails_at_start_naming_the_field(var: str, value: str, tmp_path: Path) -> None:
    out = nextbest_cli(
        "profile", "x", env={var: value, "NEXTBEST_HOME": str(tmp_path)}, check=False
    )
    assert out.returncode == 2
    assert var in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args", [["profile", "c-1"], ["decide", "c-1"], ["recommend", "c-1"],
                                  ["segments"], ["export"]])  # fmt: skip
def test_an_unreachable_redis_is_one_line_exit_3(args: list[str], tmp_path: Path) -> None:
    env = {"NEXTBEST_HOME": str(tmp_path), "NEXTBEST_REDIS_URL": f"redis://127.0.0.1:{free_port()}"}
    proc = nextbest_cli(*args, env=env, check=False, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("nextbest: Redis unreachable (NEXTBEST_REDIS_URL)"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["replay", "run", "serve", "profile", "simulate", "demo"])
def test_every_command_has_help(command: str) -> None:
    out = nextbest_cli(command, "--help", env={})
    assert out.stdout.startswith(f"usage: nextbest {command}")


def test_demo_bounded(tmp_path: Path) -> None:
    port = free_port()
    out = nextbest_cli(
        "demo",
        "--events",
        "3000",
        "--port",
        str(port),
        env={"NEXTBEST_HOME": str(tmp_path), "NEXTBEST_METRICS_PORT": "0"},
    )
    assert "read 3,000 events" in out.stdout
    # bounded: the API stopped with the demo, so no curl lines point at it
    assert "curl" not in out.stdout
    assert not (tmp_path / "redis" / "state.json").exists()
    assert (tmp_path / "segment-events.jsonl").stat().st_size > 0


def test_demo_stops_when_its_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"NEXTBEST_HOME": str(tmp_path), "NEXTBEST_METRICS_PORT": "0"}
        out = nextbest_cli("demo", "--events", "100", "--port", str(port), env=env, check=False)
    assert out.returncode == 2
    assert f"port {port} (API) is already in use" in out.stderr


def _readme() -> str:
    return (REPO / "README.md").read_text()


def test_readme_documents_every_setting_and_command() -> None:
    from nextbest.settings import settings_table

    text = _readme()
    assert settings_table() in text, "README's configuration table is stale"
    for command in ["replay", "run", "serve", "profile", "simulate", "demo"]:
        assert f"`nextbest {command}" in text
    assert "make demo" in text and "make test" in text
