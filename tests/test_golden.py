"""Golden output: a fixed replay gives the recorded Redis bytes, dead letters and checkpoints.

The redesign of the house (issue 9) must not change behaviour. This replays a fixed simulated
history — a few thousand customers, malformed lines, late and duplicate events, identity links —
through `nextbest replay` and compares digests of every Redis key and value (the random
projection marker excepted), of the dead letters (without their wall-clock `rejected_at_ms`) and
of the model checkpoints with the digests in ``tests/golden/replay.json``, recorded from main
after the reliability issue. ``NEXTBEST_GOLDEN_RECORD=1`` writes that file again: only when a
change of bytes is intended, and say which and why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.conftest import REPO, nextbest_cli

pytestmark = pytest.mark.slow

GOLDEN = REPO / "tests" / "golden" / "replay.json"


def history(path: Path) -> int:
    """The fixed history: simulated lines plus, deterministically, duplicates (every 97th valid
    line again 40 lines later) and late events (every 89th valid line moved 3,000 lines later).
    Returns the number of lines."""
    from nextbest.simulator import SimConfig, generate
    from schemas import DecodeError, decode_event

    lines = list(generate(SimConfig(customers=2500, days=45, seed=23, bad_rate=0.01)))
    out: list[bytes] = []
    moved: dict[int, list[bytes]] = {}
    dupes: dict[int, list[bytes]] = {}
    valid = 0
    for i, line in enumerate(lines):
        out.extend(moved.pop(i, []))
        out.extend(dupes.pop(i, []))
        if isinstance(decode_event(line), DecodeError):
            out.append(line)
            continue
        valid += 1
        if valid % 89 == 0:
            moved.setdefault(i + 3000, []).append(line)
            continue
        out.append(line)
        if valid % 97 == 0:
            dupes.setdefault(i + 40, []).append(line)
    for rest in (*moved.values(), *dupes.values()):
        out.extend(rest)
    path.write_bytes(b"\n".join(out) + b"\n")
    return len(out)


def _sha(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big") + p)
    return h.hexdigest()


def digests(
    client: redis.Redis, dead_letter: Path, segment_events: Path | None = None
) -> dict[str, Any]:
    """Digests of every key and value, of the dead letters and of each model checkpoint."""
    keys = sorted(k for k in client.scan_iter(count=1000) if not k.startswith(b"nb:projection"))
    parts: list[bytes] = []
    checkpoints: dict[str, str] = {}
    for key in keys:
        kind = client.type(key)
        if kind == b"hash":
            fields = sorted(client.hgetall(key).items())
            parts.append(key + b"\0" + b"\0".join(f + b"=" + v for f, v in fields))
        elif kind == b"zset":  # a segment's membership index
            members = client.zrange(key, 0, -1, withscores=True)
            parts.append(key + b"\0" + b"\0".join(m + b"=%d" % s for m, s in members))
        elif kind == b"set":  # a customer's linked devices
            parts.append(key + b"\0" + b"\0".join(sorted(client.smembers(key))))
        else:
            value = client.get(key) or b""
            parts.append(key + b"\0" + value)
            if key.startswith(b"nb:{model:"):
                checkpoints[key.decode()] = hashlib.sha256(value).hexdigest()
    dead = []
    for line in dead_letter.read_bytes().splitlines():
        doc = orjson.loads(line)
        doc.pop("rejected_at_ms")
        doc["position"] = doc["position"].replace(str(dead_letter.parent) + "/", "")
        dead.append(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    transitions = []
    if segment_events is not None and segment_events.exists():
        for line in segment_events.read_bytes().splitlines():
            doc = orjson.loads(line)
            doc.pop("emitted_at")
            transitions.append(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    return {
        "segment_events": len(transitions),
        "segment_events_sha256": _sha(transitions),
        "keys": len(keys),
        "redis": _sha(parts),
        "dead_letters": len(dead),
        "dead_letters_sha256": _sha(sorted(dead)),
        "checkpoints": checkpoints,
    }


def test_replay_output_equals_the_recorded_digests(redis_url: str, tmp_path: Path) -> None:
    src = tmp_path / "history.jsonl"
    n = history(src)
    url = f"{redis_url}?db=11"
    client = redis.Redis.from_url(url)
    client.flushdb()
    dead = tmp_path / "dead.jsonl"
    env = {"NEXTBEST_REDIS_URL": url, "NEXTBEST_HOME": str(tmp_path / "home"),
           "NEXTBEST_METRICS_PORT": "0",
           # checkpoints by count and at the end only: wall time must not add publications
           "NEXTBEST_CHECKPOINT_INTERVAL": "100000d"}  # fmt: skip
    out = nextbest_cli("replay", str(src), "--json", "--dead-letter", str(dead), env=env,
                       timeout=600)  # fmt: skip
    summary = orjson.loads(out.stdout)
    events = tmp_path / "home" / "segment-events.jsonl"
    got = {"lines": n, "read": summary["read"], **digests(client, dead, events)}
    client.flushdb()
    if os.environ.get("NEXTBEST_GOLDEN_RECORD") == "1":
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert got == expected
