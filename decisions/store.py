"""The Redis side of decisions (the one module of ``decisions`` that talks to Redis).

==================================  =========================================================
``nb:{c:<customer_id>}:contacts``   hash: the contact counters (:mod:`decisions.contact`)
``nb:{a:<anonymous_id>}:contacts``  the same for an anonymous device
==================================  =========================================================

The counters share the profile's hash tag, so the decision's read (profile, memberships,
counters) is one pipeline, and a serve is counted by one registered Lua script on one key
(atomic; never a cross-slot command). The hash expires :data:`KEEP_MS` after its last write
beyond the longest contact window of the catalogue.

>>> contacts_key("c:42")
'nb:{c:42}:contacts'
"""

from __future__ import annotations

from typing import Any, Final

import redis.asyncio as aioredis

from decisions.catalog import Catalog
from decisions.contact import DAY_MS, Contacts, day_of
from features.store import BOUNDARIES_KEY, StoredProfile, _stored, link_key
from features.store import contacts_key as contacts_key
from features.store import profile_key as _profile_key
from features.store import segments_key as _segments_key

#: Counters are kept this long after the longest contact window of the catalogue.
KEEP_MS: Final = 2 * DAY_MS

#: Count a serve: KEYS[1] = contacts hash; ARGV = channel, action, day, now (ms), ttl (ms).
#: Increments the day counters, moves the action's last-served time forward, forgets day
#: counters older than the day before, and extends the expiry.
SERVE_SCRIPT: Final = """
local key, ch, act = KEYS[1], ARGV[1], ARGV[2]
local day, now, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HINCRBY', key, 'ch|' .. ch .. '|' .. day, 1)
redis.call('HINCRBY', key, 'ad|' .. act .. '|' .. ch .. '|' .. day, 1)
local ls = 'ls|' .. act .. '|' .. ch
local last = tonumber(redis.call('HGET', key, ls) or '-1')
if last < now then redis.call('HSET', key, ls, ARGV[4]) end
for _, f in ipairs(redis.call('HKEYS', key)) do
  local p = string.sub(f, 1, 3)
  if p == 'ch|' or p == 'ad|' then
    local d = tonumber(string.match(f, '|(%d+)$'))
    if d and d < day - 1 then redis.call('HDEL', key, f) end
  end
end
if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
return 1
"""


#: A conversion (the dataflow): KEYS[1] = contacts hash; ARGV = field, ts (ms), ttl (ms). The
#: field moves forward only (conversions of one action may be joined in any order).
CONVERSION_SCRIPT: Final = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if cur < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


class ConversionWriter:
    """Builds the dataflow's conversion writes (one ``EVALSHA`` of one key each) for a
    :class:`features.store.ProfileWriter` batch."""

    def __init__(self, writer: Any) -> None:
        self.sha = writer.register(CONVERSION_SCRIPT)

    def command(self, key: str, action: str, ts: int, ttl_ms: int) -> tuple[Any, ...]:
        """The command recording a conversion of ``action`` at ``ts`` for profile ``key``."""
        return ("EVALSHA", self.sha, 1, contacts_key(key), f"cv|{action}", ts, ttl_ms)


def keep_ms(cat: Catalog) -> int:
    """How long a profile's counters live after a write: the longest window of the catalogue
    (contact intervals, conversion blackouts, a day) plus :data:`KEEP_MS`.

    >>> from decisions.catalog import load_catalog
    >>> keep_ms(load_catalog(segments=("loyal",))) // DAY_MS
    367
    """
    longest = DAY_MS
    for a in cat.actions:
        for w in (a.contact.min_interval_ms, a.contact.after_conversion_ms):
            if w is not None:
                longest = max(longest, w)
    return longest + KEEP_MS


class DecisionStore:
    """Async reads and writes of a decision (serving)."""

    def __init__(self, client: aioredis.Redis, cat: Catalog) -> None:
        self.client = client
        self.ttl = keep_ms(cat)
        self._serve = client.register_script(SERVE_SCRIPT)

    async def read(self, key: str) -> tuple[StoredProfile, Contacts]:
        """The profile, its memberships and its counters: one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(_profile_key(key))
        pipe.get(BOUNDARIES_KEY)
        pipe.hgetall(_segments_key(key))
        pipe.hgetall(contacts_key(key))
        res = await pipe.execute()
        return _stored(res[:3]), Contacts.parse(res[3])

    async def read_visitor(self, anonymous_id: str, device: str) -> tuple[str | None, Any]:
        """A device's link and, in the same round trip, its own (anonymous) profile read: the
        linked customer's key (``None`` if not linked) and ``(stored, contacts)`` of the
        device."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(link_key(anonymous_id))
        pipe.hgetall(_profile_key(device))
        pipe.get(BOUNDARIES_KEY)
        pipe.hgetall(_segments_key(device))
        pipe.hgetall(contacts_key(device))
        res = await pipe.execute()
        link = res[0].decode() if isinstance(res[0], bytes) else res[0]
        return link, (_stored(res[1:4]), Contacts.parse(res[4]))

    async def count_serve(self, key: str, channel: str, action: str, now_ms: int) -> None:
        """Count a served action (atomically, one key)."""
        await self._serve(
            keys=[contacts_key(key)], args=[channel, action, day_of(now_ms), now_ms, self.ttl]
        )
