"""``nextbest demo`` lives now: the history ends at the wall clock, then live events flow, segment
transitions are printed as they happen, and a dead Redis is said, not ignored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from nextbest.runtime import free_port
from schemas.events import parse_ts
from tests.conftest import REPO


def _spawn(home: Path, port: int, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    env.update(NEXTBEST_HOME=str(home), NEXTBEST_METRICS_PORT="0")
    log = home / "demo.log"
    home.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nextbest", "demo", "--customers", "120", "--rate", "200",
             "--port", str(port), *extra],
            env=env, stdout=fh, stderr=fh, cwd=REPO,
        )  # fmt: skip
    return proc, log


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the demo exited ({proc.returncode}):\n{log.read_text()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no {text!r} within {timeout}s:\n{log.read_text()}")


def test_the_demo_shop_is_live_now(tmp_path: Path) -> None:
    started_ms = int(time.time() * 1000)
    port = free_port()
    proc, log = _spawn(tmp_path, port)
    try:
        _wait_for(log, "the shop is open", proc)
        base = f"http://127.0.0.1:{port}"
        sizes = httpx.get(f"{base}/v1/segments", timeout=5)
        assert sizes.status_code == 200 and sizes.json()["segments"]
        # the printed next-best-action curl answers an explained decision for a live customer
        (url,) = [w for w in log.read_text().split() if w.endswith("/next-best-action")]
        for _ in range(3):  # the demo's flow shares the cores: 0.1 s of Redis can be missed
            nba = httpx.get(url, timeout=5)
            assert nba.status_code == 200, nba.text
            decision = nba.json()
            if decision.get("reason") != "redis_timeout":
                break
        assert decision["degraded"] is False and decision["freshness"]["profile"] == "stored"
        served = decision["actions"][0]
        assert served["served"] and served["explanation"]["arbitration"].startswith("priority")
        assert 0 < served["probability"] <= 1 and served["value"] >= 0
        newest = parse_ts(decision["freshness"]["newest_event"]) or 0
        assert newest >= started_ms - 120 * 86_400_000  # a profile of the demo's history
        # an event posted to the demo's API goes through the broker into the demo's flow
        posted = {"event_id": "posted-1", "type": "page_view", "ts": int(time.time() * 1000),
                  "customer_id": "posted-by-test"}  # fmt: skip
        answer = httpx.post(f"{base}/v1/events", json=[posted], timeout=10)
        assert answer.status_code == 200 and answer.json()["accepted"] == 1, answer.text
        deadline = time.monotonic() + 30
        while (
            httpx.get(f"{base}/v1/customers/posted-by-test/profile", timeout=5).status_code != 200
        ):
            assert time.monotonic() < deadline, "the posted event never reached the profile"
            time.sleep(0.3)
        # live events keep coming: the profiles' newest events follow the wall clock
        _wait_for(log, "+ ", proc, timeout=60)  # a transition line printed live
        _wait_for(log, "  > ", proc, timeout=30)  # a live customer's decision printed
        # the printed recommendations curl of the demo's visitor follows the products it views
        (reco,) = [w.strip("'") for w in log.read_text().split() if "/recommendations?" in w]
        first = httpx.get(reco, timeout=5).json()
        _wait_for(log, "  * ", proc, timeout=30)  # the visitor viewed a product
        viewed = [ln.split()[4] for ln in log.read_text().splitlines() if ln.startswith("  * ")]
        deadline = time.monotonic() + 20
        now = httpx.get(reco, timeout=5).json()
        while now["seeds"][:1] != viewed[-1:] and time.monotonic() < deadline:
            time.sleep(0.5)
            viewed = [ln.split()[4] for ln in log.read_text().splitlines() if ln.startswith("  * ")]
            now = httpx.get(reco, timeout=5).json()
        assert now["personal"] and now["seeds"][0] == viewed[-1], (now, viewed)
        assert now["items"] and now["items"] != first["items"]
        assert viewed[-1] not in {i["product_id"] for i in now["items"]}  # the page it is on
        time.sleep(3)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    out = log.read_text()
    assert rc == 0, out
    assert "curl -s" in out and "Traceback" not in out and "panicked" not in out
    assert "read " in out  # the summary after a clean stop
    transitions = [
        orjson.loads(line) for line in (tmp_path / "segment-events.jsonl").read_bytes().split(b"\n")
        if line
    ]  # fmt: skip
    live = [t for t in transitions if (parse_ts(t["at"]) or 0) >= started_ms]
    assert live, "no transition at a time after the demo started"
    # and they were printed as they happened
    printed = {(t["segment"], t["customer_id"]) for t in live}
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("  ") and " + " in ln]
    assert any((parts[3], parts[4]) in printed for parts in lines if len(parts) >= 5), out


def test_the_demo_says_when_its_redis_dies(tmp_path: Path) -> None:
    proc, log = _spawn(tmp_path, free_port())
    try:
        _wait_for(log, "the shop is open", proc)
        pid = json.loads((tmp_path / "redis" / "state.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 1, out
    assert "stopped answering" in out and "stopping the demo" in out
    assert "Traceback" not in out
    assert not (tmp_path / "broker" / "state.json").exists()  # its broker stopped too
