"""The Redis layout of profiles (the one module of ``features`` that talks to Redis).

Keys are namespaced and Redis Cluster compatible: all of one customer's keys share a hash tag,
``nb:{c:<customer_id>}:profile`` (anonymous visitors: ``nb:{a:<anonymous_id>}:profile``). A profile
is one hash (small hashes use Redis's compact listpack/ziplist encoding) written with HSET of the
full state, never increments, so replays converge to the same bytes.

>>> profile_key("c:123")
'nb:{c:123}:profile'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import redis
import redis.asyncio as aioredis

from features.profile import ProfileState, from_fields, to_fields

NAMESPACE: Final = "nb"


def profile_key(key: str) -> str:
    """Redis key of the profile hash for a partition key (``c:…`` or ``a:…``)."""
    return f"{NAMESPACE}:{{{key}}}:profile"


def customer_key(customer_id: str) -> str:
    """Partition key of a customer id.

    >>> customer_key("42")
    'c:42'
    """
    return "c:" + customer_id


def write_profiles(client: redis.Redis | Any, states: Iterable[ProfileState]) -> int:
    """Write the full projection of each state in one pipelined round trip; returns how many."""
    pipe = client.pipeline(transaction=False)
    n = 0
    for st in states:
        fields: dict[Any, Any] = to_fields(st)
        pipe.hset(profile_key(st.key), mapping=fields)
        n += 1
    if n:
        pipe.execute()
    return n


def read_profile(client: redis.Redis | Any, key: str) -> ProfileState | None:
    """The stored state of a partition key, or ``None`` when there is none."""
    raw = client.hgetall(profile_key(key))
    return from_fields(raw) if raw else None


async def aread_profile(client: aioredis.Redis | Any, key: str) -> ProfileState | None:
    """Async :func:`read_profile` (one round trip), for serving."""
    raw = await client.hgetall(profile_key(key))
    return from_fields(raw) if raw else None
