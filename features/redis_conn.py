"""Clients of the configured Redis: one server or a Redis Cluster (part of the store adapter,
:mod:`features.store`, split out for size).

The URL says which. ``redis://``, ``rediss://`` and ``unix://`` are one server;
``redis+cluster://`` and ``rediss+cluster://`` are a Redis Cluster, reached through any of its
nodes (the client discovers the others and the slot map). ``NEXTBEST_REDIS_CLUSTER=on`` turns
the configured URL into its cluster form (:func:`cluster_url`), so everything that is handed the
URL connects the right way.

Every key is hash-tagged (:mod:`features.store_keys`), so each command touches one slot, and so
does each Lua script (all of its keys share one tag). Pipelines are never transactional: the
cluster client splits them per node. What a cluster needs beyond the command methods is here:
:func:`send_raw` (the write path's packed commands, per node, following ``MOVED`` and ``ASK``),
:func:`scan_pages` (``SCAN`` walks every primary) and :func:`aclose`.

A cluster client is typed as its one-server counterpart (``redis.Redis``,
``redis.asyncio.Redis``): it has the same command methods; what differs is handled here.

>>> cluster_url("redis://h:7000/0"), is_cluster_url("rediss+cluster://h:7000")
('redis+cluster://h:7000/0', True)
>>> seed_url("redis+cluster://:pw@h:7000"), seed_url("unix:///tmp/r.sock")
('redis://:pw@h:7000', 'unix:///tmp/r.sock')
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from typing import Any, Final, cast

import hiredis
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import AskError, MovedError, RedisClusterException

#: Cluster URL schemes and the scheme of their seed node.
CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
#: How many times :func:`send_raw` follows ``MOVED``/``ASK`` redirections in one call.
MAX_REDIRECTS: Final = 5
_ASKING: Final = hiredis.pack_command(("ASKING",))  # type: ignore[arg-type]

Command = tuple[str | bytes | int, ...]


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster."""
    return url.partition("://")[0] in CLUSTER_SCHEMES


def cluster_url(url: str) -> str:
    """The cluster form of a ``redis://`` or ``rediss://`` URL (a cluster URL is kept).

    >>> cluster_url("unix:///tmp/r.sock")
    Traceback (most recent call last):
    ...
    ValueError: a Redis Cluster needs a redis:// or rediss:// URL, got unix://
    """
    scheme, sep, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        return url
    if sep and scheme in ("redis", "rediss"):
        return f"{scheme}+cluster://{rest}"
    raise ValueError(f"a Redis Cluster needs a redis:// or rediss:// URL, got {scheme}://")


def seed_url(url: str) -> str:
    """The plain URL of a cluster URL's seed node (any other URL as it is)."""
    scheme, _, rest = url.partition("://")
    return f"{CLUSTER_SCHEMES[scheme]}://{rest}" if scheme in CLUSTER_SCHEMES else url


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client of ``url``: ``redis.Redis``, or ``RedisCluster`` for a cluster URL (which
    connects at once to read the slot map). ``kwargs``: connection options (timeouts...)."""
    if is_cluster_url(url):
        return cast(redis.Redis, RedisCluster.from_url(seed_url(url), **kwargs))
    client: redis.Redis = redis.Redis.from_url(url, **kwargs)
    return client


def aconnect(url: str, max_connections: int, timeout: float, retry: Any) -> aioredis.Redis:
    """An async client of ``url`` with timeouts (connect, read, and the wait for a free
    connection) of ``timeout`` seconds and a retry policy: on one server a blocking pool of
    ``max_connections``; on a cluster ``max_connections`` per node (a request finding none free
    fails at once instead of waiting). Connects on first use."""
    if is_cluster_url(url):
        cluster = AsyncRedisCluster.from_url(
            seed_url(url),
            max_connections=max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=retry,
        )
        return cast(aioredis.Redis, cluster)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=retry,
    )
    return aioredis.Redis(connection_pool=pool)


async def aclose(client: aioredis.Redis) -> None:
    """Close an async client of :func:`aconnect` and its connections."""
    if isinstance(client, AsyncRedisCluster):
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (sync or async) is a Redis Cluster client."""
    return isinstance(client, (RedisCluster, AsyncRedisCluster))


def primaries(client: redis.Redis) -> list[redis.Redis]:
    """A client per primary: the client itself for one server."""
    if not isinstance(client, RedisCluster):
        return [client]
    return [client.get_redis_connection(node) for node in client.get_primaries()]


def key_per_primary(client: redis.Redis, name: Callable[[int], str]) -> list[str]:
    """One key per primary of a cluster that serves slots (sorted): for each, the first
    ``name(i)`` (``i`` = 0, 1, ...) whose slot it serves, as the slot map says now.
    A primary's key stays the same as long as its slots do (also after a failover to its
    replica)."""
    assert isinstance(client, RedisCluster)
    slots = client.nodes_manager.slots_cache
    wanted = {nodes[0].name for nodes in slots.values() if nodes}  # primaries serving slots
    found: dict[str, str] = {}
    i = 0
    while len(found) < len(wanted) and i < 1 << 18:
        key = name(i)
        nodes = slots.get(client.keyslot(key))
        if nodes and nodes[0].name in wanted:
            found.setdefault(nodes[0].name, key)
        i += 1
    return sorted(found.values())


def scan_pages(client: redis.Redis, match: str, count: int) -> Iterator[list[Any]]:
    """Key pages of ``SCAN MATCH match COUNT count`` over every primary, one after the other.

    ``SCAN`` returns every key that exists for the whole walk; a key may come twice if Redis
    rehashes meanwhile (or, on a cluster, if its slot moves to a node not walked yet).
    """
    for node in primaries(client):
        cursor = 0
        while True:
            cursor, keys = node.scan(cursor=cursor, match=match, count=count)
            if keys:
                yield keys
            if cursor == 0:
                break


def command_key(cmd: Command) -> str | bytes | int:
    """The first key of a write-path command (``EVALSHA sha numkeys key...`` or ``CMD key...``)."""
    return cmd[3] if cmd[0] == "EVALSHA" else cmd[1]


def send_raw(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """Send ``commands`` packed with hiredis, in one write per node (every node's before any
    reply is read), and return each one's reply, or its error reply as an exception, in order.

    On a cluster each command goes to the primary of its first key's slot (all of its keys share
    it); ``MOVED`` (after a refresh of the slot map) and ``ASK`` (with ``ASKING``) are followed up
    to :data:`MAX_REDIRECTS` times, then left as the command's error. Connection errors and
    timeouts raise, with every connection of the round dropped (their replies are unknown) and,
    on a cluster, the slot map refreshed: the caller sends again (every command is absolute).
    """
    replies: list[Any] = [None] * len(commands)
    todo: list[tuple[int, Any]] = [(i, None) for i in range(len(commands))]
    for _ in range(MAX_REDIRECTS + 1):
        redirected = _round(client, commands, todo, replies)
        if not redirected or not isinstance(client, RedisCluster):
            break
        if any(isinstance(replies[i], MovedError) for i in redirected):
            client.nodes_manager.initialize()
        todo = []
        for i in redirected:
            err = replies[i]
            ask = None if isinstance(err, MovedError) else client.get_node(err.host, err.port)
            todo.append((i, ask))
    return replies


def _groups(
    client: redis.Redis, commands: Sequence[Command], todo: list[tuple[int, Any]]
) -> list[tuple[Any, list[tuple[int, bool]]]]:
    """The commands to send per connection pool: ``(pool, [(index, asking)])``."""
    if not isinstance(client, RedisCluster):
        return [(client.connection_pool, [(i, False) for i, _ in todo])]
    groups: dict[str, tuple[Any, list[tuple[int, bool]]]] = {}
    for i, ask in todo:
        try:
            node = ask or client.get_node_from_key(command_key(commands[i]))
        except RedisClusterException as exc:  # a slot no node serves: as if unreachable
            client.nodes_manager.initialize()
            raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc
        pool = client.get_redis_connection(node).connection_pool
        groups.setdefault(node.name + ("/ask" if ask else ""), (pool, []))[1].append(
            (i, ask is not None)
        )
    return list(groups.values())


def _round(
    client: redis.Redis,
    commands: Sequence[Command],
    todo: list[tuple[int, Any]],
    replies: list[Any],
) -> list[int]:
    """Send ``todo`` once; fill ``replies``; return the indexes redirected (MOVED, ASK)."""
    groups = _groups(client, commands, todo)
    conns: list[tuple[Any, Any]] = []
    redirected: list[int] = []
    try:
        for pool, items in groups:
            conn = pool.get_connection()
            conns.append((pool, conn))
            packed = b"".join(
                (_ASKING if asking else b"") + hiredis.pack_command(commands[i])  # type: ignore[arg-type]
                for i, asking in items
            )
            conn.send_packed_command([packed])
        for (_, conn), (_, items) in zip(conns, groups, strict=True):
            for i, asking in items:
                try:
                    if asking:
                        conn.read_response()
                    replies[i] = conn.read_response()
                except AskError as exc:  # (MovedError is one)
                    replies[i] = exc
                    redirected.append(i)
                except redis.ResponseError as exc:
                    replies[i] = exc
    except (redis.ConnectionError, redis.TimeoutError):
        for _, conn in conns:
            conn.disconnect()
        if isinstance(client, RedisCluster):
            with suppress(redis.RedisError, RedisClusterException):
                client.nodes_manager.initialize()  # (else the next attempt tries again)
        raise
    finally:
        for pool, conn in conns:
            pool.release(conn)
    return redirected
