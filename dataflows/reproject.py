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

>>> r = Reprojection(); r.generation
0
>>> r.request("test", loss=False); r.generation
1
"""

from __future__ import annotations

import logging
import threading
import uuid
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
        self._lock = threading.Lock()

    def check(self, client: redis.Redis) -> bool:
        """One check (a GET per marker, and a SET when one is missing); True if data was lost.

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
            return bool(gone or reset or fresh)


def marker_keys(client: redis.Redis) -> list[str]:
    """The marker keys: :data:`MARKER_KEY` on one server; on a Redis Cluster one per primary
    (:func:`features.redis_conn.key_per_primary`), so that a primary that loses its data
    (restarted without persistence, a failover to an empty replica, a FLUSHALL) loses its
    marker."""
    if not is_cluster(client):
        return [MARKER_KEY]
    return key_per_primary(client, lambda i: f"{NAMESPACE}:{{projection:{i}}}")
