"""The recovery store's hygiene: what an erasure must not leave behind in it.

Bytewax keeps its snapshots in SQLite files (``part-*.sqlite3``, WAL mode, table ``snaps``: step,
state key, epoch, serialised state). When a key's state is discarded (an erasure, retention),
Bytewax writes a tombstone row (the key with no state) and keeps it for good, and the deleted
rows' bytes stay in free pages and in the write-ahead log until reused: the key (a customer id)
would stay in the store. :func:`compact` deletes every key whose newest committed snapshot is a
tombstone (rows at or before it: a resume finds no state for the key either way), checkpoints the
log and rebuilds each file from its live rows (``VACUUM``, with ``secure_delete`` on). The flow
runs it at every start, before Bytewax opens the files, and after a clean stop (README,
"Privacy").
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Keys whose newest committed snapshot (at or before the committed epoch, what a resume loads)
# is a tombstone: all their rows up to it.
_PURGE_TOMBSTONES = """
DELETE FROM snaps WHERE rowid IN (
  SELECT s.rowid FROM snaps s JOIN (
    SELECT step_id, state_key, MAX(snap_epoch) AS e FROM snaps
    WHERE snap_epoch <= ? GROUP BY step_id, state_key
  ) m ON s.step_id = m.step_id AND s.state_key = m.state_key AND s.snap_epoch <= m.e
  WHERE EXISTS (SELECT 1 FROM snaps t WHERE t.step_id = m.step_id
                AND t.state_key = m.state_key AND t.snap_epoch = m.e AND t.ser_change IS NULL)
)
"""


def compact(db_dir: Path, purge: bool = True) -> int:
    """Checkpoint and ``VACUUM`` every partition of ``db_dir``; the number of files compacted.
    With ``purge``, first delete the keys whose newest snapshot at or before the oldest commit
    of the directory's partitions is a tombstone. (A process of a cluster that crashed holds only
    some partitions and cannot know the cluster's resume epoch: it does not purge at start.)

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> con = sqlite3.connect(d / "part-0.sqlite3")
    >>> _ = con.execute("pragma journal_mode=wal")
    >>> _ = con.execute("pragma secure_delete=off")   # as Bytewax's SQLite
    >>> _ = con.execute("create table snaps (step_id, state_key, snap_epoch, ser_change)")
    >>> _ = con.execute("create table commits (part_index, commit_epoch)")
    >>> _ = con.execute("insert into commits values (0, 9)")
    >>> rows = [("s", "c:SECRET-42", 3, b"SECRET-42" * 100), ("s", "c:SECRET-42", 5, None),
    ...         ("s", "c:kept", 3, b"x"), ("s", "c:back", 2, None), ("s", "c:back", 4, b"y")]
    >>> _ = con.executemany("insert into snaps values (?, ?, ?, ?)", rows); con.commit()
    >>> _ = con.execute("delete from snaps where snap_epoch = 3 and state_key = 'c:SECRET-42'")
    >>> con.commit(); con.close()
    >>> any(b"SECRET-42" in p.read_bytes() for p in d.iterdir())   # deleted, still there
    True
    >>> compact(d)
    1
    >>> any(b"SECRET-42" in p.read_bytes() for p in d.iterdir())
    False
    >>> con = sqlite3.connect(d / "part-0.sqlite3")
    >>> sorted(con.execute("select state_key, snap_epoch from snaps")); con.close()
    [('c:back', 2), ('c:back', 4), ('c:kept', 3)]
    """
    parts = sorted(db_dir.glob("part-*.sqlite3"))
    commits = []
    for part in parts:
        con = sqlite3.connect(part, isolation_level=None)
        try:
            commits += [e for (e,) in con.execute("SELECT commit_epoch FROM commits")]
        finally:
            con.close()
    n = 0
    for part in parts:
        con = sqlite3.connect(part, isolation_level=None)
        try:
            con.execute("PRAGMA secure_delete = ON")
            if purge and commits:
                con.execute(_PURGE_TOMBSTONES, (min(commits),))
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.execute("VACUUM")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
        n += 1
    return n
