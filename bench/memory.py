"""(d) Redis memory per profile: ``MEMORY USAGE`` and ``OBJECT ENCODING`` of sampled profiles."""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis

from bench.stats import percentile

#: Pattern of the profile hashes (``nb:{c:<customer_id>}:profile``, ``nb:{a:<anonymous_id>}:…``).
PROFILE_PATTERN = "nb:*:profile"
#: Compact hash encodings (Redis 7 calls it listpack, Redis 6 ziplist).
COMPACT_ENCODINGS = frozenset({"listpack", "ziplist"})


def _kind(key: bytes) -> str:
    if key.startswith(b"nb:{c:"):
        return "customer"
    if key.startswith(b"nb:{a:"):
        return "anonymous"
    return "other"


def _sizes(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "median_bytes": round(percentile(values, 50), 1),
        "p90_bytes": round(percentile(values, 90), 1),
        "mean_bytes": round(sum(values) / len(values), 1),
        "max_bytes": max(values),
    }


def measure_memory(client: redis.Redis, sample: int = 2000) -> dict[str, Any]:
    """Sample up to ``sample`` profile keys (in SCAN order) and measure each exactly.

    ``MEMORY USAGE key SAMPLES 0`` counts every field of the hash. The profile count is from a full
    SCAN; ``median_bytes`` etc. are over the sample, also split by customer/anonymous profiles.
    """
    keys: list[bytes] = []
    total = 0
    for key in client.scan_iter(match=PROFILE_PATTERN, count=1000):
        total += 1
        if len(keys) < sample:
            keys.append(key)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
        pipe.object("encoding", key)
        pipe.hlen(key)
    replies = pipe.execute() if keys else []
    sizes: list[int] = []
    by_kind: dict[str, list[int]] = {}
    encodings: Counter[str] = Counter()
    fields: list[int] = []
    for i, key in enumerate(keys):
        usage, encoding, hlen = replies[3 * i : 3 * i + 3]
        if usage is None:  # deleted meanwhile (nothing else writes; defensive)
            continue
        sizes.append(int(usage))
        by_kind.setdefault(_kind(key), []).append(int(usage))
        enc = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
        encodings[enc] += 1
        fields.append(int(hlen))
    info = client.info("memory")
    compact = sum(n for enc, n in encodings.items() if enc in COMPACT_ENCODINGS)
    return {
        "profile_keys": total,
        "db_keys": int(client.dbsize()),
        "sampled": len(sizes),
        **_sizes(sizes),
        "fields_median": round(percentile(fields, 50), 1) if fields else 0,
        "encodings": dict(encodings.most_common()),
        "compact_share": round(compact / len(sizes), 4) if sizes else 0.0,
        "by_kind": {kind: _sizes(v) for kind, v in sorted(by_kind.items())},
        "used_memory_bytes": int(info.get("used_memory", 0)),
        "redis_version": str(client.info("server").get("redis_version", "")),
        "hash_max_entries": _config(
            client, "hash-max-listpack-entries", "hash-max-ziplist-entries"
        ),
        "hash_max_value": _config(client, "hash-max-listpack-value", "hash-max-ziplist-value"),
    }


def _config(client: redis.Redis, *names: str) -> str | None:
    """The first of ``names`` this Redis knows (listpack names are Redis 7, ziplist Redis 6)."""
    for name in names:
        try:
            got = client.config_get(name)
        except redis.ResponseError:
            continue
        for k, v in got.items():
            if (k.decode() if isinstance(k, bytes) else str(k)) == name:
                return v.decode() if isinstance(v, bytes) else str(v)
    return None
