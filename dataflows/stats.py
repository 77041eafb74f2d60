"""The counts of one run of the flow (the CLI summary), read from the Prometheus metrics.

The steps count only through :mod:`dataflows.metrics` (process-wide counters, what
``/metrics`` exports); a :class:`FlowStats` takes the counters' values when it is made and reports
what was added since: the run's own counts, as long as one flow runs in the process at a time
(the CLI runs one). With several processes each reports its own.

>>> from dataflows import metrics
>>> stats = FlowStats()
>>> metrics.EVENTS_READ.labels("file").inc(3)
>>> metrics.EVENTS_DEAD_LETTERED.labels("late").inc()
>>> stats.read, stats.accepted, dict(stats.dead_lettered)
(3, 2, {'late': 1})
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from prometheus_client import REGISTRY

from dataflows import metrics

#: The counters a run reports, by metric name (without ``_total``).
_NAMES: Final = {
    "read": "nextbest_events_read",
    "decoded": "nextbest_events_accepted",
    "dead_lettered": "nextbest_events_dead_lettered",
    "duplicates": "nextbest_events_duplicate",
    "created": "nextbest_profiles_created",
    "dropped": "nextbest_profiles_dropped",
    "transitions": "nextbest_segment_transitions",
}
_BY_NAME: Final = {v: k for k, v in _NAMES.items()}


def _values() -> dict[str, Counter[str]]:
    """Every reported counter's value, per label value (``""`` when unlabelled)."""
    out: dict[str, Counter[str]] = {k: Counter() for k in _NAMES}
    for metric in REGISTRY.collect():
        field = _BY_NAME.get(metric.name)
        if field is None:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                labels = sample.labels
                # (transitions are counted by direction)
                label = labels.get("direction") or next(iter(labels.values()), "")
                out[field][label] += int(sample.value)
    return out


class FlowStats:
    """Counts of the run since this object was made (the same numbers ``/metrics`` shows)."""

    def __init__(self) -> None:
        self._base = _values()

    def _delta(self, field: str) -> Counter[str]:
        now = _values()[field]
        now.subtract(self._base[field])
        return +now  # (drops zeros)

    @property
    def read(self) -> int:
        """Records read from the source."""
        return sum(self._delta("read").values())

    @property
    def decoded(self) -> int:
        """Records decoded into valid events."""
        return sum(self._delta("decoded").values())

    @property
    def dead_lettered(self) -> Counter[str]:
        """Dead letters by reason."""
        return self._delta("dead_lettered")

    @property
    def duplicates(self) -> int:
        """Events ignored as duplicates."""
        return sum(self._delta("duplicates").values())

    @property
    def customers(self) -> int:
        """Customer profiles created."""
        return self._delta("created")["customer"]

    @property
    def visitors(self) -> int:
        """Anonymous profiles (devices) created."""
        return self._delta("created")["anonymous"]

    @property
    def dropped(self) -> int:
        """Profiles dropped by retention."""
        return sum(self._delta("dropped").values())

    @property
    def entered(self) -> int:
        """Segment entries."""
        return self._delta("transitions")["entered"]

    @property
    def exited(self) -> int:
        """Segment exits."""
        return self._delta("transitions")["exited"]

    @property
    def accepted(self) -> int:
        """Records that became applied (or ignored duplicate) events: read minus dead letters."""
        return self.read - sum(self.dead_lettered.values())

    def as_dict(self, seconds: float) -> dict[str, Any]:
        """The ``replay --json`` summary."""
        now = _values()
        for field, base in self._base.items():
            now[field].subtract(base)
        read = sum(now["read"].values())
        dead = +now["dead_lettered"]
        return {
            "read": read,
            "accepted": read - sum(dead.values()),
            "dead_lettered": sum(dead.values()),
            "dead_lettered_by_reason": dict(sorted(dead.items())),
            "duplicates": sum(now["duplicates"].values()),
            "customers": now["created"]["customer"],
            "visitors": now["created"]["anonymous"],
            "dropped_by_retention": sum(now["dropped"].values()),
            "segment_entries": now["transitions"]["entered"],
            "segment_exits": now["transitions"]["exited"],
            "seconds": round(seconds, 3),
            "events_per_s": round(read / seconds, 1) if seconds > 0 else 0.0,
        }


def count_dead_letter(reason: str) -> None:
    """Count one dead letter (by its reason, a finite set)."""
    metrics.EVENTS_DEAD_LETTERED.labels(reason).inc()
