"""Per-customer profile state: event-time windows, lateness, duplicates, identity merge, Redis view.

A :class:`ProfileState` is the authoritative state of one customer (``c:<customer_id>``) or one
anonymous visitor (``a:<anonymous_id>``), kept by the dataflow in Bytewax snapshots.
:func:`ingest` applies one event (or says it is a duplicate or too late), :func:`merge_into`
stitches an anonymous history into a customer, :func:`to_fields` projects the state to the Redis
hash (absolute values), and serving and the CLI read it back with :func:`from_fields` and compute
the public document as of any time with :func:`render`. The features are declared in
:mod:`features.registry`; their definitions and the Redis layout are in the README ("Profiles").

How order is handled: the state keeps a *settled* :class:`Aggregate` (every applied event older
than ``newest - lateness``, folded strictly in ``(ts, event_id)`` order), a *buffer* of the newer
events sorted by ``(ts, event_id)``, and the *current* aggregate, which equals the settled part
with the buffer replayed in order. An in-order event updates the current aggregate in place (the
common, fast case); an out-of-order event within the lateness is inserted into the buffer and the
current aggregate is rebuilt from the settled part. So every value equals what the sorted,
deduplicated stream gives, to the bit: amounts are integer cents and floating-point interest scores
are updated with the same operations in the same order.

Examples
--------
>>> from schemas import Event
>>> T = 1767323045000                                    # 2026-01-02T03:04:05Z
>>> s = new_state("c:42")
>>> ingest(s, Event(event_id="1", type="product_view", ts=T, customer_id="42",
...                 category="shoes", session_id="s1"), lateness_ms=600_000)
'applied'
>>> ingest(s, Event(event_id="2", type="purchase", ts=T + 60_000, customer_id="42",
...                 total=20.5, session_id="s1"), lateness_ms=600_000)
'applied'
>>> ingest(s, Event(event_id="2", type="purchase", ts=T + 60_000, customer_id="42",
...                 total=20.5, session_id="s1"), lateness_ms=600_000)
'duplicate'
>>> ingest(s, Event(event_id="0", type="page_view", ts=T - 3_600_000, customer_id="42"),
...        lateness_ms=600_000)
'late'
>>> doc = render(from_fields(to_fields(s)), as_of=T + 40 * 86_400_000)
>>> doc["customer_id"], doc["purchases_30d"], doc["purchases_90d"], doc["revenue_total"]
('42', 0, 1, 20.5)
>>> doc["days_since_last_purchase"], doc["sessions_30d"], doc["top_categories"]
(39.999, 0, ['shoes'])
>>> from_fields(to_fields(s)) == view(s)
True
"""

from __future__ import annotations

from features.profile.codec import fields_of, from_fields, to_fields, view
from features.profile.fold import ingest, last_event_ts, new_state
from features.profile.merge import merge_into
from features.profile.render import StateSource, render, render_state, window_values
from features.profile.sources import (
    apply_consent,
    apply_identify,
    merge_sources,
    note_conflict,
    record_link,
)
from features.profile.state import (
    APPLIED,
    COUNT_FEATURES,
    DEDUP_MS,
    DEFAULT_LATENESS_MS,
    DUPLICATE,
    LATE,
    LAYOUT_VERSION,
    MAX_FIELD_BYTES,
    MAX_IDENTITIES,
    NO_CONSENT,
    REVENUE_FEATURES,
    SESSION_GAP_MS,
    SESSION_KEEP_MS,
    TYPE_CODES,
    Aggregate,
    LayoutError,
    Link,
    ProfileState,
    ProfileView,
)
from features.registry import CART_ABANDON_MS

__all__ = [
    "APPLIED",
    "CART_ABANDON_MS",
    "COUNT_FEATURES",
    "DEDUP_MS",
    "DEFAULT_LATENESS_MS",
    "DUPLICATE",
    "LATE",
    "LAYOUT_VERSION",
    "MAX_FIELD_BYTES",
    "MAX_IDENTITIES",
    "NO_CONSENT",
    "REVENUE_FEATURES",
    "SESSION_GAP_MS",
    "SESSION_KEEP_MS",
    "TYPE_CODES",
    "Aggregate",
    "LayoutError",
    "Link",
    "ProfileState",
    "ProfileView",
    "StateSource",
    "apply_consent",
    "apply_identify",
    "fields_of",
    "from_fields",
    "ingest",
    "last_event_ts",
    "merge_into",
    "merge_sources",
    "new_state",
    "note_conflict",
    "record_link",
    "render",
    "render_state",
    "to_fields",
    "view",
    "window_values",
]

# Recovery snapshots pickle these classes by module path: keep the one they always had.
for _cls in (Aggregate, Link, ProfileState, ProfileView, LayoutError):
    _cls.__module__ = __name__
