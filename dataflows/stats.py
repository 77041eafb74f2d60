"""Counts of one in-process run of the flow (the CLI summary)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dataflows import metrics


@dataclass
class FlowStats:
    """Counts of one in-process run, for the CLI summary (the same numbers go to Prometheus)."""

    read: int = 0
    decoded: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    customers: int = 0
    visitors: int = 0
    dropped: int = 0

    @property
    def accepted(self) -> int:
        """Records that became applied (or ignored duplicate) events: read minus dead letters."""
        return self.read - sum(self.dead_lettered.values())

    def as_dict(self, seconds: float) -> dict[str, Any]:
        """The ``replay --json`` summary."""
        return {
            "read": self.read,
            "accepted": self.accepted,
            "dead_lettered": sum(self.dead_lettered.values()),
            "dead_lettered_by_reason": dict(sorted(self.dead_lettered.items())),
            "duplicates": self.duplicates,
            "customers": self.customers,
            "visitors": self.visitors,
            "dropped_by_retention": self.dropped,
            "seconds": round(seconds, 3),
            "events_per_s": round(self.read / seconds, 1) if seconds > 0 else 0.0,
        }

    def reject(self, reason: str) -> None:
        """Count one dead letter."""
        self.dead_lettered[reason] += 1
        metrics.EVENTS_DEAD_LETTERED.labels(reason).inc()
