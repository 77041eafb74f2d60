"""The Grafana dashboard of nextbest, built from code (``python -m ops.dashboard --write``).

A small typed builder (rows of panels, each with PromQL targets) turns into Grafana's dashboard
JSON; the chart ships it from ``helm/nextbest/files/grafana-dashboard.json`` and
``tests/test_ops.py`` fails when that file is stale or an expression names a metric or label the
code does not export.

>>> d = build()
>>> d["uid"], d["panels"][0]["type"], d["panels"][0]["title"]
('nextbest', 'row', 'Dataflow: throughput and lag')
>>> all(t["expr"] for p in d["panels"] if p["type"] != "row" for t in p["targets"])
True
>>> len(expressions()) == len({e for e in expressions()})
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

#: Where the chart reads the dashboard from.
OUT: Final = Path(__file__).resolve().parent.parent / "helm/nextbest/files/grafana-dashboard.json"
#: The rate window of every panel.
W: Final = "5m"
_DS: Final = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel, with its legend (Grafana's ``{{label}}`` templates)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A time series (or stat) panel."""

    title: str
    targets: tuple[Target, ...]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"


@dataclass(frozen=True)
class Row:
    """A titled row of panels (laid out two or three to a line)."""

    title: str
    panels: tuple[Panel, ...]


def _q(metric: str, by: str = "", quantile: float = 0.99, where: str = "") -> str:
    """``histogram_quantile`` of a histogram's buckets, summed by ``le`` and ``by``."""
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({quantile}, sum by ({labels}) (rate({metric}_bucket{where}[{W}])))"


def _rate(metric: str, by: str, where: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{where}[{W}]))"


ROWS: Final = (
    Row(
        "Dataflow: throughput and lag",
        (
            Panel(
                "Events read / accepted per second",
                (
                    Target(_rate("nextbest_events_read_total", "source"), "read {{source}}"),
                    Target(_rate("nextbest_events_accepted_total", "type"), "accepted {{type}}"),
                ),
                "ops",
            ),
            Panel(
                "Consumer lag (records not read yet)",
                (Target("sum by (topic) (nextbest_kafka_consumer_lag)", "{{topic}}"),),
                "short",
                "High watermark minus the next offset to read, summed over the partitions.",
            ),
            Panel(
                "Event-time watermark behind wall clock",
                (
                    Target(
                        "time() - max by (clock) (nextbest_event_time_watermark_seconds)",
                        "{{clock}}",
                    ),
                ),
                "s",
                "Includes the allowed lateness; in a replay it is the age of the history.",
            ),
        ),
    ),
    Row(
        "Dataflow: freshness, errors, Redis",
        (
            Panel(
                "Freshness (produced to profile written; record age when read)",
                (
                    Target(_q("nextbest_profile_freshness_seconds"), "p99 to profile written"),
                    Target(_q("nextbest_profile_freshness_seconds", "", 0.5), "p50 to profile"),
                    Target(_q("nextbest_kafka_record_age_seconds", "topic"), "p99 {{topic}}"),
                    Target(_q("nextbest_kafka_record_age_seconds", "topic", 0.5), "p50 {{topic}}"),
                    Target(_q("nextbest_redis_write_seconds"), "p99 Redis write"),
                ),
                "s",
            ),
            Panel(
                "Dead letters by reason",
                (Target(_rate("nextbest_events_dead_lettered_total", "reason"), "{{reason}}"),),
                "ops",
            ),
            Panel(
                "Redis write latency",
                (
                    Target(_q("nextbest_redis_write_seconds"), "p99"),
                    Target(_q("nextbest_redis_write_seconds", quantile=0.5), "p50"),
                ),
                "s",
            ),
            Panel(
                "Sink write failures and stalls",
                (
                    Target(
                        _rate("nextbest_redis_write_failures_total", "error"), "redis {{error}}"
                    ),
                    Target(
                        _rate("nextbest_sink_write_failures_total", "sink, error"),
                        "{{sink}} {{error}}",
                    ),
                    Target("max by (sink) (nextbest_sink_stalled)", "stalled {{sink}}"),
                ),
                "short",
            ),
            Panel(
                "Erasures by stage",
                (Target(_rate("nextbest_erasures_total", "stage"), "{{stage}}"),),
                "ops",
            ),
        ),
    ),
    Row(
        "Models and segments",
        (
            Panel(
                "Model ROC AUC (rolling)",
                (Target('max by (model) (nextbest_model_metric{metric="roc_auc"})', "{{model}}"),),
                "percentunit",
            ),
            Panel(
                "Model drifts and examples learned",
                (
                    Target("max by (model) (nextbest_model_drifts)", "drifts {{model}}"),
                    Target(_rate("nextbest_model_examples_total", "model"), "examples/s {{model}}"),
                ),
                "short",
            ),
            Panel(
                "Segment sizes",
                (Target("max by (segment) (nextbest_segment_members)", "{{segment}}"),),
                "short",
            ),
            Panel(
                "Segment transitions per second",
                (
                    Target(
                        _rate("nextbest_segment_transitions_total", "segment, direction"),
                        "{{segment}} {{direction}}",
                    ),
                ),
                "ops",
            ),
        ),
    ),
    Row(
        "Webhook delivery",
        (
            Panel(
                "Failed attempts and dead letters",
                (
                    Target(
                        _rate(
                            "nextbest_delivery_attempts_total",
                            "destination, outcome",
                            '{outcome!="success"}',
                        ),
                        "{{destination}} {{outcome}}",
                    ),
                    Target(
                        _rate("nextbest_delivery_dead_letters_total", "destination"),
                        "dead letters {{destination}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Delivery latency and lag (p99)",
                (
                    Target(
                        _q("nextbest_delivery_latency_seconds", "destination"),
                        "POST {{destination}}",
                    ),
                    Target(
                        _q("nextbest_delivery_lag_seconds", "destination"), "lag {{destination}}"
                    ),
                ),
                "s",
            ),
        ),
    ),
    Row(
        "API: decisions and recommendations",
        (
            Panel(
                "Decision latency",
                (
                    Target(_q("nextbest_decision_seconds", "channel"), "p99 {{channel}}"),
                    Target(_q("nextbest_decision_seconds", "channel", 0.5), "p50 {{channel}}"),
                ),
                "s",
            ),
            Panel(
                "Decision fallbacks",
                (
                    Target(
                        _rate("nextbest_decision_fallbacks_total", "channel, reason"),
                        "{{channel}} {{reason}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Recommendation latency (p99)",
                (Target(_q("nextbest_recommendation_seconds", "endpoint"), "p99 {{endpoint}}"),),
                "s",
            ),
            Panel(
                "Recommendation answers by outcome",
                (
                    Target(
                        _rate("nextbest_recommendations_total", "endpoint, outcome"),
                        "{{endpoint}} {{outcome}}",
                    ),
                ),
                "ops",
            ),
        ),
    ),
    Row(
        "API: HTTP",
        (
            Panel(
                "HTTP latency (p99) by route",
                (Target(_q("nextbest_http_request_duration_seconds", "route"), "{{route}}"),),
                "s",
            ),
            Panel(
                "HTTP 5xx ratio",
                (
                    Target(
                        f'sum(rate(nextbest_http_requests_total{{status=~"5.."}}[{W}])) / '
                        f"sum(rate(nextbest_http_requests_total[{W}]))",
                        "5xx",
                    ),
                ),
                "percentunit",
            ),
            Panel(
                "Requests per second by status",
                (Target(_rate("nextbest_http_requests_total", "status"), "{{status}}"),),
                "reqps",
            ),
            Panel(
                "Auth failures",
                (Target(_rate("nextbest_http_auth_failures_total", "reason"), "{{reason}}"),),
                "ops",
            ),
        ),
    ),
)


def _panel(p: Panel, pid: int, x: int, y: int, w: int) -> dict[str, Any]:
    refs = "ABCDEFGH"
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": _DS,
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {"refId": refs[i], "datasource": _DS, "expr": t.expr, "legendFormat": t.legend}
            for i, t in enumerate(p.targets)
        ],
    }


def build() -> dict[str, Any]:
    """The dashboard JSON (a Grafana dashboard model, schema version 39)."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y = pid + 1, y + 1
        per_line = 3 if len(row.panels) % 3 == 0 else 2
        w = 24 // per_line
        for i, p in enumerate(row.panels):
            panels.append(_panel(p, pid, (i % per_line) * w, y + (i // per_line) * 8, w))
            pid += 1
        y += 8 * -(-len(row.panels) // per_line)
    return {
        "uid": "nextbest",
        "title": "nextbest",
        "tags": ["nextbest"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard (once each)."""
    return list(dict.fromkeys(t.expr for row in ROWS for p in row.panels for t in p.targets))


def render() -> str:
    """The file's text (stable: sorted keys, two-space indent, a final newline)."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write (``--write``) or check the generated file (the one command line of every
    generated file, :func:`features.segments.schema.write_or_check`)."""
    from features.segments.schema import write_or_check

    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_or_check(OUT, render(), "ops.dashboard", argv)


if __name__ == "__main__":
    main()
