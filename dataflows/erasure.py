"""Erasure records in the dataflow: a request read from the input, the per-step order to forget
a key, the steps' acknowledgements, what the request waits for, its status write (the step that
collects them is :mod:`dataflows.steps.erasure`; the request itself, :mod:`schemas.erasure`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from schemas.erasure import ErasureRequest
from schemas.keys import customer_key, device_key


class EraseIn(msgspec.Struct, frozen=True, array_like=True):
    """An erasure request read from the input, with its source position."""

    request: ErasureRequest
    position: str


class Erase(msgspec.Struct, frozen=True, array_like=True):
    """Forget the key this item is routed to (part ``part`` of request ``request_id``); an owner
    step (models, feedback, baskets) forgets what it holds of the keys ``forget``."""

    request_id: str
    part: str
    position: str = ""
    ts: int = 0
    forget: tuple[str, ...] = ()


class Ack(msgspec.Struct, frozen=True, array_like=True):
    """Part ``part`` of request ``request_id`` was applied."""

    request_id: str
    part: str


class Expect(msgspec.Struct, frozen=True, array_like=True):
    """The parts request ``request_id`` (asked at ``ts``) waits for."""

    request_id: str
    parts: tuple[str, ...]
    ts: int


class WriteStatus(msgspec.Struct, frozen=True, array_like=True):
    """Store an erasure request's status document (a sink operation)."""

    request_id: str
    data: bytes


def person_keys(req: ErasureRequest) -> tuple[str, ...]:
    """Every key of the person: the customer, its devices, its identifiers (tokens).

    >>> person_keys(ErasureRequest("0" * 32, "42", ("d-1",), ("em:" + "1" * 32,), 0))
    ('a:d-1', 'a:em:11111111111111111111111111111111', 'c:42')
    """
    return tuple(sorted({customer_key(req.customer_id), *map(device_key, req.anonymous_ids),
                         *map(device_key, req.identifiers)}))  # fmt: skip


def fan_out(owners: tuple[str, ...]) -> Callable[[EraseIn], list[tuple[str, Any]]]:
    """What a request sends: an :class:`Erase` to the profile (``c:``), to each device and
    identifier (``a:``) and to each owner key of ``owners`` (``model:<target>``,
    ``feedback:<n>``, ``basket:<n>``), and an :class:`Expect` to its own step (``erasure:``).

    >>> r = ErasureRequest("0" * 32, "42", ("d-1",), (), 5)
    >>> [k for k, _ in fan_out(("model:churn",))(EraseIn(r, "kafka:t:0:9"))]
    ['c:42', 'a:d-1', 'model:churn', 'erasure:00000000000000000000000000000000']
    """

    def fan(item: EraseIn) -> list[tuple[str, Any]]:
        req, pos = item.request, item.position
        rid, ts = req.request_id, req.ts
        ck = customer_key(req.customer_id)
        out: list[tuple[str, Any]] = [(ck, (ck, Erase(rid, "profile", pos, ts)))]
        named = sorted({*req.anonymous_ids, *req.identifiers})
        keys = person_keys(req)
        for a in named:
            dk = device_key(a)
            out.append((dk, (dk, Erase(rid, "device:" + a, pos, ts, keys))))
        out.extend((o, ("erase", Erase(rid, o, pos, ts, keys))) for o in owners)
        expected = tuple(sorted({"profile", *("device:" + a for a in named), *owners}))
        out.append(("erasure:" + rid, Expect(rid, expected, ts)))
        return out

    return fan
