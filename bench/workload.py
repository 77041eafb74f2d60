"""The simulated event file every section of one bench run uses."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nextbest.simulator import SimConfig, generate, simulate_to_file

#: Customers of the pilot simulation used to size the population for a target event count.
PILOT_CUSTOMERS = 400


@dataclass(frozen=True)
class Workload:
    """One simulated JSONL file and how it was made."""

    path: Path
    lines: int
    events: int
    bad: int
    customers: int
    days: int
    seed: int
    bad_rate: float
    simulate_seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly description."""
        d = asdict(self)
        d["path"] = str(self.path)
        d["simulate_seconds"] = round(self.simulate_seconds, 3)
        d["bytes"] = self.path.stat().st_size if self.path.exists() else 0
        return d


def customers_for(target_lines: int, days: int, seed: int, bad_rate: float) -> int:
    """Population size that gives about ``target_lines`` lines over ``days`` days.

    Sized from a small pilot simulation with the same days, seed and bad rate (the lines per
    customer barely depend on the population size).
    """
    pilot = SimConfig(customers=PILOT_CUSTOMERS, days=days, seed=seed, bad_rate=bad_rate)
    pilot_lines = sum(1 for _ in generate(pilot))
    per_customer = max(pilot_lines / PILOT_CUSTOMERS, 1e-3)
    return max(1, math.ceil(target_lines / per_customer))


def make_workload(path: Path, *, customers: int, days: int, seed: int, bad_rate: float) -> Workload:
    """Simulate the population to ``path``."""
    t0 = time.perf_counter()
    stats = simulate_to_file(
        SimConfig(customers=customers, days=days, seed=seed, bad_rate=bad_rate), path
    )
    return Workload(
        path=path,
        lines=stats.events + stats.bad,
        events=stats.events,
        bad=stats.bad,
        customers=customers,
        days=days,
        seed=seed,
        bad_rate=bad_rate,
        simulate_seconds=time.perf_counter() - t0,
    )


def first_lines(path: Path, n: int) -> list[bytes]:
    """The first ``n`` lines of a JSONL file (without line ends)."""
    with path.open("rb") as fh:
        return [line.rstrip(b"\r\n") for line in itertools.islice(fh, n)]
