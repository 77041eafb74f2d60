"""The Redis layout (the one module of ``features`` that talks to Redis).

Keys are namespaced and Redis Cluster compatible: all of one customer's keys share a hash tag.

==================================  =========================================================
``nb:{c:<customer_id>}:profile``    hash: the customer's profile (``profile.to_fields``)
``nb:{a:<anonymous_id>}:profile``   hash: an anonymous device's profile, until it is linked
``nb:{a:<anonymous_id>}:link``      string: the customer the device is linked to now
``nb:rfm:boundaries``               string: RFM quintile boundaries of the live population
``nb:{c:<customer_id>}:segments``   hash: the customer's memberships, segment -> since (ms)
``nb:{c:<customer_id>}:contacts``   hash: the contact counters (written by serving)
``nb:{c:<customer_id>}:devices``    set: every device and identifier ever linked (erasure)
``nb:{seg:<name>}:members``         sorted set: a segment's members scored by since (ms)
``nb:{seg:<name>}:exits``           sorted set: a segment's last exits, by time (ms)
``nb:{p:<product_id>}:product``     string: a product's knowledge (``features.products``, JSON)
``nb:{pop}:lists``                  hash: the popularity board's top lists, name -> JSON
``nb:{catalog}:items``              hash: the loaded catalogue, product id -> JSON
``nb:{catalog}:version``            string: the catalogue's version (changes on every load)
==================================  =========================================================

Writes are absolute: a profile is replaced whole by one registered Lua script call (``DEL`` +
``HSET`` atomically, so readers never see half a profile and fields that went away — pruned
window buckets — disappear), never incremented; replays converge to the same bytes.

>>> profile_key("c:123"), link_key("a9")
('nb:{c:123}:profile', 'nb:{a:a9}:link')
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import Any, Final, NamedTuple

import redis
import redis.asyncio as aioredis

from features.profile import LayoutError, ProfileView, from_fields, to_fields
from features.redis_conn import Command as Command
from features.redis_conn import send_raw
from features.rfm import RfmBoundaries
from features.store_keys import BOUNDARIES_KEY as BOUNDARIES_KEY
from features.store_keys import CATALOG_KEY as CATALOG_KEY
from features.store_keys import CATALOG_VERSION_KEY as CATALOG_VERSION_KEY
from features.store_keys import NAMESPACE as NAMESPACE
from features.store_keys import POPULAR_KEY as POPULAR_KEY
from features.store_keys import contacts_key as contacts_key
from features.store_keys import devices_key as devices_key
from features.store_keys import exits_key as exits_key
from features.store_keys import link_key as link_key
from features.store_keys import members_key as members_key
from features.store_keys import model_keys as model_keys
from features.store_keys import product_key as product_key
from features.store_keys import profile_key as profile_key
from features.store_keys import segments_key as segments_key
from schemas.keys import customer_key, device_key, is_device

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


#: Publish a checkpoint: KEYS = current, previous, version; ARGV = data, version.
PUBLISH_CHECKPOINT: Final = """
local cur = redis.call('GET', KEYS[1])
if cur then redis.call('SET', KEYS[2], cur) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2])
return 1
"""


class ProfileWriter:
    """Writes profile projections, links, drops and RFM boundaries, one round trip per batch.

    Commands are packed with hiredis and sent in one write (per node on a Redis Cluster,
    :func:`features.redis_conn.send_raw`): redis-py's pipeline packs every argument in Python,
    which dominated the write path. Every command is absolute, so a batch that failed on a
    connection error is simply sent again (with backoff).
    """

    def __init__(self, client: redis.Redis, retries: int = 8) -> None:
        self.client = client
        self.retries = retries
        scripts = (REPLACE_HASH, LINK_DEVICE, PUBLISH_CHECKPOINT)
        self._scripts = {hashlib.sha1(s.encode()).hexdigest(): s for s in scripts}
        self._replace_sha, self._link_sha, self._checkpoint_sha = self._scripts

    def register(self, script: str) -> str:
        """Register another Lua script (loaded on first use); its SHA1 for ``EVALSHA``."""
        sha = hashlib.sha1(script.encode()).hexdigest()
        self._scripts[sha] = script
        return sha

    def replace(self, batch: list[Command], key: str, fields: Mapping[str, str]) -> None:
        """Replace the profile hash of ``key`` with ``fields``."""
        batch.append(
            (
                "EVALSHA",
                self._replace_sha,
                1,
                profile_key(key),
                *chain.from_iterable(fields.items()),
            )
        )

    def drop(self, batch: list[Command], key: str) -> None:
        """Delete the profile of ``key``, its contact counters, and its link (a device) or its
        memberships (a customer): every key under its hash tag."""
        if is_device(key):
            batch.append(("DEL", profile_key(key), link_key(key[2:]), contacts_key(key)))
        else:
            batch.append(
                ("DEL", profile_key(key), segments_key(key), contacts_key(key), devices_key(key))
            )

    def status(self, batch: list[Command], key: str, data: bytes, ttl_s: int) -> None:
        """Store a status document (an erasure request's) for ``ttl_s`` seconds."""
        batch.append(("SET", key, data, "EX", ttl_s))

    def link(self, batch: list[Command], anonymous_id: str, customer_id: str) -> None:
        """Point the device (or identifier) at its customer; its anonymous profile goes."""
        batch.append(
            ("EVALSHA", self._link_sha, 2, profile_key(device_key(anonymous_id)),
             link_key(anonymous_id), customer_id)
        )  # fmt: skip

    def linked_device(self, batch: list[Command], customer_id: str, anonymous_id: str) -> None:
        """Add a device (or identifier) to the customer's set of every one ever linked to it
        (what an erasure must reach)."""
        batch.append(("SADD", devices_key(customer_key(customer_id)), anonymous_id))

    def checkpoint(self, batch: list[Command], target: str, version: int, data: bytes) -> None:
        """Publish a model checkpoint; the current one becomes the previous (the fallback)."""
        batch.append(("EVALSHA", self._checkpoint_sha, 3, *model_keys(target), data, version))

    def segments(self, batch: list[Command], key: str, members: Mapping[str, int]) -> None:
        """Replace a customer's memberships (segment -> since)."""
        flat = chain.from_iterable((name, str(since)) for name, since in sorted(members.items()))
        batch.append(("EVALSHA", self._replace_sha, 1, segments_key(key), *flat))

    def index(
        self,
        batch: list[Command],
        segment: str,
        customer_id: str,
        since: int | None,
    ) -> None:
        """Add a customer to a segment's index (``since``) or remove it (``None``)."""
        if since is None:
            batch.append(("ZREM", members_key(segment), customer_id))
        else:
            batch.append(("ZADD", members_key(segment), since, customer_id))

    def exit(self, batch: list[Command], segment: str, customer_id: str, at: int | None) -> None:
        """Set a customer's last exit from a segment (``at``) or forget it (``None``)."""
        if at is None:
            batch.append(("ZREM", exits_key(segment), customer_id))
        else:
            batch.append(("ZADD", exits_key(segment), at, customer_id))

    def product(self, batch: list[Command], product_id: str, data: bytes) -> None:
        """Replace a product's knowledge."""
        batch.append(("SET", product_key(product_id), data))

    def popular(self, batch: list[Command], lists: Mapping[str, bytes]) -> None:
        """Replace the popularity board's lists whole."""
        args: list[str | bytes] = []
        for name, data in lists.items():
            args.extend((name, data))
        batch.append(("EVALSHA", self._replace_sha, 1, POPULAR_KEY, *args))

    def boundaries(self, batch: list[Command], data: bytes) -> None:
        """Publish RFM boundaries."""
        batch.append(("SET", BOUNDARIES_KEY, data))

    def send(
        self, batch: list[Command], on_reply: Callable[[Command, Any], None] | None = None
    ) -> list[tuple[Command, redis.ResponseError]]:
        """Send the batch in one round trip (per node on a Redis Cluster; loading the scripts
        Redis does not know) and return the commands answered with an error reply, with the
        error; ``on_reply(command, reply)`` sees every other reply. Connection errors, timeouts
        and a loading server raise; every command is absolute, so the caller may simply send
        the batch again."""
        pending = batch
        failed: list[tuple[Command, redis.ResponseError]] = []
        while pending:
            missing: list[Command] = []
            for cmd, reply in zip(pending, send_raw(self.client, pending), strict=True):
                if isinstance(reply, redis.exceptions.NoScriptError):
                    missing.append(cmd)
                elif isinstance(reply, redis.ResponseError):
                    failed.append((cmd, reply))
                elif on_reply is not None:
                    on_reply(cmd, reply)
            for sha in {c[1] for c in missing}:
                self.client.script_load(self._scripts[str(sha)])  # (every primary of a cluster)
            pending = missing
        return failed

    def execute(self, batch: list[Command]) -> None:
        """:meth:`send` with a few retries on connection errors; an error reply raises (tools
        and tests; the dataflow's sink has its own retry policy)."""
        delay = 0.05
        for attempt in range(self.retries + 1):
            try:
                failed = self.send(batch)
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == self.retries:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if failed:
                raise failed[0][1]
            return


def write_states(client: redis.Redis, states: Iterable[Any]) -> int:
    """Replace the projections of some profile states in one round trip (tests, tools)."""
    writer = ProfileWriter(client)
    batch: list[Command] = []
    for st in states:
        writer.replace(batch, st.key, to_fields(st))
    writer.execute(batch)
    return len(batch)


def _boundaries(raw: bytes | None) -> RfmBoundaries | None:
    if not raw:
        return None
    try:
        return RfmBoundaries.decode(raw)
    except Exception:  # a corrupt publication must not break reads
        return None


def decode_profile(raw: Mapping[Any, Any] | None) -> ProfileView | None:
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
    return decode_profile(raw), _boundaries(bounds)


def read_link(client: redis.Redis, anonymous_id: str) -> str | None:
    """The customer a device is linked to, if any."""
    v = client.get(link_key(anonymous_id))
    return v.decode() if isinstance(v, bytes) else v


class StoredProfile(NamedTuple):
    """A partition key's stored view, the RFM boundaries, and its segment memberships
    (segment -> since, epoch ms; empty for a device or a customer in no segment)."""

    view: ProfileView | None
    bounds: RfmBoundaries | None
    segments: dict[str, int]


def decode_memberships(raw: Mapping[Any, Any] | None) -> dict[str, int]:
    """A stored memberships hash as segment -> since (ms); unreadable fields are skipped.

    >>> decode_memberships({b"at_risk": b"1000", b"odd": b"x"})
    {'at_risk': 1000}
    """
    out: dict[str, int] = {}
    for k, v in (raw or {}).items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        try:
            out[name] = int(v)
        except (TypeError, ValueError):
            continue
    return out


def _queue_stored(pipe: Any, key: str) -> None:
    pipe.hgetall(profile_key(key))
    pipe.get(BOUNDARIES_KEY)
    pipe.hgetall(segments_key(key))


def _stored(results: list[Any]) -> StoredProfile:
    raw, bounds, members = results
    return StoredProfile(decode_profile(raw), _boundaries(bounds), decode_memberships(members))


def read_stored_profile(client: redis.Redis, key: str) -> StoredProfile:
    """:func:`read_profile` plus the key's segment memberships, still one round trip."""
    pipe = client.pipeline(transaction=False)
    _queue_stored(pipe, key)
    return _stored(pipe.execute())


async def aread_stored_profile(client: aioredis.Redis, key: str) -> StoredProfile:
    """Async :func:`read_stored_profile` (one round trip), for serving."""
    pipe = client.pipeline(transaction=False)
    _queue_stored(pipe, key)
    return _stored(await pipe.execute())


async def aread_profile(
    client: aioredis.Redis, key: str
) -> tuple[ProfileView | None, RfmBoundaries | None]:
    """Async :func:`read_profile` (one round trip), for serving."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(profile_key(key))
    pipe.get(BOUNDARIES_KEY)
    raw, bounds = await pipe.execute()
    return decode_profile(raw), _boundaries(bounds)


async def aread_link(client: aioredis.Redis, anonymous_id: str) -> str | None:
    """Async :func:`read_link`."""
    v = await client.get(link_key(anonymous_id))
    return v.decode() if isinstance(v, bytes) else v
