"""Re-projection: Redis is a projection of the dataflow's state, so the state can rebuild it.

When the Redis sink finds that Redis lost its data (see :class:`ProjectionGuard`), it asks for a
re-projection; the two event-time clocks, which know every live key (each has a retention
timer), then send a :class:`~dataflows.records.Reproject` to every key at a bounded rate, and
each key's step writes its whole state again (absolute writes: the same bytes as before the
loss). The model owners re-publish their checkpoints and the RFM owner its boundaries.

Loss is detected with a marker key: ``nb:projection`` holds a random token that the sink sets
when the key is missing. A missing marker (or a token other than the one this process last saw:
another process re-set it after a loss) means Redis lost data since the last check.

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
    """Detects that Redis lost its data, with the marker key (shared by a process's sinks)."""

    def __init__(self, reprojection: Reprojection) -> None:
        self.reprojection = reprojection
        self.token: Any = None
        self.checked = False
        self._lock = threading.Lock()

    def check(self, client: redis.Redis) -> bool:
        """One check (a GET, and a SET when the marker is missing); True if data was lost.

        The first check of a process finds a missing marker on a new or emptied Redis: that
        re-projects whatever the flow resumed with (nothing on a fresh start).
        """
        with self._lock:
            first, self.checked = not self.checked, True
            current = client.get(MARKER_KEY)
            if current is None:
                client.set(MARKER_KEY, uuid.uuid4().hex.encode(), nx=True)
                self.token = client.get(MARKER_KEY)
                if first:  # a new Redis, or one that lost data while the flow was down
                    self.reprojection.request(
                        "Redis has no projection marker (new, or emptied while the flow was down)",
                        loss=False,
                    )
                else:
                    self.reprojection.request("the marker key nb:projection is gone")
                return True
            lost = self.token is not None and current != self.token
            self.token = current
            if lost:
                self.reprojection.request("the marker key nb:projection was set again")
            return lost
