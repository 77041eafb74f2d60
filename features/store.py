"""The Redis layout (the one module of ``features`` that talks to Redis).

Keys are namespaced and Redis Cluster compatible: all of one customer's keys share a hash tag.

==================================  =========================================================
``nb:{c:<customer_id>}:profile``    hash: the customer's profile (``profile.to_fields``)
``nb:{a:<anonymous_id>}:profile``   hash: an anonymous device's profile, until it is linked
``nb:{a:<anonymous_id>}:link``      string: the customer the device is linked to now
``nb:rfm:boundaries``               string: RFM quintile boundaries of the live population
==================================  =========================================================

Writes are absolute: a profile is replaced whole by one registered Lua script call (``DEL`` +
``HSET`` atomically, so readers never see half a profile and fields that went away — pruned
window buckets — disappear), never incremented; replays converge to the same bytes.

>>> profile_key("c:123"), link_key("a9")
('nb:{c:123}:profile', 'nb:{a:a9}:link')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import redis
import redis.asyncio as aioredis

from features.profile import LayoutError, ProfileView, from_fields, to_fields
from features.rfm import RfmBoundaries

NAMESPACE: Final = "nb"
BOUNDARIES_KEY: Final = f"{NAMESPACE}:rfm:boundaries"

#: Replace a hash whole: KEYS[1] = hash, ARGV = field, value, field, value, ...
REPLACE_HASH: Final = """
redis.call('DEL', KEYS[1])
if #ARGV > 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return 1
"""
#: Link a device: KEYS[1] = its anonymous profile (deleted), KEYS[2] = its link, ARGV[1] = customer.
LINK_DEVICE: Final = """
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""


def profile_key(key: str) -> str:
    """Redis key of the profile hash for a partition key (``c:…`` or ``a:…``)."""
    return f"{NAMESPACE}:{{{key}}}:profile"


def link_key(anonymous_id: str) -> str:
    """Redis key of a device's current link."""
    return f"{NAMESPACE}:{{a:{anonymous_id}}}:link"


def customer_key(customer_id: str) -> str:
    """Partition key of a customer id.

    >>> customer_key("42")
    'c:42'
    """
    return "c:" + customer_id


def device_key(anonymous_id: str) -> str:
    """Partition key of an anonymous device."""
    return "a:" + anonymous_id


class ProfileWriter:
    """Pipelined writes of profile projections, links, drops and RFM boundaries."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._replace = client.register_script(REPLACE_HASH)
        self._link = client.register_script(LINK_DEVICE)

    def pipeline(self) -> Any:
        """A non-transactional pipeline (one round trip per batch)."""
        return self.client.pipeline(transaction=False)

    def replace(self, pipe: Any, key: str, fields: Mapping[str, str]) -> None:
        """Replace the profile hash of ``key`` with ``fields``."""
        args: list[str] = []
        for f, v in fields.items():
            args.append(f)
            args.append(v)
        self._replace(keys=[profile_key(key)], args=args, client=pipe)

    def drop(self, pipe: Any, key: str) -> None:
        """Delete the profile of ``key`` (and the link, for a device)."""
        if key.startswith("a:"):
            pipe.delete(profile_key(key), link_key(key[2:]))
        else:
            pipe.delete(profile_key(key))

    def link(self, pipe: Any, anonymous_id: str, customer_id: str) -> None:
        """Point the device at its customer; its anonymous profile goes."""
        self._link(
            keys=[profile_key(device_key(anonymous_id)), link_key(anonymous_id)],
            args=[customer_id],
            client=pipe,
        )

    def boundaries(self, pipe: Any, data: bytes) -> None:
        """Publish RFM boundaries."""
        pipe.set(BOUNDARIES_KEY, data)


def write_states(client: redis.Redis, states: Iterable[Any]) -> int:
    """Replace the projections of some profile states in one round trip (tests, tools)."""
    writer = ProfileWriter(client)
    pipe = writer.pipeline()
    n = 0
    for st in states:
        writer.replace(pipe, st.key, to_fields(st))
        n += 1
    if n:
        pipe.execute()
    return n


def _boundaries(raw: bytes | None) -> RfmBoundaries | None:
    if not raw:
        return None
    try:
        return RfmBoundaries.decode(raw)
    except Exception:  # a corrupt publication must not break reads
        return None


def _view(raw: Mapping[Any, Any] | None) -> ProfileView | None:
    """Decode a stored hash; an empty hash or one of an older layout reads as absent."""
    if not raw:
        return None
    try:
        return from_fields(raw)
    except LayoutError:  # written by an older version: replay to rebuild it
        return None


def read_profile(client: redis.Redis, key: str) -> tuple[ProfileView | None, RfmBoundaries | None]:
    """The stored view of a partition key and the RFM boundaries, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(profile_key(key))
    pipe.get(BOUNDARIES_KEY)
    raw, bounds = pipe.execute()
    return _view(raw), _boundaries(bounds)


def read_link(client: redis.Redis, anonymous_id: str) -> str | None:
    """The customer a device is linked to, if any."""
    v = client.get(link_key(anonymous_id))
    return v.decode() if isinstance(v, bytes) else v


async def aread_profile(
    client: aioredis.Redis, key: str
) -> tuple[ProfileView | None, RfmBoundaries | None]:
    """Async :func:`read_profile` (one round trip), for serving."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(profile_key(key))
    pipe.get(BOUNDARIES_KEY)
    raw, bounds = await pipe.execute()
    return _view(raw), _boundaries(bounds)


async def aread_link(client: aioredis.Redis, anonymous_id: str) -> str | None:
    """Async :func:`read_link`."""
    v = await client.get(link_key(anonymous_id))
    return v.decode() if isinstance(v, bytes) else v
