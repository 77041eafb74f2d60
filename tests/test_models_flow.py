"""Online models in the dataflow and in serving: labels in event time, checkpoints, reload."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from fastapi.testclient import TestClient

import serving.app as app_module
from dataflows.flow import build_flow
from dataflows.records import RawRecord, SinkOp, WriteCheckpoint
from features.store import ProfileWriter, model_keys
from models.labels import next_snapshot_day
from models.online import OnlineModel, checkpoint_meta
from nextbest.settings import Settings
from serving.app import create_app
from tests.conftest import flow_config

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def rec(i: int, type_: str, ts: int, cid: str, **kw: Any) -> RawRecord:
    body = {"event_id": f"e{i}", "type": type_, "ts": ts, "customer_id": cid, **kw}
    return RawRecord(orjson.dumps(body), f"t:{i}")


def stream() -> list[RawRecord]:
    """One customer who never returns after day 0, one who buys on day 3, traffic until day 120."""
    out = [
        rec(1, "page_view", T0 + 1000, "gone"),
        rec(2, "page_view", T0 + 2000, "buyer"),
        rec(3, "purchase", T0 + 3 * DAY, "buyer", total=10.0, order_id="o1"),
    ]
    out += [rec(10 + d, "page_view", T0 + d * DAY + 5000, f"other{d % 5}") for d in range(4, 121)]
    return out


def checkpoints(
    records: list[RawRecord], idle_days: int = 7, batch_size: int = 1
) -> dict[str, WriteCheckpoint]:
    ops: list[SinkOp] = []
    cfg = flow_config(
        checkpoint_every=1_000_000, checkpoint_interval_ms=3_600_000, idle_snapshot_days=idle_days
    )
    source = TestingSource(records, batch_size=batch_size)
    run_main(build_flow(source, TestingSink(ops), TestingSink([]), config=cfg))
    return {op.target: op for op in ops if isinstance(op, WriteCheckpoint)}


def snapshot_counts() -> tuple[float, float, float]:
    from prometheus_client import REGISTRY

    def get(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    return (
        get("nextbest_training_snapshots_total", kind="event"),
        get("nextbest_training_snapshots_total", kind="idle"),
        get("nextbest_training_snapshots_skipped_total"),
    )


def _schedule(every: int, until_day: int = 119) -> dict[str, list[int]]:
    """Each customer's snapshot days: its grid days after its first event's day, up to the
    final watermark's day (day 120 + 5 s - the 10 min lateness: day 119)."""
    first = {"c:gone": 0, "c:buyer": 0} | {f"c:other{k}": 4 + k for k in range(5)}
    d0 = T0 // DAY  # days since T0 here; the grid is on epoch days
    return {
        key: [
            d - d0
            for d in range(next_snapshot_day(key, d0 + day, every), d0 + until_day + 1, every)
        ]
        for key, day in first.items()
    }


def test_labels_mature_in_event_time_even_for_customers_who_never_return() -> None:
    before = snapshot_counts()
    final = checkpoints(stream())
    after = snapshot_counts()
    days = _schedule(7)
    taken = [a - b for a, b in zip(after, before, strict=True)]
    # every customer's snapshot days (every 7 days on its own grid), whether it came or not
    assert taken[0] + taken[1] == sum(len(d) for d in days.values()) and taken[2] == 0
    assert taken[1] >= len(days["c:gone"]) - 1  # "gone" never comes back: ticks take them
    churn = checkpoint_meta(final["churn"].data)["metrics"]
    prop = checkpoint_meta(final["propensity"].data)["metrics"]
    # windows closed by the watermark (day 119.99): churn's (90 d) for the snapshots of days
    # <= 29, propensity's (7 d) for those of days <= 112
    assert churn["examples_seen"] == sum(1 for d in days.values() for x in d if x <= 29)
    assert prop["examples_seen"] == sum(1 for d in days.values() for x in d if x <= 112)
    # "gone" never bought: each of its matured snapshots is churned; "buyer" bought on day 3,
    # which is in the window of its first snapshot only if that is on day 3 (it is after the
    # first event): not churned then. Nobody else buys.
    bought = [x for x in days["c:buyer"] if x <= 3]
    assert churn["negatives"] == len(bought) and prop["positives"] == len(bought)
    assert churn["positives"] == churn["examples_seen"] - len(bought)
    # daily snapshots: about 7 times as many examples
    daily = checkpoint_meta(checkpoints(stream(), idle_days=1)["propensity"].data)["metrics"]
    assert daily["examples_seen"] == sum(1 for d in _schedule(1).values() for x in d if x <= 112)


def test_replay_is_deterministic_to_the_checkpoint_byte() -> None:
    a, b = checkpoints(stream()), checkpoints(stream())
    assert a.keys() == {"churn", "propensity"}
    assert all(a[t].data == b[t].data and a[t].version == b[t].version for t in a)


@pytest.mark.parametrize("batch_size", [2, 5, 10])
def test_the_model_does_not_depend_on_how_the_stream_is_batched(batch_size: int) -> None:
    """Living through a stream (events one by one) and replaying it (batches; here up to 10 days
    of this sparse stream per batch) learn the same examples in the same order: byte-identical
    checkpoints. (A batch spanning more than the pending cap's days stalls the watermark for that
    long; snapshots beyond the cap are skipped and counted, see models.labels.)"""
    one_by_one = checkpoints(stream())
    skipped = snapshot_counts()[2]
    batched = checkpoints(stream(), batch_size=batch_size)
    assert {t: c.data for t, c in batched.items()} == {t: c.data for t, c in one_by_one.items()}
    assert snapshot_counts()[2] == skipped


@pytest.fixture
def fast_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "MODEL_RELOAD_SECONDS", 0.05)


def _wait(client: TestClient, pred: Any, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = {m["model"]: m for m in client.get("/v1/models").json()["models"]}
        if pred(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_serving_reloads_checkpoints_and_falls_back(
    redis_url: str, redis_client: redis.Redis, fast_reload: None
) -> None:
    writer = ProfileWriter(redis_client)
    final = checkpoints(stream())
    with TestClient(create_app(Settings.from_env({}), redis_url)) as api:
        first = _wait(api, lambda b: True)
        assert first["churn"]["version"] is None and "prior" in first["churn"]["status"]
        batch: list[Any] = []
        version = final["churn"].version
        writer.checkpoint(batch, "churn", version, final["churn"].data)
        writer.execute(batch)
        body = _wait(api, lambda b: b["churn"]["version"] == version)
        assert body["churn"]["status"] == "loaded latest checkpoint"
        assert body["churn"]["examples_seen"] > 0
        # A corrupt newer checkpoint: serving keeps answering with the previous one, and says so.
        batch = []
        writer.checkpoint(batch, "churn", version + 1, b"NBCK garbage")
        writer.execute(batch)
        body = _wait(api, lambda b: "previous" in b["churn"]["status"])
        assert body["churn"]["version"] == version and "unusable" in body["churn"]["status"]
        assert redis_client.get(model_keys("churn")[2]) == str(version + 1).encode()
        metrics = api.get("/metrics").text
        assert f'nextbest_model_version{{model="churn"}} {float(version)}' in metrics


def test_profile_scores_come_from_the_prior_until_a_model_exists(
    redis_url: str, redis_client: redis.Redis
) -> None:
    run_main(build_flow(TestingSource(stream()[:2]), app_module_sink(redis_url), TestingSink([]),
                        config=flow_config()))  # fmt: skip
    with TestClient(create_app(Settings.from_env({}), redis_url)) as api:
        body = api.get("/v1/customers/gone/profile").json()
    scores = body["scores"]
    assert set(scores) == {"churn", "propensity", "p_alive", "expected_purchases_90d"}
    assert all(scores[t]["source"] == "prior" and 0 < scores[t]["probability"] < 1
               for t in ("churn", "propensity"))  # fmt: skip
    assert scores["p_alive"]["source"] == "none"  # no purchase, no population fit


def app_module_sink(url: str) -> Any:
    from dataflows.sinks import RedisSink

    return RedisSink(url)


def test_model_state_pickles() -> None:
    import pickle

    m = OnlineModel("propensity")
    assert pickle.loads(pickle.dumps(m)).to_checkpoint(1, 0) == m.to_checkpoint(1, 0)


def test_model_owner_resumes_from_a_snapshot_of_the_older_format() -> None:
    import pickle

    from dataflows.snapshots import load_model
    from dataflows.steps.models import ModelLogic

    m = OnlineModel("churn")
    older = pickle.dumps((m, 3, 0, 7))  # before examples were held
    logic = ModelLogic(load_model(older), flow_config())
    assert (logic.version, logic.held) == (3, [])
    assert logic.model is not None and logic.model.to_checkpoint(1, 0) == m.to_checkpoint(1, 0)
