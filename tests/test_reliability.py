"""Reliability of the edges: bounded dead letters, sink failure policy, embedded Redis
persistence, Kafka positions outside their partition, topic changes (real Redis, real broker)."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.records import RawRecord, Rejected, WriteProfile, encode_dead_letter
from dataflows.sinks import DeadLetterKafkaSink, RedisSink, SinkGaveUp, SinkOptions
from dataflows.sources import (
    KafkaTopicsSource,
    StopRequest,
    TopicWatch,
    topic_layout,
    wait_for_topics,
)
from features import profile as pf
from nextbest.runtime import embedded_redis, ensure_topics, free_port
from schemas.events import DecodeError, Event
from tests.chaos import produce

# ---------------------------------------------------------------------------------------------
# dead letters are bounded


@settings(max_examples=60, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=30_000),
        st.text(max_size=20_000).map(str.encode),
        st.integers(0, 40_000).map(lambda n: b"\x01" * n),
        st.integers(0, 40_000).map(lambda n: 'é"\\'.encode() * n),
    ),
    max_bytes=st.integers(4096, 70_000),
)
def test_a_dead_letter_record_always_fits(data: bytes, max_bytes: int) -> None:
    rej = Rejected(RawRecord(data, "kafka:t:0:1"), DecodeError("too_large", "d"))
    out = encode_dead_letter(rej, max_bytes, now_ms=5)
    assert len(out) <= max_bytes
    doc = orjson.loads(out)
    if doc.get("truncated"):
        assert doc["original_size"] == len(data)
        assert doc["sha256"] == hashlib.sha256(data).hexdigest()
        kept = doc["data"].encode() if "data" in doc else None
        assert kept is None or data.startswith(kept)
    else:
        assert out == encode_dead_letter(rej, 10**9, now_ms=5)  # untouched when it fits
    assert doc["reason"] == "too_large" and doc["position"] == "kafka:t:0:1"


def test_poison_payloads_make_records_under_the_bound() -> None:
    for data in (b"x" * 1_000_000, b"\x01" * 200_000, b"[" * 10_000, b"\xff\xfe" * 300_000, b""):
        out = encode_dead_letter(Rejected(RawRecord(data, "p"), DecodeError("too_large")))
        assert len(out) <= 65_536


# ---------------------------------------------------------------------------------------------
# the sinks' failure policy


def _profile(key: str) -> WriteProfile:
    st_ = pf.new_state(key)
    pf.ingest(st_, Event(event_id="e", type="page_view", ts=1_000, customer_id=key[2:]), 0)
    return WriteProfile(key, st_)


def test_redis_sink_gives_up_only_at_its_ceiling(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens
    sink = RedisSink(url, SinkOptions(retry_limit_ms=1500, fallback_dir=tmp_path), watch=False)
    part = sink.build("write_redis", 0, 1)
    t0 = time.monotonic()
    with pytest.raises(SinkGaveUp, match="NEXTBEST_SINK_RETRY_LIMIT"):
        part.write_batch([_profile("c:1")])
    assert 1.5 <= time.monotonic() - t0 < 10
    assert metric_sum_local('nextbest_sink_stalled{sink="redis"}') == 1
    assert metric_sum_local('nextbest_redis_write_failures_total{error="connection"}') > 1


def metric_sum_local(name: str) -> float:
    """A sample of this process's registry (the sinks ran in-process)."""
    from prometheus_client import REGISTRY, generate_latest

    text = generate_latest(REGISTRY).decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))  # fmt: skip


def test_redis_error_reply_goes_to_the_fallback_and_the_rest_is_written(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A command Redis refuses for good (here: an ACL forbids the key) is counted and kept in
    the fallback file; the other commands of the batch are applied; nothing raises."""
    user = f"limited-{uuid.uuid4().hex[:6]}"
    redis_client.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["nb:{c:ok}*",
                             "nb:projection"], commands=["+@all"])  # fmt: skip
    try:
        if redis_url.startswith("unix://"):
            url = f"unix://{user}:pw@{redis_url[len('unix://') :]}"
        else:
            url = redis_url.replace("redis://", f"redis://{user}:pw@")
        sink = RedisSink(url, SinkOptions(fallback_dir=tmp_path), watch=False)
        part = sink.build("write_redis", 0, 1)
        part.write_batch([_profile("c:ok"), _profile("c:forbidden")])
        part.close()
        assert redis_client.exists("nb:{c:ok}:profile")
        assert not redis_client.exists("nb:{c:forbidden}:profile")
        lines = (tmp_path / "redis-failures.jsonl").read_bytes().splitlines()
        assert len(lines) == 1
        rec = orjson.loads(lines[0])
        assert rec["key"] == "nb:{c:forbidden}:profile" and "permission" in rec["error"]
    finally:
        redis_client.acl_deluser(user)


def test_dead_letter_producer_errors_go_to_the_fallback(kafka_brokers: str, tmp_path: Path) -> None:
    """A record the producer refuses (over its message limit) goes to the fallback file; the
    others are produced; the flow is not stopped."""
    topic = "fb-dead"
    ensure_topics(kafka_brokers, [topic], 1)
    sink = DeadLetterKafkaSink(
        kafka_brokers, topic, SinkOptions(fallback_dir=tmp_path, dead_letter_max_bytes=20_000),
        config={"message.max.bytes": "5000"},
    )  # fmt: skip
    part = sink.build("dead_letter", 0, 1)
    big = Rejected(RawRecord(b"y" * 15_000, "kafka:in:0:1"), DecodeError("too_large"))
    small = Rejected(RawRecord(b"{", "kafka:in:0:2"), DecodeError("invalid_json"))
    part.write_batch([big, small])
    part.close()
    fallback = [orjson.loads(x) for x in (tmp_path / "dead-letter.jsonl").read_bytes().splitlines()]
    assert [f["record"]["position"] for f in fallback] == ["kafka:in:0:1"]
    assert fallback[0]["error_kind"] == "msg_size_too_large"
    assert [r["position"] for r in _consume(kafka_brokers, topic, 1)] == ["kafka:in:0:2"]


def _consume(brokers: str, topic: str, n: int, timeout: float = 20) -> list[dict[str, object]]:
    c = Consumer({"bootstrap.servers": brokers, "group.id": uuid.uuid4().hex,
                  "enable.auto.commit": "false"})  # fmt: skip
    c.assign([TopicPartition(topic, 0, 0)])
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append(orjson.loads(msg.value()))
    finally:
        c.close()
    return out


# ---------------------------------------------------------------------------------------------
# the embedded Redis persists


def test_embedded_redis_persists_and_survives_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = embedded_redis(tmp_path / "home")
    with caplog.at_level(logging.INFO, logger="nextbest.runtime"), service.use() as url:
        client = redis.Redis.from_url(url)
        assert client.config_get("save")["save"] == "3600 1 300 100 60 1000"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        client.set("nb:kept", "1")
        time.sleep(1.5)  # the append-only file is synced every second
        pid = int(client.info("server")["process_id"])
        client.close()
        os.kill(pid, signal.SIGKILL)  # no save on the way out
        time.sleep(0.3)
    assert any("append-only file" in r.getMessage() for r in caplog.records)
    with service.use() as url:  # started again from its files
        client = redis.Redis.from_url(url)
        assert client.get("nb:kept") == b"1"
        client.close()


# ---------------------------------------------------------------------------------------------
# Kafka positions outside their partition; topic changes


def _read(part: object, want: int, timeout: float = 15) -> list[RawRecord]:
    out: list[RawRecord] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        out.extend(part.next_batch())  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("policy", ["earliest", "latest", "fail"])
def test_a_position_beyond_the_partition_follows_the_policy(
    kafka_brokers: str, policy: str
) -> None:
    topic = f"pol-{policy}"
    ensure_topics(kafka_brokers, [topic], 1)
    for i in range(5):  # one at a time: tansu's high watermark lags a batch behind
        produce(kafka_brokers, topic, [b'{"n":%d}' % i])
    layout = topic_layout(kafka_brokers, [topic])
    stop = StopRequest()
    source = KafkaTopicsSource(kafka_brokers, layout, offset_reset=policy, stop=stop)
    part = source.build_part("read", f"0-{topic}", (10_000, layout[topic][1]))
    if policy == "earliest":
        assert [r.data for r in _read(part, 5)] == [b'{"n":%d}' % i for i in range(5)]
    elif policy == "latest":
        assert _read(part, 1, timeout=2) == []
        produce(kafka_brokers, topic, [b'{"n":5}'])
        assert [r.data for r in _read(part, 1)] == [b'{"n":5}']
    else:
        assert stop.failed and "NEXTBEST_KAFKA_OFFSET_RESET=fail" in stop.why
    part.close()
    assert metric_sum_local(f'nextbest_kafka_offset_resets_total{{policy="{policy}"}}') >= 1


def test_a_recreated_topic_is_read_from_its_start(kafka_brokers: str) -> None:
    """A stored position of another incarnation of the topic (other topic id) is not used,
    even when it lies inside the new partition: it would skip records silently."""
    topic = "pol-recreated"
    ensure_topics(kafka_brokers, [topic], 1)
    produce(kafka_brokers, topic, [b'{"n":%d}' % i for i in range(5)])
    layout = topic_layout(kafka_brokers, [topic])
    assert layout[topic][1], "the broker gives topic ids"
    source = KafkaTopicsSource(kafka_brokers, layout)
    part = source.build_part("read", f"0-{topic}", (2, "an-older-topic-id"))
    assert len(_read(part, 5)) == 5
    part.close()
    old = source.build_part("read", f"0-{topic}", 3)  # Bytewax's format: a bare offset
    assert [r.data for r in _read(old, 2)] == [b'{"n":3}', b'{"n":4}']
    old.close()


def test_topic_watch_sees_partitions_added_and_a_recreated_topic(kafka_brokers: str) -> None:
    topic = "watch-me"
    ensure_topics(kafka_brokers, [topic], 2)
    n, tid = topic_layout(kafka_brokers, [topic])[topic]
    assert n == 2
    stop = StopRequest()
    assert TopicWatch(kafka_brokers, {topic: (2, tid)}, stop, 1).change() is None
    grown = TopicWatch(kafka_brokers, {topic: (1, tid)}, stop, 1).change()
    assert grown is not None and grown[0] == "partitions_added"
    other = TopicWatch(kafka_brokers, {topic: (2, "old-id")}, stop, 1).change()
    assert other is not None and other[0] == "recreated"
    gone = TopicWatch(kafka_brokers, {topic: (2, tid), "never-made": (1, None)}, stop, 1).change()
    assert gone is not None and gone[0] == "deleted"


def test_run_waits_for_a_missing_topic(kafka_brokers: str) -> None:
    stop = threading.Event()
    ensure_topics(kafka_brokers, ["here"], 1)
    assert wait_for_topics(kafka_brokers, ["here"], stop) == topic_layout(kafka_brokers, ["here"])
    threading.Timer(1.0, stop.set).start()
    t0 = time.monotonic()
    assert wait_for_topics(kafka_brokers, ["not-yet"], stop, interval_s=0.2) is None
    assert time.monotonic() - t0 >= 0.9


def test_a_far_future_event_in_a_replayed_file_does_not_stop_the_flow(tmp_path: Path) -> None:
    """Files carry no record time, so `replay` applies an event dated 2066: the watermark jumps
    and every label matures at once; the model owners must order the resulting examples (they
    crashed on a tie with a TypeError before) and the replay must finish."""
    from nextbest.simulator import SimConfig, generate
    from tests.conftest import nextbest_cli

    lines = list(generate(SimConfig(customers=300, days=10, seed=2)))
    bogus = b'{"event_id":"bogus","type":"page_view","ts":"2066-01-05T00:00:00Z",' + (
        b'"customer_id":"c-0000001"}'
    )
    lines.insert(len(lines) // 2, bogus)
    src = tmp_path / "f.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    env = {"NEXTBEST_HOME": str(tmp_path / "home"), "NEXTBEST_METRICS_PORT": "0"}
    out = nextbest_cli("replay", str(src), "--json", env=env, timeout=300)
    assert orjson.loads(out.stdout)["read"] == len(lines)


def test_owners_publish_again_on_a_reprojection() -> None:
    """After Redis lost its data the RFM owner re-publishes its boundaries at once (not only
    after the next 1,000 changes), and a model owner without a model publishes nothing."""
    from dataflows.records import Reproject, WriteBoundaries
    from dataflows.steps.models import ModelLogic
    from dataflows.steps.rfm import RfmLogic
    from features.rfm import rfm_point
    from tests.conftest import flow_config

    cfg = flow_config()
    owner = RfmLogic(None, cfg)
    points = [(None, rfm_point(i + 1, 10.0 * i, 1_767_225_600_000 + i)) for i in range(20)]
    out, _ = owner.on_batch(points)  # a new day: the population fit is published with them
    assert [type(o) for o in out] == [WriteBoundaries]
    more = [(None, rfm_point(2, 10.0, 1_767_225_700_000 + i)) for i in range(20)]
    out, _ = owner.on_batch(more)
    assert list(out) == []  # the same day, fewer changes than rfm_publish_every
    out, _ = owner.on_batch([Reproject()])
    assert [type(o) for o in out] == [WriteBoundaries]
    model_owner = ModelLogic(None, cfg)
    out, _ = model_owner.on_batch([("reproject", None)])
    assert list(out) == []


def test_dead_letter_sink_stalls_while_the_broker_is_away(tmp_path: Path) -> None:
    """Undelivered dead letters are not dropped: the sink waits for the broker (stalled gauge
    1) and only gives up at its ceiling, saying why."""
    sink = DeadLetterKafkaSink(
        f"127.0.0.1:{free_port()}", "nowhere",  # nobody listens
        SinkOptions(fallback_dir=tmp_path, retry_limit_ms=1000),
    )  # fmt: skip
    part = sink.build("dead_letter", 0, 1)
    rej = Rejected(RawRecord(b"{", "kafka:in:0:9"), DecodeError("invalid_json"))
    t0 = time.monotonic()
    with pytest.raises(SinkGaveUp, match="dead_letter sink: gave up"):
        part.write_batch([rej])
    assert time.monotonic() - t0 >= 1.0
    assert metric_sum_local('nextbest_sink_stalled{sink="dead_letter"}') == 1
    assert not (tmp_path / "dead-letter.jsonl").exists()  # not given up on as undeliverable
    # (the process that gave up exits; here the queued record, whose callback holds the sink,
    # would keep its producer dialling nobody for the rest of the session)
    part._producer.purge()  # type: ignore[attr-defined]
    part._producer.poll(0)  # type: ignore[attr-defined]
