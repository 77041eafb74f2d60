"""Consent: what a person allowed, per purpose (README, "Privacy").

A ``consent`` event carries ``purposes``, each ``granted`` or ``withdrawn``, and a ``source``
(``web`` for a cookie banner, ``crm``, ...)::

    {"event_id": "c-1", "type": "consent", "ts": "2026-03-01T10:00:00Z", "anonymous_id": "d-1",
     "source": "web", "purposes": {"analytics": "granted", "marketing": "withdrawn"}}

Purposes (:data:`PURPOSES`): ``analytics`` (events are recorded in the profile), ``personalization``
(decisions and recommendations use the profile), ``marketing`` (segments delivered to campaign
systems and targeted lists). A purpose without any consent event takes its configured default
(``NEXTBEST_CONSENT``, :func:`parse_defaults`).

Examples
--------
>>> check_purposes("consent", {"marketing": "withdrawn"})
{'marketing': 'withdrawn'}
>>> check_purposes("consent", None)
('missing_field:purposes', 'consent needs purposes')
>>> check_purposes("consent", {"ads": "granted"})[0]
'bad_value:purposes'
>>> parse_defaults("marketing=withdrawn")
ConsentDefaults(analytics=True, personalization=True, marketing=False)
"""

from __future__ import annotations

from typing import Final, NamedTuple

#: The consent event's type.
CONSENT: Final = "consent"
#: Every purpose a person can grant or withdraw.
PURPOSES: Final = ("analytics", "personalization", "marketing")
#: What a purpose can be set to.
STATUSES: Final = ("granted", "withdrawn")


class ConsentDefaults(NamedTuple):
    """What a purpose is without any consent event (True: granted)."""

    analytics: bool = True
    personalization: bool = True
    marketing: bool = True

    def of(self, purpose: str) -> bool:
        """The default of a purpose."""
        return bool(getattr(self, purpose))


#: Every purpose granted unless withdrawn (``NEXTBEST_CONSENT`` unset).
ALL_GRANTED: Final = ConsentDefaults()


def parse_defaults(raw: str) -> ConsentDefaults:
    """``purpose=granted|withdrawn`` pairs, comma-separated; the others stay granted.

    >>> parse_defaults("analytics=granted, marketing=withdrawn").marketing
    False
    >>> parse_defaults("ads=granted")
    Traceback (most recent call last):
    ...
    ValueError: 'ads=granted': expected purpose=granted|withdrawn with a purpose of analytics, personalization, marketing
    """  # noqa: E501
    values = ALL_GRANTED._asdict()
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        name, _, status = part.partition("=")
        name, status = name.strip(), status.strip()
        if name not in PURPOSES or status not in STATUSES:
            raise ValueError(
                f"{part!r}: expected purpose=granted|withdrawn with a purpose of "
                + ", ".join(PURPOSES)
            )
        values[name] = status == "granted"
    return ConsentDefaults(**values)


def check_purposes(typ: str, purposes: dict[str, str] | None) -> dict[str, str] | tuple[str, str]:
    """An event's ``purposes``: required by ``consent``, refused on other types; each known and
    ``granted`` or ``withdrawn``. A problem is ``(reason, detail)``."""
    if purposes is None:
        return ("missing_field:purposes", "consent needs purposes") if typ == CONSENT else {}
    if typ != CONSENT:
        return "bad_value:purposes", "only a consent event carries purposes"
    if not purposes:
        return "bad_value:purposes", "consent needs at least one purpose"
    for name, status in purposes.items():
        if name not in PURPOSES or status not in STATUSES:
            return "bad_value:purposes", (
                f"{name[:40]!r}: purposes are {', '.join(PURPOSES)}, each granted or withdrawn"
            )
    return dict(purposes)
