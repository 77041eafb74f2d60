"""``nextbest erase ID``: forget a customer everywhere the engine keeps data.

The same request as ``DELETE /v1/customers/{id}`` (:mod:`schemas.erasure`): a pending status in
Redis, then the request on the transactions topic for the dataflow (``run``) to apply. Prints the
request id; ``--wait S`` waits up to S seconds for ``done`` (exit 1 if it is not done by then).
``nextbest erase --status RID`` prints a request's status (exit 1: unknown).
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson

from nextbest.commands.common import EXIT_NOT_FOUND, UsageError
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser("erase", help="forget a customer everywhere (an erasure request)")
    e.add_argument("customer_id", nargs="?", metavar="ID", help="the customer to forget")
    e.add_argument("--status", metavar="RID", help="print the status of request RID instead")
    e.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for the dataflow to finish it")  # fmt: skip
    e.set_defaults(func=cmd_erase)


def cmd_erase(args: argparse.Namespace, settings: Settings) -> int:
    from features.redis_conn import connect
    from nextbest.runtime import redis_url

    if (args.customer_id is None) == (args.status is None):
        raise UsageError("erase: give a customer ID, or --status RID")
    with redis_url(settings) as url:
        client = connect(url)
        try:
            if args.status is not None:
                return _print_status(client, args.status)
            rid = _submit(client, settings, args.customer_id)
            print(rid)
            deadline = time.monotonic() + args.wait
            while args.wait > 0:
                doc = _status(client, rid)
                if doc is not None and doc["status"] == "done":
                    print(orjson.dumps(doc).decode(), file=sys.stderr)
                    return 0
                if time.monotonic() >= deadline:
                    print(f"nextbest: erasure {rid} not done after {args.wait:g} s (is `run` "
                          "running?)", file=sys.stderr)  # fmt: skip
                    return 1
                time.sleep(0.2)
            return 0
        finally:
            client.close()


def _status(client: object, rid: str) -> dict[str, object] | None:
    from schemas.erasure import status_key

    raw = client.get(status_key(rid))  # type: ignore[attr-defined]
    return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]


def _print_status(client: object, rid: str) -> int:
    doc = _status(client, rid)
    if doc is None:
        print(f"nextbest: no erasure request {rid!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(orjson.dumps(doc).decode())
    return 0


def _submit(client: object, settings: Settings, customer_id: str) -> str:
    from confluent_kafka import Producer

    from features.store import devices_key, read_stored_profile
    from nextbest.runtime import ensure_topics, kafka_brokers
    from schemas.erasure import (
        STATUS_TTL_S,
        encode_request,
        new_request,
        status_key,
    )
    from schemas.events import MAX_ID_LEN
    from schemas.keys import customer_key
    from serving.erasure import linked_of

    if not customer_id or len(customer_id) > MAX_ID_LEN:
        raise UsageError(f"erase: the customer id must be 1 to {MAX_ID_LEN} characters")
    now_ms = time.time_ns() // 1_000_000
    key = customer_key(customer_id)
    linked = client.smembers(devices_key(key))  # type: ignore[attr-defined]
    devices, tokens = linked_of(read_stored_profile(client, key).view, linked)  # type: ignore[arg-type]
    req, doc = new_request(customer_id, devices, tokens, now_ms)
    rid = req.request_id
    client.set(status_key(rid), orjson.dumps(doc), ex=STATUS_TTL_S)  # type: ignore[attr-defined]
    with kafka_brokers(settings) as brokers:
        ensure_topics(brokers, settings.topics, settings.topic_partitions)
        producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
        producer.produce(settings.topic_transactions, encode_request(req),
                         customer_key(customer_id).encode())  # fmt: skip
        if producer.flush(10) != 0:
            client.delete(status_key(rid))  # type: ignore[attr-defined]
            raise UsageError(f"erase: the broker at {brokers} did not take the request")
    return rid
