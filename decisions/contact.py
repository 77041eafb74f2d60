"""Contact policy: the per-customer counters and whether they allow an action now.

The counters of one profile (a customer, or an anonymous device) live in one Redis hash in the
profile's hash slot (:mod:`decisions.store`), read with the profile in the same round trip. Its
fields:

=============================  =============================================================
``ch|<channel>|<day>``          offers served on a channel on a UTC day (day = epoch days)
``ad|<action>|<channel>|<day>`` the same per action
``ls|<action>|<channel>``       when the action was last served on the channel (epoch ms)
``cv|<action>``                 the last conversion attributed to the action (epoch ms)
=============================  =============================================================

Serving counts a decision when it is *served* (the first action of the answer, on every
channel: for web that is when it is shown; for email and push when it is handed to the sender).
Conversions are written by the dataflow when it joins a ``conversion`` outcome to its decision.

Examples
--------
>>> day = 20_000
>>> c = Contacts.parse({b"ch|web|20000": b"3", b"ls|winback|web": b"1000", b"junk": b"x"})
>>> c.channel_today("web", day), c.last_served("winback", "web")
(3, 1000)
>>> from decisions.catalog import Channel, Contact
>>> blocked(Contact(), Channel("web", max_per_day=3), "winback", c, day * 86_400_000)
'channel_daily_limit'
>>> blocked(Contact(min_interval_ms=5000), Channel("web"), "winback", c, 3000)
'min_interval'
>>> blocked(Contact(min_interval_ms=5000), Channel("web"), "winback", c, 6000) is None
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from decisions.catalog import Channel, Contact

DAY_MS: Final = 86_400_000
#: Why the contact policy blocks an action (a finite set: safe as a metric label).
BLOCK_REASONS: Final = ("channel_daily_limit", "action_daily_limit", "min_interval",
                        "after_conversion")  # fmt: skip


def day_of(ms: int) -> int:
    """The UTC day number (days since 1970-01-01) of an epoch-ms time.

    >>> day_of(0), day_of(86_399_999), day_of(86_400_000)
    (0, 0, 1)
    """
    return ms // DAY_MS


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


@dataclass(frozen=True)
class Contacts:
    """Parsed counters of one profile (see the module docstring)."""

    per_channel: Mapping[tuple[str, int], int] = field(default_factory=dict)
    per_action: Mapping[tuple[str, str, int], int] = field(default_factory=dict)
    served_at: Mapping[tuple[str, str], int] = field(default_factory=dict)
    converted_at: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[Any, Any] | None) -> Contacts:
        """From the stored hash; fields that do not parse are ignored."""
        ch: dict[tuple[str, int], int] = {}
        ad: dict[tuple[str, str, int], int] = {}
        ls: dict[tuple[str, str], int] = {}
        cv: dict[str, int] = {}
        for k, v in (raw or {}).items():
            parts = _text(k).split("|")
            try:
                n = int(_text(v))
                if parts[0] == "ch" and len(parts) == 3:
                    ch[(parts[1], int(parts[2]))] = n
                elif parts[0] == "ad" and len(parts) == 4:
                    ad[(parts[1], parts[2], int(parts[3]))] = n
                elif parts[0] == "ls" and len(parts) == 3:
                    ls[(parts[1], parts[2])] = n
                elif parts[0] == "cv" and len(parts) == 2:
                    cv[parts[1]] = n
            except ValueError:
                continue
        return cls(ch, ad, ls, cv)

    def channel_today(self, channel: str, day: int) -> int:
        """Offers served on ``channel`` on ``day``."""
        return self.per_channel.get((channel, day), 0)

    def action_today(self, action: str, channel: str, day: int) -> int:
        """Serves of ``action`` on ``channel`` on ``day``."""
        return self.per_action.get((action, channel, day), 0)

    def last_served(self, action: str, channel: str) -> int | None:
        """When ``action`` was last served on ``channel`` (ms), if ever."""
        return self.served_at.get((action, channel))

    def last_conversion(self, action: str) -> int | None:
        """The last conversion attributed to ``action`` (ms), if any."""
        return self.converted_at.get(action)


def blocked(
    limits: Contact, channel: Channel, action: str, contacts: Contacts, now_ms: int
) -> str | None:
    """Why the contact policy blocks ``action`` on ``channel`` at ``now_ms``, or ``None``.

    A serve or conversion recorded *after* ``now_ms`` (an ``as_of`` in the past) does not block.
    """
    day = day_of(now_ms)
    if channel.max_per_day is not None and contacts.channel_today(channel.name, day) >= (
        channel.max_per_day
    ):
        return "channel_daily_limit"
    if limits.max_per_day is not None and contacts.action_today(action, channel.name, day) >= (
        limits.max_per_day
    ):
        return "action_daily_limit"
    last = contacts.last_served(action, channel.name)
    if (
        limits.min_interval_ms is not None
        and last is not None
        and 0 <= now_ms - last < (limits.min_interval_ms)
    ):
        return "min_interval"
    conv = contacts.last_conversion(action)
    if (
        limits.after_conversion_ms is not None
        and conv is not None
        and 0 <= now_ms - conv < (limits.after_conversion_ms)
    ):
        return "after_conversion"
    return None
