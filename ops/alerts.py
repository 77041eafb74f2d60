"""The Prometheus alerting rules of nextbest (``python -m ops.alerts --write``).

Written as the ``spec.groups`` list of a PrometheusRule to
``helm/nextbest/files/prometheus-rules.yaml``; every alert has ``for``, ``labels.severity`` and
``annotations`` ``summary``, ``description`` and ``runbook`` (an anchor of the README's
"Alerts and runbook"). ``tests/test_ops.py`` fails when the file is stale or an expression names
a metric or label the code does not export.

>>> rules = [r for g in groups() for r in g["rules"]]
>>> all({"alert", "expr", "for", "labels", "annotations"} <= set(r) for r in rules)
True
>>> sorted({r["labels"]["severity"] for r in rules})
['critical', 'warning']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

#: Where the chart reads the rules from.
OUT: Final = Path(__file__).resolve().parent.parent / "helm/nextbest/files/prometheus-rules.yaml"
#: The README's runbook: each alert's anchor is its name in lower case.
RUNBOOK: Final = "README.md#"


@dataclass(frozen=True)
class Alert:
    """One alerting rule."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    def rule(self) -> dict[str, Any]:
        """The rule as Prometheus reads it."""
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook": RUNBOOK + self.name.lower(),
            },
        }


DATAFLOW: Final = (
    Alert(
        "NextbestConsumerLagGrowing",
        "sum by (topic) (nextbest_kafka_consumer_lag) > 10000 "
        "and sum by (topic) (deriv(nextbest_kafka_consumer_lag[10m])) > 0",
        "15m",
        "warning",
        "Consumer lag of {{ $labels.topic }} is growing",
        "{{ $value }} records of {{ $labels.topic }} are not read yet and the backlog has grown "
        "for 15 minutes: the dataflow reads slower than producers write.",
    ),
    Alert(
        "NextbestFreshnessOverBudget",
        "histogram_quantile(0.99, sum by (le) "
        "(rate(nextbest_profile_freshness_seconds_bucket[5m]))) > 1",
        "10m",
        "warning",
        "Profile freshness p99 is over 1 s",
        "Profiles reach Redis {{ $value }} s (p99) after their events were produced; segment "
        "transitions and decisions are that late.",
    ),
    Alert(
        "NextbestEventsBehindClock",
        "sum(increase(nextbest_events_behind_clock_total[15m])) > 0",
        "15m",
        "warning",
        "Events arrive behind the event-time clock",
        "{{ $value }} events in 15 minutes were applied after the clock had ticked their "
        "profiles past their time: labels, idle snapshots and flips by time up to the tick were "
        "decided without them (a backlog over several partitions, or a late producer).",
    ),
    Alert(
        "NextbestDeadLetterRate",
        "sum(rate(nextbest_events_dead_lettered_total[5m])) "
        "/ sum(rate(nextbest_events_read_total[5m])) > 0.01",
        "10m",
        "warning",
        "Over 1 % of the events read are dead-lettered",
        "{{ $value | humanizePercentage }} of the records read are rejected; see "
        "nextbest_events_dead_lettered_total by reason.",
    ),
    Alert(
        "NextbestModelAucFalling",
        'max by (model) (nextbest_model_metric{metric="roc_auc"}) < 0.6 '
        'or max by (model) (nextbest_model_metric{metric="roc_auc"}) '
        '< max by (model) (nextbest_model_metric{metric="roc_auc"} offset 1d) - 0.05',
        "1h",
        "warning",
        "ROC AUC of {{ $labels.model }} is falling",
        "The rolling ROC AUC of {{ $labels.model }} is {{ $value }}: under 0.6, or 0.05 lower "
        "than a day ago.",
    ),
    Alert(
        "NextbestModelDrift",
        "max by (model) (delta(nextbest_model_drifts[1h])) > 0",
        "5m",
        "warning",
        "Drift detected in {{ $labels.model }}",
        "ADWIN saw the error of {{ $labels.model }} change in the last hour.",
    ),
    Alert(
        "NextbestRedisWriteErrors",
        "sum by (error) (rate(nextbest_redis_write_failures_total[5m])) > 0",
        "5m",
        "warning",
        "Redis writes fail ({{ $labels.error }})",
        "The dataflow's Redis writes fail with {{ $labels.error }} and are retried.",
    ),
    Alert(
        "NextbestSinkStalled",
        "max by (sink) (nextbest_sink_stalled) == 1",
        "2m",
        "critical",
        "The {{ $labels.sink }} sink is stalled",
        "The dataflow has retried a {{ $labels.sink }} write for 2 minutes and reads nothing "
        "meanwhile (back-pressure: nothing is lost, everything is late).",
    ),
)
SERVING: Final = (
    Alert(
        "NextbestApi5xxRate",
        'sum(rate(nextbest_http_requests_total{status=~"5.."}[5m])) '
        "/ sum(rate(nextbest_http_requests_total[5m])) > 0.01",
        "5m",
        "critical",
        "Over 1 % of API requests fail with 5xx",
        "{{ $value | humanizePercentage }} of the HTTP requests answer 5xx.",
    ),
    Alert(
        "NextbestDecisionP99OverBudget",
        "histogram_quantile(0.99, sum by (le, channel) "
        "(rate(nextbest_decision_seconds_bucket[5m]))) > 0.01",
        "10m",
        "warning",
        "Next best action p99 of {{ $labels.channel }} is over 10 ms",
        "Deciding for {{ $labels.channel }} takes {{ $value }} s at p99 (budget: single-digit "
        "milliseconds).",
    ),
    Alert(
        "NextbestRecommendationsDegraded",
        'sum by (endpoint) (rate(nextbest_recommendations_total{outcome="degraded"}[5m])) '
        "/ sum by (endpoint) (rate(nextbest_recommendations_total[5m])) > 0.01",
        "10m",
        "warning",
        "Over 1 % of {{ $labels.endpoint }} recommendations are degraded",
        "{{ $value | humanizePercentage }} of the {{ $labels.endpoint }} answers are degraded "
        "(Redis over its 100 ms budget or unavailable).",
    ),
)
DELIVERY: Final = (
    Alert(
        "NextbestDeliveryDeadLetters",
        "sum by (destination) (increase(nextbest_delivery_dead_letters_total[15m])) > 0",
        "5m",
        "warning",
        "Webhook deliveries to {{ $labels.destination }} are dead-lettered",
        "{{ $value }} segment transitions for {{ $labels.destination }} were given up in 15 "
        "minutes.",
    ),
)


def groups() -> list[dict[str, Any]]:
    """The PrometheusRule's ``spec.groups``."""
    return [
        {"name": f"nextbest.{name}", "rules": [a.rule() for a in alerts]}
        for name, alerts in (("dataflow", DATAFLOW), ("serving", SERVING), ("delivery", DELIVERY))
    ]


def expressions() -> list[str]:
    """Every PromQL expression of the rules."""
    return [r["expr"] for g in groups() for r in g["rules"]]


def render() -> str:
    """The file's text."""
    head = "# generated by `python -m ops.alerts --write`: do not edit\n"
    return head + yaml.safe_dump(groups(), sort_keys=False, width=100, allow_unicode=True)


def main(argv: list[str] | None = None) -> None:
    """Write (``--write``) or check the generated file (the one command line of every
    generated file, :func:`features.segments.schema.write_or_check`)."""
    from features.segments.schema import write_or_check

    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_or_check(OUT, render(), "ops.alerts", argv)


if __name__ == "__main__":
    main()
