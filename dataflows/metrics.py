"""Prometheus metrics of the dataflow (process-wide registry; label values are bounded)."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

EVENTS_READ = Counter(
    "nextbest_events_read_total", "Records read from the source.", ["source"], registry=REGISTRY
)
EVENTS_ACCEPTED = Counter(
    "nextbest_events_accepted_total", "Records decoded into valid events.", ["type"]
)
EVENTS_DEAD_LETTERED = Counter(
    "nextbest_events_dead_lettered_total",
    "Records rejected to the dead-letter output, by reason (a finite set).",
    ["reason"],
)
REDIS_BATCH_SIZE = Histogram(
    "nextbest_redis_write_batch_size",
    "Profiles written per Redis pipeline.",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
REDIS_WRITE_SECONDS = Histogram(
    "nextbest_redis_write_seconds",
    "Latency of one pipelined Redis profile write.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
DEAD_LETTER_WRITE_ERRORS = Counter(
    "nextbest_dead_letter_write_retries_total", "Retries writing to the dead-letter output."
)


def serve_metrics(port: int) -> bool:
    """Expose ``/metrics`` on ``port`` (0: disabled). A busy port is logged, not fatal."""
    if port == 0:
        return False
    try:
        start_http_server(port)
    except OSError as exc:
        log.warning("metrics endpoint not started on port %d: %s", port, exc)
        return False
    log.info("dataflow metrics on :%d/metrics", port)
    return True


EVENTS_DROPPED = Counter(
    "nextbest_events_dropped_total",
    "Valid events not recorded in a profile, by reason (no_consent: its analytics consent is "
    "withdrawn). Not dead letters: nothing of them is kept.",
    ["reason"],
)
DUPLICATES = Counter(
    "nextbest_events_duplicate_total", "Events ignored because their event_id was already seen."
)
SEGMENT_TRANSITIONS = Counter(
    "nextbest_segment_transitions_total",
    "Segment transitions, by segment (names from the segment definitions) and direction.",
    ["segment", "direction"],
)
EVENTS_BEHIND_CLOCK = Counter(
    "nextbest_events_behind_clock_total",
    "Events applied to a customer profile after the customer clock had already ticked that "
    "profile past their time (its labels, idle snapshots and flips by time up to the tick were "
    "decided without them): 0 while every event arrives within the allowed lateness of the "
    "newest event read before it, from any partition; events from a late producer, or a backlog "
    "read from several partitions, count here (README, 'Scaling out').",
)
PROFILES_CREATED = Counter(
    "nextbest_profiles_created_total",
    "Profiles created, by kind (customer, anonymous, identifier).",
    ["kind"],
)
IDENTIFIER_CONFLICTS = Counter(
    "nextbest_identifier_conflicts_total",
    "Identifiers (email, phone) claimed by one more customer than their owner (each new "
    "claimant once).",
    ["kind"],
)
TRAITS_APPLIED = Counter(
    "nextbest_traits_applied_total",
    "identify events whose traits changed a profile, by their source's priority for it: any "
    "(at least one trait changed) or none (every trait kept a better value).",
    ["changed"],
)
PROFILES_DROPPED = Counter(
    "nextbest_profiles_dropped_total", "Profiles dropped by retention (no event for too long)."
)
WATERMARK = Gauge(
    "nextbest_event_time_watermark_seconds",
    "The event-time watermark (newest event time minus the allowed lateness), epoch seconds.",
    ["clock"],
)
BTYD_FITS = Counter(
    "nextbest_btyd_fits_total",
    "Buy-till-you-die (BG/NBD) population fits by the RFM owner (one per day of event time).",
)
BTYD_FIT_FAILURES = Counter(
    "nextbest_btyd_fit_failures_total",
    "Buy-till-you-die fits that failed numerically (the last parameters stay published).",
)
BTYD_FIT_SECONDS = Gauge(
    "nextbest_btyd_fit_seconds", "Wall seconds of the last buy-till-you-die population fit."
)
RFM_INCONSISTENT = Counter(
    "nextbest_rfm_inconsistent_updates_total",
    "RFM population updates that removed a point it did not hold (should stay 0).",
)
EXAMPLES = Counter(
    "nextbest_model_examples_total", "Labelled examples learned, by model.", ["model"]
)
MODEL_METRIC = Gauge(
    "nextbest_model_metric",
    "Rolling progressive-validation metrics of the online models at their last checkpoint.",
    ["model", "metric"],
)
EXAMPLES_OUT_OF_ORDER = Counter(
    "nextbest_model_examples_out_of_order_total",
    "Examples that reached their model after later ones were learned (should stay 0).",
)
OUTCOMES = Counter(
    "nextbest_outcomes_total",
    "Decision outcomes read by the feedback join, by type (impression, click, conversion) and "
    "action (a catalogue action, else unknown).",
    ["type", "action"],
)
OUTCOMES_UNMATCHED = Counter(
    "nextbest_outcomes_unmatched_total",
    "Decision outcomes the feedback join could not use, by reason (dead-lettered).",
    ["reason"],
)
DECISIONS_READ = Counter(
    "nextbest_decision_records_total",
    "Decision records read from the input (the decision log), joined with their outcomes.",
)
MODEL_DRIFTS = Gauge("nextbest_model_drifts", "Drifts detected (ADWIN on the error).", ["model"])
SNAPSHOTS = Counter(
    "nextbest_training_snapshots_total",
    "Training snapshots taken (as of 00:00 of a customer's snapshot day, every 7 days): when the "
    "customer's next event came (event) or at a clock tick (idle).",
    ["kind"],
)
SNAPSHOT_EVENT = SNAPSHOTS.labels("event")
SNAPSHOT_IDLE = SNAPSHOTS.labels("idle")
SNAPSHOTS_SKIPPED = Counter(
    "nextbest_training_snapshots_skipped_total",
    "Training snapshots not kept: a customer's pending snapshots were at their cap because the "
    "watermark stalled (should stay 0).",
)
SINK_WRITE_FAILURES = Counter(
    "nextbest_sink_write_failures_total",
    "Failed write attempts of a sink, by sink (redis, dead_letter) and error kind (a finite set: "
    "connection, timeout, loading, readonly, oom, busy, cluster, queue_full, msg_too_large, "
    "broker, other); retriable ones are retried, the others go to the fallback file.",
    ["sink", "error"],
)
REDIS_WRITE_FAILURES = Counter(
    "nextbest_redis_write_failures_total",
    "Failed Redis write attempts (every retry counts once), by error kind.",
    ["error"],
)
SINK_STALLED = Gauge(
    "nextbest_sink_stalled",
    "1 while a sink is retrying a write it cannot complete (the flow holds its input), else 0.",
    ["sink"],
)
SINK_FALLBACK = Counter(
    "nextbest_sink_fallback_records_total",
    "Records a sink could not write for a non-retriable reason, written to the local fallback "
    "file instead (should stay 0).",
    ["sink"],
)
REPROJECTIONS = Counter(
    "nextbest_redis_reprojections_total",
    "Times the dataflow found that Redis lost its data and started re-writing every key.",
)
REPROJECTED_KEYS = Counter(
    "nextbest_redis_reprojected_keys_total",
    "Keys whose state was re-sent to Redis by a re-projection.",
    ["clock"],
)
KAFKA_OFFSET_RESETS = Counter(
    "nextbest_kafka_offset_resets_total",
    "Stored positions found outside their partition (topic recreated, retention), by the "
    "policy applied (earliest, latest, fail).",
    ["policy"],
)
KAFKA_CONSUME_ERRORS = Counter(
    "nextbest_kafka_consume_errors_total",
    "Errors reported by the Kafka consumer (not records; logged), by error name.",
    ["error"],
)
TOPIC_CHANGES = Counter(
    "nextbest_topic_changes_total",
    "Input topic changes seen while running (partitions added, topic recreated): each restarts "
    "the flow over every partition.",
    ["change"],
)
PRODUCT_TOUCHES = Counter(
    "nextbest_product_touches_total",
    "Product touches counted by the product knowledge (views, cart additions, purchase lines).",
    ["kind"],
)
PRODUCT_PAIRS = Counter(
    "nextbest_product_pairs_total",
    "Co-occurrences counted (each on both products), by relation (view, cart, buy).",
    ["relation"],
)
PRODUCT_NEIGHBOURS_REFUSED = Counter(
    "nextbest_product_neighbours_refused_total",
    "Co-occurrences not counted: full (the open weeks of the relation hold the most they may; "
    "should stay 0) or late (for a closed week that did not keep the neighbour, or older than "
    "the window).",
    ["reason"],
)
PRODUCTS = Gauge("nextbest_products", "Products held by the product knowledge (this process).")
PRODUCT_COUNTERS = Gauge(
    "nextbest_product_state_counters",
    "Counters held by the product knowledge (popularity buckets and co-occurrence week counts; "
    "this process): its state size.",
)
PRODUCT_SESSIONS = Gauge(
    "nextbest_product_sessions", "Open sessions remembered for co-occurrence (this process)."
)
ERASURES = Counter(
    "nextbest_erasures_total",
    "Erasure requests by stage: read (from the input), applied (a step forgot its part), done "
    "(every part applied; the status is written).",
    ["stage"],
)
KAFKA_CONSUMER_LAG = Gauge(
    "nextbest_kafka_consumer_lag",
    "Records of an input partition not read yet: its high watermark minus the next offset to "
    "read (from the consumer's cached watermark, refreshed at most every 2 s per partition).",
    ["topic", "partition"],
)
PROFILE_FRESHNESS = Histogram(
    "nextbest_profile_freshness_seconds",
    "Freshness end to end: wall time from an event's Kafka timestamp (when it was produced) to "
    "the customer profile write that carries it, handed to the Redis sink (one observation per "
    "write, for its oldest event; coalesced writes included: NEXTBEST_WRITE_INTERVAL).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
KAFKA_RECORD_AGE = Histogram(
    "nextbest_kafka_record_age_seconds",
    "Wall time minus the Kafka timestamp of the newest record of a batch when the source reads "
    "it: the read side of freshness (the Redis write follows: nextbest_redis_write_seconds).",
    ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
