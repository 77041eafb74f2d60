"""Prometheus metrics of ``nextbest deliver`` (label values come from the webhook config:
destination names are bounded, outcomes a finite set)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ATTEMPTS = Counter(
    "nextbest_delivery_attempts_total",
    "Webhook POST attempts, by destination and outcome (success, client_error, throttled, "
    "server_error, timeout, connection_error).",
    ["destination", "outcome"],
)
DEAD_LETTERS = Counter(
    "nextbest_delivery_dead_letters_total",
    "Records given up for a destination (not retriable, or out of attempts) and dead-lettered.",
    ["destination"],
)
LATENCY = Histogram(
    "nextbest_delivery_latency_seconds",
    "Duration of one webhook POST attempt (request sent to response read), by destination.",
    ["destination"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
LAG = Histogram(
    "nextbest_delivery_lag_seconds",
    "From a transition's emitted_at (wall time) to its successful delivery, by destination.",
    ["destination"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
BAD_RECORDS = Counter(
    "nextbest_delivery_bad_records_total",
    "segment-events records that are not a transition (bad JSON, missing fields): dead-lettered "
    "without a destination.",
)
RECORDS = Counter(
    "nextbest_delivery_records_total",
    "segment-events records done (delivered or dead-lettered for every destination, or wanted "
    "by none).",
)
