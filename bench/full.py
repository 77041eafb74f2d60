"""(b) The full profile flow: ``python -m nextbest replay FILE --json`` against the bench Redis.

The same run with ``--no-models`` (profiles only: no training snapshots, no model learning) is
the reference of the models comparison: models on / models off, same file, same Redis.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.services import REPO, Services, nextbest_command


class BenchError(RuntimeError):
    """A section could not be measured (the message says why)."""


def tail(text: str, lines: int = 15) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.strip().splitlines()[-lines:])


def last_json_object(stdout: str) -> dict[str, Any]:
    """The last line of ``stdout`` that is a JSON object.

    >>> last_json_object('progress\\n{"read": 3}\\n')
    {'read': 3}
    """
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    raise BenchError(f"no JSON summary on stdout:\n{tail(stdout)}")


def run_replay(
    services: Services,
    path: Path,
    lines: int,
    timeout: float = 3600,
    *,
    models: bool = True,
    products: bool = True,
) -> dict[str, Any]:
    """Flush Redis, replay ``path`` through the CLI, and time it from outside and inside.

    ``models=False`` adds ``--no-models`` (the flow without the churn/propensity models);
    ``products=False`` sets ``NEXTBEST_PRODUCTS=off`` (no product knowledge).
    """
    client = services.client()
    try:
        client.flushall()
    finally:
        client.close()
    home = services.workdir / "replay-home"
    home.mkdir(parents=True, exist_ok=True)
    extra = [] if models else ["--no-models"]
    cmd = nextbest_command(
        "replay", str(path), "--json", *extra, "--dead-letter", str(home / "dead-letter.jsonl")
    )
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            env={**services.cli_env(home), "NEXTBEST_PRODUCTS": "on" if products else "off"},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"replay did not finish within {timeout:.0f} s") from exc
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"replay exited with code {proc.returncode}:\n{tail(proc.stderr)}")
    summary = last_json_object(proc.stdout)
    reported = float(summary.get("events_per_s", 0.0))
    return {
        "wall_seconds": round(wall, 3),
        "events_per_s_wall": round(lines / wall, 1) if wall > 0 else 0.0,
        "reported_seconds": summary.get("seconds"),
        "events_per_s_reported": reported,
        "read": summary.get("read"),
        "accepted": summary.get("accepted"),
        "dead_lettered": summary.get("dead_lettered"),
        "customers": summary.get("customers"),
        "visitors": summary.get("visitors"),
        "models": models,
        "products": products,
        "command": ("" if products else "NEXTBEST_PRODUCTS=off ")
        + "python -m nextbest replay FILE --json"
        + ("" if models else " --no-models"),
    }
