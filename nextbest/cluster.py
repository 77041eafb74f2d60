"""``nextbest run`` as one process of a Bytewax cluster: the settings that make the cluster, the
recovery partitions each process holds, and the call that runs the flow.

A cluster is N processes that all run the same flow; they connect to each other through
``NEXTBEST_ADDRESSES`` (process i listens on the i-th address) and Bytewax spreads the work:

- each Kafka partition is read by one worker (partitions are assigned by name over all workers);
- each keyed step's state (a customer, a device, a clock shard, a model owner...) lives on one
  worker, chosen by a hash of its key, and items are exchanged to it;
- each worker writes what its steps produce (Redis, dead letters, segment transitions).

Recovery: each process keeps its own ``NEXTBEST_RECOVERY_DIR`` (a volume per pod); Bytewax needs
every partition to be found on some process at resume. At first start, in an empty directory,
process i creates the partitions ``j`` with ``j % processes == i`` of
``NEXTBEST_RECOVERY_PARTITIONS`` (default: one per process). Partitions are fixed for the life of
the cluster: before adding processes, set ``NEXTBEST_RECOVERY_PARTITIONS`` to the first count so
that the new processes (empty directories) create none; before removing one, move its partition
files to a process that stays.

>>> c = Cluster(process_id=1, addresses=("a:1", "b:1", "c:1"), workers=2, partitions=3)
>>> c.processes, c.workers_total, c.own_partitions(), c.single
(3, 6, [1], False)
>>> Cluster(0, (), 1, 1).single
True
>>> Cluster(0, ("a:1", "b:1"), 1, 5).own_partitions()
[0, 2, 4]
>>> Cluster(2, ("a:1", "b:1", "c:1"), 1, 2).own_partitions()  # added after the first start
[]
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from nextbest.settings import ConfigError, Settings


@dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster (:func:`cluster_of` reads it from the settings)."""

    process_id: int
    #: Every process's host:port, in process order; empty: this is the only process.
    addresses: tuple[str, ...]
    #: Worker threads per process.
    workers: int
    #: Recovery partitions of the whole cluster.
    partitions: int

    @property
    def processes(self) -> int:
        """How many processes the cluster has."""
        return max(1, len(self.addresses))

    @property
    def workers_total(self) -> int:
        """Workers over every process."""
        return self.processes * self.workers

    @property
    def single(self) -> bool:
        """One process with one worker (run in the calling thread, as before any cluster)."""
        return self.workers_total == 1

    def own_partitions(self) -> list[int]:
        """The recovery partitions this process creates in an empty recovery directory."""
        return [j for j in range(self.partitions) if j % self.processes == self.process_id]


def cluster_of(settings: Settings) -> Cluster:
    """The cluster the settings describe; a :class:`ConfigError` naming the variable when they
    do not describe one (an id without addresses, an id beyond them, several processes that
    would each make their own identity salt)."""
    pid, raw = settings.process_id, settings.addresses
    if (pid is None) != (raw is None):
        given, missing = (
            ("NEXTBEST_PROCESS_ID", "NEXTBEST_ADDRESSES")
            if raw is None
            else ("NEXTBEST_ADDRESSES", "NEXTBEST_PROCESS_ID")
        )
        raise ConfigError(f"{missing}: required with {given} (a cluster needs both)")
    addresses = tuple(raw.split(",")) if raw is not None else ()
    if len(set(addresses)) != len(addresses):
        raise ConfigError(f"NEXTBEST_ADDRESSES: an address appears twice in {raw!r}")
    pid = pid or 0
    if addresses and pid >= len(addresses):
        raise ConfigError(
            f"NEXTBEST_PROCESS_ID: {pid} is not below the {len(addresses)} processes of "
            "NEXTBEST_ADDRESSES (ids count from 0)"
        )
    if len(addresses) > 1 and settings.identity_salt is None:
        raise ConfigError(
            "NEXTBEST_IDENTITY_SALT: required when several processes run (each would otherwise "
            "generate its own salt, and an email would get a different token on each)"
        )
    partitions = settings.recovery_partitions or max(1, len(addresses))
    return Cluster(pid, addresses, settings.workers_per_process, partitions)


def init_recovery(db_dir: Path, cluster: Cluster) -> list[int]:
    """Create this process's recovery partitions in ``db_dir`` when it holds none; return the
    partition indexes created (none when the directory already holds partitions)."""
    from bytewax.recovery import init_db_dir

    if any(db_dir.glob("part-*.sqlite3")):
        return []
    db_dir.mkdir(parents=True, exist_ok=True)
    own = cluster.own_partitions()
    if not own:
        return []
    staging = db_dir / ".init"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        init_db_dir(staging, cluster.partitions)  # type: ignore[no-untyped-call]
        for j in own:
            (staging / f"part-{j}.sqlite3").replace(db_dir / f"part-{j}.sqlite3")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return own


def execute(
    flow: Any,
    cluster: Cluster,
    epoch_interval: timedelta | None = None,
    recovery: Any = None,
) -> None:
    """Run ``flow`` as this process of ``cluster``: in the calling thread when the cluster is one
    worker, else as a Bytewax cluster member (returns when every process's input has ended)."""
    from bytewax.testing import cluster_main, run_main

    kwargs: dict[str, Any] = {"epoch_interval": epoch_interval, "recovery_config": recovery}
    if cluster.single:
        run_main(flow, **kwargs)  # type: ignore[no-untyped-call]
        return
    cluster_main(  # type: ignore[no-untyped-call]
        flow,
        list(cluster.addresses),
        cluster.process_id,
        worker_count_per_proc=cluster.workers,
        **kwargs,
    )
