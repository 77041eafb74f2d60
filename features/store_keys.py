"""The Redis key names (see :mod:`features.store` for the layout): one customer's keys share a
hash tag, so they live in one Redis Cluster slot."""

from __future__ import annotations

from typing import Final

NAMESPACE: Final = "nb"
BOUNDARIES_KEY: Final = f"{NAMESPACE}:rfm:boundaries"
#: The popularity board's top lists (one hash, written whole by the board's owner).
POPULAR_KEY: Final = f"{NAMESPACE}:{{pop}}:lists"
#: The loaded product catalogue and its version (see :mod:`nextbest.catalog`).
CATALOG_KEY: Final = f"{NAMESPACE}:{{catalog}}:items"
CATALOG_VERSION_KEY: Final = f"{NAMESPACE}:{{catalog}}:version"


def product_key(product_id: str) -> str:
    """Redis key of a product's knowledge (its own slot in Redis Cluster).

    >>> product_key("p-1")
    'nb:{p:p-1}:product'
    """
    return f"{NAMESPACE}:{{p:{product_id}}}:product"


def model_keys(target: str) -> tuple[str, str, str]:
    """Redis keys of a model's current checkpoint, the previous one, and the current version.

    >>> model_keys("churn")[0]
    'nb:{model:churn}:checkpoint'
    """
    base = f"{NAMESPACE}:{{model:{target}}}"
    return f"{base}:checkpoint", f"{base}:previous", f"{base}:version"


def profile_key(key: str) -> str:
    """Redis key of the profile hash for a partition key (``c:…`` or ``a:…``)."""
    return f"{NAMESPACE}:{{{key}}}:profile"


def link_key(anonymous_id: str) -> str:
    """Redis key of a device's current link."""
    return f"{NAMESPACE}:{{a:{anonymous_id}}}:link"


def devices_key(key: str) -> str:
    """Redis key of the devices and identifiers ever linked to a customer (a set): what an
    erasure reaches beyond the profile's newest links.

    >>> devices_key("c:42")
    'nb:{c:42}:devices'
    """
    return f"{NAMESPACE}:{{{key}}}:devices"


def contacts_key(key: str) -> str:
    """Redis key of a profile's contact counters (written by serving, :mod:`decisions.store`).

    >>> contacts_key("c:42")
    'nb:{c:42}:contacts'
    """
    return f"{NAMESPACE}:{{{key}}}:contacts"


def segments_key(key: str) -> str:
    """Redis key of a customer's memberships (a hash: segment -> since, epoch ms), under the
    customer's hash tag: read with the profile in one round trip.

    >>> segments_key("c:42")
    'nb:{c:42}:segments'
    """
    return f"{NAMESPACE}:{{{key}}}:segments"


def members_key(segment: str) -> str:
    """Redis key of a segment's membership index: a sorted set of customer ids scored by the
    time they entered. One key per segment, so in Redis Cluster each index lives in its
    segment's slot (hash tag ``{seg:<name>}``); it is written separately from the customers'
    keys, one ``ZADD``/``ZREM`` per transition (absolute: a replay converges).

    >>> members_key("at_risk")
    'nb:{seg:at_risk}:members'
    """
    return f"{NAMESPACE}:{{seg:{segment}}}:members"


def exits_key(segment: str) -> str:
    """Redis key of a segment's exits: a sorted set of customer ids scored by the time they last
    left (event time; an absolute write of the customer's last exit, which its state keeps, so
    a re-projection rewrites it): what ``exits_24h`` counts. A customer is removed when its
    profile is dropped (retention), so the set holds at most the live customers. Same slot as
    the members (hash tag ``{seg:<name>}``), but every command touches one key.

    >>> exits_key("at_risk")
    'nb:{seg:at_risk}:exits'
    """
    return f"{NAMESPACE}:{{seg:{segment}}}:exits"
