"""Operations: consumer lag and record age from the Kafka source (against the session's real
broker), and every PromQL expression of the Grafana dashboard and the Prometheus rules parsed
and checked against the metrics (and their labels) the code exports."""

from __future__ import annotations

import time
from pathlib import Path

import promql_parser
from prometheus_client import REGISTRY

from dataflows import sources
from dataflows.records import RawRecord
from dataflows.sources import KafkaTopicsSource, topic_layout
from nextbest.runtime import ensure_topics
from tests.chaos import produce


def _sample(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_consumer_lag_and_record_age_are_measured_in_the_kafka_source(kafka_brokers: str) -> None:
    """Lag = high watermark - next offset, per partition; read 4 of 10 records, then all."""
    topic = "ops-lag"
    ensure_topics(kafka_brokers, [topic], 1)
    produce(kafka_brokers, topic, [b'{"n":%d}' % i for i in range(10)])
    source = KafkaTopicsSource(kafka_brokers, topic_layout(kafka_brokers, [topic]), batch_size=4)
    part = source.build_part("read", f"0-{topic}", None)
    labels = {"topic": topic, "partition": "0"}
    age_before = _sample("nextbest_kafka_record_age_seconds_count", {"topic": topic}) or 0.0
    try:
        got: list[RawRecord] = []
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            got = part.next_batch()
        assert len(got) == 4
        # the cached high watermark comes with the first fetch answer
        deadline = time.monotonic() + 10
        while _sample("nextbest_kafka_consumer_lag", labels) != 6.0:
            assert time.monotonic() < deadline, _sample("nextbest_kafka_consumer_lag", labels)
            part._read._lag_due = 0.0
            part._read.observe(part._consumer, part._tp(topic, 0), part._offset, None)
            time.sleep(0.05)
        while len(got) < 10 and time.monotonic() < deadline:
            got += part.next_batch()
        assert [r.data for r in got] == [b'{"n":%d}' % i for i in range(10)]
        part._read._lag_due = 0.0
        part.next_batch()
        assert _sample("nextbest_kafka_consumer_lag", labels) == 0.0
        age = _sample("nextbest_kafka_record_age_seconds_count", {"topic": topic}) or 0.0
        assert age > age_before
        assert (_sample("nextbest_kafka_record_age_seconds_sum", {"topic": topic}) or 0.0) < 60
    finally:
        part.close()
    assert sources.LAG_INTERVAL_S >= 1.0  # cheap: one cached read per partition every few s


# --- PromQL of the dashboard and the rules against what the code exports ---------------------

#: Labels Prometheus adds to every scraped series (target labels): allowed everywhere.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})


def _exported() -> dict[str, frozenset[str]]:
    """Every series name the three components expose, with its label names: the dataflow's
    and ``deliver``'s (process registry) and an API app's own registry."""
    import dataflows.metrics
    import nextbest.delivery.metrics
    from nextbest.settings import Settings
    from serving.app import create_app

    assert dataflows.metrics.WATERMARK and nextbest.delivery.metrics.ATTEMPTS
    app = create_app(Settings.from_env({}), "redis://127.0.0.1:1")  # never connected: no lifespan
    out: dict[str, frozenset[str]] = {}
    for registry in (REGISTRY, app.state.metrics.registry):
        for name, collector in registry._names_to_collectors.items():
            labels = frozenset(getattr(collector, "_labelnames", ()))
            out[name] = labels | {"le"} if name.endswith("_bucket") else labels
    return out


def _selectors(expr: object) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):  # a range's selector is a child too
            found.append(node)
        return True

    promql_parser.walk(expr, visit)  # type: ignore[arg-type]
    return found


def _problems(expr_text: str, exported: dict[str, frozenset[str]]) -> list[str]:
    """What is wrong with one expression: an unknown metric, a label it does not have."""
    expr = promql_parser.parse(expr_text)
    out: list[str] = []
    for sel in _selectors(expr):
        if sel.name not in exported:
            out.append(f"{sel.name}: not exported")
            continue
        for m in sel.matchers.matchers:
            if m.name not in exported[sel.name] | TARGET_LABELS:
                out.append(f"{sel.name}: no label {m.name}")

    def grouping(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            below = [exported.get(s.name or "", frozenset()) for s in _selectors(node.expr)]
            have = frozenset().union(*below) | TARGET_LABELS
            out.extend(f"grouped by {lb}, no metric under it has it"
                       for lb in node.modifier.labels if lb not in have)  # fmt: skip
        return True

    promql_parser.walk(expr, grouping)
    return out


def test_every_dashboard_and_alert_expression_names_exported_metrics_and_labels() -> None:
    from ops import alerts, dashboard

    exported = _exported()
    assert "nextbest_kafka_consumer_lag" in exported
    exprs = dashboard.expressions() + alerts.expressions()
    assert len(exprs) > 30
    problems = {e: p for e in exprs if (p := _problems(e, exported))}
    assert problems == {}
    # the check itself catches what it should
    assert _problems("rate(nextbest_nope_total[5m])", exported) == [
        "nextbest_nope_total: not exported"
    ]
    assert _problems('nextbest_sink_stalled{route="x"}', exported) == [
        "nextbest_sink_stalled: no label route"
    ]
    assert _problems("sum by (route) (nextbest_sink_stalled)", exported) == [
        "grouped by route, no metric under it has it"
    ]


def test_the_generated_files_are_current() -> None:
    """``python -m ops.dashboard --write`` and ``python -m ops.alerts --write`` regenerate them."""
    from ops import alerts, dashboard

    assert dashboard.OUT.read_text() == dashboard.render(), "run python -m ops.dashboard --write"
    assert alerts.OUT.read_text() == alerts.render(), "run python -m ops.alerts --write"


def test_every_alert_is_complete_and_has_its_runbook_entry() -> None:
    import yaml

    from ops import alerts

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    groups = yaml.safe_load(alerts.OUT.read_text())
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 10
    for r in rules:
        promql_parser.parse_duration(r["for"])
        assert r["labels"]["severity"] in {"warning", "critical"}
        ann = r["annotations"]
        assert ann["summary"] and ann["description"]
        assert ann["runbook"] == f"README.md#{r['alert'].lower()}"
        assert f"#### {r['alert']}\n" in readme, f"README runbook entry of {r['alert']}"


def test_profile_freshness_is_measured_from_the_records_produce_time_to_its_write() -> None:
    """One observation per profile write, from the oldest change's Kafka timestamp; a change
    from a file (no timestamp) is not measured."""
    from dataflows.records import In
    from dataflows.snapshots import load_profile
    from dataflows.steps.profile import ProfileLogic
    from schemas import Event
    from tests.conftest import flow_config

    cfg = flow_config(write_interval_ms=0, models=False)
    logic = ProfileLogic(load_profile(None), cfg)
    now_ms = int(time.time() * 1000)

    def item(i: int, produced: int | None) -> tuple[str, In]:
        ev = Event(event_id=f"f{i}", type="page_view", ts=now_ms - 60_000 + i, customer_id="f")
        return ("c:f", In(ev, RawRecord(b"{}", f"kafka:t:0:{i}", produced)))

    count = _sample("nextbest_profile_freshness_seconds_count", {}) or 0.0
    total = _sample("nextbest_profile_freshness_seconds_sum", {}) or 0.0
    out, _ = logic.on_batch([item(1, now_ms - 3000), item(2, now_ms - 1000)])
    assert out  # the profile was written
    assert _sample("nextbest_profile_freshness_seconds_count", {}) == count + 1
    took = (_sample("nextbest_profile_freshness_seconds_sum", {}) or 0.0) - total
    assert 3.0 <= took < 30  # from the oldest of the two
    out, _ = logic.on_batch([item(3, None)])  # from a file: written, not measured
    assert out and _sample("nextbest_profile_freshness_seconds_count", {}) == count + 1


def test_an_event_behind_the_clock_is_counted() -> None:
    """An event applied after the customer clock ticked its profile past the event's time."""
    from dataflows.records import In, Tick
    from dataflows.snapshots import load_profile
    from dataflows.steps.profile import ProfileLogic
    from schemas import Event
    from tests.conftest import flow_config

    logic = ProfileLogic(load_profile(None), flow_config(models=False))
    t0 = 1_767_225_600_000

    def item(i: int, ts: int) -> tuple[str, In]:
        ev = Event(event_id=f"b{i}", type="page_view", ts=ts, customer_id="b")
        return ("c:b", In(ev, RawRecord(b"{}", f"kafka:t:0:{i}")))

    before = _sample("nextbest_events_behind_clock_total", {}) or 0.0
    logic.on_batch([item(1, t0)])
    logic.on_batch([("c:b", Tick(t0 + 3_600_000))])
    logic.on_batch([item(2, t0 + 7_200_000)])  # after the tick's time: not behind
    assert _sample("nextbest_events_behind_clock_total", {}) == before
    logic.on_batch([item(3, t0 + 60_000)])  # before it: behind
    assert _sample("nextbest_events_behind_clock_total", {}) == before + 1
