"""Re-projection: Redis is a projection of the dataflow's state, so the state can rebuild it.

When the Redis sink finds that Redis lost its data (see :class:`ProjectionGuard`), it asks for a
re-projection; the two event-time clocks, which know every live key (each has a retention
timer), then send a :class:`~dataflows.records.Reproject` to every key at a bounded rate, and
each key's step writes its whole state again (absolute writes: the same bytes as before the
loss). The model owners re-publish their checkpoints and the RFM owner its boundaries.

Loss is detected with a marker key: ``nb:projection`` holds a random token that the sink sets
when the key is missing. A missing marker (or a token other than the one this process last saw:
another process re-set it after a loss) means Redis lost data since the last check. On a Redis
Cluster there is one marker per primary (``nb:{projection:<i>}``, a key in a slot it serves):
one primary losing its data re-projects every key (the flow does not know which keys are where).

A marker only tells that a server was *emptied*. A server that comes back with *some* of the
writes it acknowledged (restarted from an older snapshot or an AOF missing its last second, a
failover to a replica that had not received them yet) keeps its marker: each sink partition
therefore ends every batch, on every primary, with a swap of its own sequence key
(:class:`WriteSequence`, ``<marker>:seq:<writer>``, under the marker's hash tag): the new value
goes in, the old one comes back. Replication and persistence keep a server's writes in order,
so an old value other than the one the last acknowledged batch put there means that batch (and
maybe more) is gone.

>>> r = Reprojection(); r.generation
0
>>> r.request("test", loss=False); r.generation
1
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import redis

from dataflows import metrics
from features.redis_conn import is_cluster, key_per_primary
from features.store import NAMESPACE

log = logging.getLogger(__name__)

#: The marker key: present while Redis holds the projection.
MARKER_KEY: Final = f"{NAMESPACE}:projection"


class Reprojection:
    """A process-wide request to re-project every key: the sink asks, the clocks answer.

    ``generation`` counts the requests; each clock remembers the last one it answered.
    """

    def __init__(self) -> None:
        self.generation = 0
        self._lock = threading.Lock()

    def request(self, why: str, loss: bool = True) -> None:
        """Ask every clock to re-project its keys (counted and logged when data was lost)."""
        with self._lock:
            self.generation += 1
        if loss:
            metrics.REPROJECTIONS.inc()
            log.warning("Redis lost data (%s): re-projecting every key the flow holds", why)
        else:
            log.info("%s: writing every key the flow holds (none on a fresh start)", why)


class ProjectionGuard:
    """Detects that Redis lost its data, with the marker keys (shared by a process's sinks)."""

    def __init__(self, reprojection: Reprojection) -> None:
        self.reprojection = reprojection
        self.tokens: dict[str, Any] = {}  # marker key -> the token last seen
        self.checked = False
        #: the write sequences of the process's sink partitions, read back at every check
        self.sequences: list[WriteSequence] = []
        self._lock = threading.Lock()

    def check(self, client: redis.Redis) -> bool:
        """One check (a GET per marker, and a SET when one is missing; a GET per write sequence
        key); True if data was lost.

        The first check of a process finds a missing marker on a new or emptied Redis: that
        re-projects whatever the flow resumed with (nothing on a fresh start). On a Redis
        Cluster a marker not seen before that is missing later (the primaries or their slots
        changed: the new marker's slot moved with its keys, or a new primary got slots with
        their keys) is set without a re-projection.
        """
        with self._lock:
            first, self.checked = not self.checked, True
            gone: list[str] = []
            reset: list[str] = []
            fresh = False
            for key in marker_keys(client):
                seen, current = self.tokens.get(key), client.get(key)
                if current is None:
                    client.set(key, uuid.uuid4().hex.encode(), nx=True)
                    current = client.get(key)
                    if seen is not None:
                        gone.append(key)
                    elif first:
                        fresh = True
                elif seen is not None and current != seen:
                    reset.append(key)
                self.tokens[key] = current
            if gone or reset:
                why = (f"the marker key {', '.join(gone)} is gone" if gone
                       else f"the marker key {', '.join(reset)} was set again")  # fmt: skip
                self.reprojection.request(why)
            elif fresh:  # a new Redis, or one that lost data while the flow was down
                self.reprojection.request(
                    "Redis has no projection marker (new, or emptied while the flow was down)",
                    loss=False,
                )
            if gone or reset or fresh:
                return True
            for seq in self.sequences:  # a server back with some of its writes: a quiet flow too
                lost = seq.verify(partial(_get, client), self.reprojection.generation)
                if lost is not None:
                    self.reprojection.request(f"writes Redis had acknowledged are gone: {lost}")
                    return True
            return False


def _get(client: redis.Redis, keys: list[str]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for key in keys:
        value = client.get(key)
        out.append(value if isinstance(value, bytes) else None)
    return out


def marker_keys(client: redis.Redis) -> list[str]:
    """The marker keys: :data:`MARKER_KEY` on one server; on a Redis Cluster one per primary
    (:func:`features.redis_conn.key_per_primary`), so that a primary that loses its data
    (restarted without persistence, a failover to an empty replica, a FLUSHALL) loses its
    marker."""
    if not is_cluster(client):
        return [MARKER_KEY]
    return key_per_primary(client, lambda i: f"{NAMESPACE}:{{projection:{i}}}")


#: ``GET`` then ``SET`` (the old value back), as a script: ``SET ... GET`` needs Redis 6.2.
SWAP_SCRIPT: Final = (
    "local old = redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], ARGV[1]) return old"
)


class WriteSequence:
    """One sink partition's write sequence: what its swaps must find (see the module docstring).
    The partition's thread sends and reads the swaps; the watch thread reads the keys back
    (:meth:`verify`): a flow with nothing to write notices a loss too.

    >>> seq = WriteSequence("w0", token="t")
    >>> m, k = ["nb:projection"], seq.key("nb:projection")
    >>> seq.attempt(m), k
    (b't:1', 'nb:projection:seq:w0')
    >>> seq.replied(k, None, 0)                     # never written: nothing expected
    >>> _ = seq.attempt(m); seq.replied(k, b"t:1", 0)
    >>> seq.verify(lambda keys: [b"t:2"], 0), seq.verify(lambda keys: [b"t:1"], 0)
    (None, "nb:projection:seq:w0 holds b't:1', not b't:2'")
    >>> _ = seq.attempt(m)                          # t:3: no reply (the connection was lost)
    >>> _ = seq.attempt(m); seq.replied(k, b"t:3", 0)  # t:4: t:3 may have been applied, or not
    >>> _ = seq.attempt(m); seq.replied(k, b"t:1", 0)  # t:5: a server back from an old snapshot
    "nb:projection:seq:w0 holds b't:1', not b't:4'"
    >>> _ = seq.attempt(m); seq.replied(k, None, 1)    # t:6: emptied, but a re-projection was
    >>> _ = seq.attempt(m); seq.replied(k, b"t:2", 1)  # asked since t:5; t:7: none since t:6
    "nb:projection:seq:w0 holds b't:2', not b't:6'"
    >>> _ = seq.attempt(m); seq.replied(k, b"u:9", 1)  # another flow's: not a loss of this one
    """

    def __init__(self, writer: str, token: str | None = None) -> None:
        self.writer = writer
        self.token = token or uuid.uuid4().hex[:16]
        self.seq = 0
        #: per sequence key: the value of the last acknowledged swap and the re-projection
        #: generation then, and the values sent since whose replies never came (applied or not)
        self.confirmed: dict[str, tuple[bytes, int]] = {}
        self.unknown: dict[str, set[bytes]] = {}
        self._lock = threading.Lock()

    def key(self, marker: str) -> str:
        """The sequence key on the primary of ``marker``."""
        return f"{marker}:seq:{self.writer}"

    def attempt(self, markers: list[str]) -> bytes:
        """The value a batch's swaps write on these markers' primaries (a new one per call)."""
        with self._lock:
            self.seq += 1
            value = f"{self.token}:{self.seq}".encode()
            for m in markers:
                self.unknown.setdefault(self.key(m), set()).add(value)
        return value

    def replied(self, key: str, old: bytes | None, generation: int) -> str | None:
        """A swap's reply on ``key`` (``generation``: :attr:`Reprojection.generation` now):
        ``None`` when ``old`` is a value it may hold, or when a re-projection asked since the
        last acknowledged swap covers the loss; else why not. ``key`` now holds the value sent.
        """
        with self._lock:
            sent = self.unknown.pop(key, set())
            last = self.confirmed.get(key)
            value = max(sent, key=lambda v: int(v.rsplit(b":", 1)[1]), default=None)
            if value is not None:
                self.confirmed[key] = (value, generation)
        return _lost(key, old, last, sent, generation)

    def _acceptable(self) -> dict[str, tuple[bytes, set[bytes], int]]:
        """Per key: the last acknowledged value, every value it may hold, the generation then."""
        with self._lock:
            return {k: (v, {v} | self.unknown.get(k, set()), g)
                    for k, (v, g) in self.confirmed.items()}  # fmt: skip

    def verify(
        self, read: Callable[[list[str]], list[bytes | None]], generation: int
    ) -> str | None:
        """Read the keys back (``read(keys)``: their values): why one holds a value no swap
        since the last acknowledged one can have left, or ``None``."""
        before = self._acceptable()
        keys = sorted(before)
        got = read(keys) if keys else []
        after = self._acceptable()  # (a swap may have been applied and acknowledged between)
        for key, old in zip(keys, got, strict=True):
            last, values, at = before[key]
            ok = values | after.get(key, (last, set(), at))[1]
            why = _lost(key, old, (last, at), ok, generation)
            if why is not None:
                return why
        return None


def _lost(
    key: str, old: bytes | None, last: tuple[bytes, int] | None, sent: set[bytes], generation: int
) -> str | None:
    """Why ``old`` on ``key`` means lost writes, or ``None``. A value of another writer's token
    is not a loss: another flow with the same step names writes to this Redis (a ``replay``
    beside ``run``); both then rely on their markers only."""
    if last is None or old == last[0] or old in sent or generation > last[1]:
        return None
    if old is not None and old.split(b":", 1)[0] != last[0].split(b":", 1)[0]:
        return None
    return f"{key} holds {old!r}, not {last[0]!r}"
