"""Pure helpers of webhook delivery: the body's signature and the retry schedule.

The signature is what a receiver checks to know a POST came from us and was not altered: the
hex HMAC-SHA256 of the exact body bytes with the destination's shared secret, sent as
``X-Nextbest-Signature: sha256=<hex>``.

>>> header = signature(b'{"a":1}', "s3cret")
>>> header
'sha256=5910e62016ef5034272c926c27071992a465c2335cecf41851bda071577f4f6d'
>>> verify(b'{"a":1}', "s3cret", header), verify(b'{"a":2}', "s3cret", header)
(True, False)

Retries wait with exponential backoff and *full jitter*: after the n-th failed attempt the
wait is uniform in ``[0, min(cap, base * 2**(n-1))]``, so many deliverers that failed together
do not retry together.

>>> [backoff_ceiling(n, base_s=0.5, cap_s=60) for n in range(1, 10)]
[0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60, 60]
>>> import random
>>> rng = random.Random(7)
>>> all(0 <= backoff_delay(n, 0.5, 60, rng) <= backoff_ceiling(n, 0.5, 60) for n in range(1, 30))
True
"""

from __future__ import annotations

import hashlib
import hmac
import random

SIGNATURE_HEADER = "X-Nextbest-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def signature(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of body with secret>``: the value of the signature header."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(body: bytes, secret: str, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` with ``secret`` (constant-time compare);
    what a receiver does before trusting a POST."""
    if not header:
        return False
    return hmac.compare_digest(signature(body, secret), header.strip())


def backoff_ceiling(failed_attempts: int, base_s: float, cap_s: float) -> float:
    """The longest wait after ``failed_attempts`` failures: ``min(cap, base * 2**(n-1))``."""
    exponent = min(max(failed_attempts - 1, 0), 62)  # no float overflow for absurd counts
    return min(cap_s, base_s * 2.0**exponent)


def backoff_delay(
    failed_attempts: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """The wait before the next attempt: uniform in ``[0, backoff_ceiling(...)]`` (full jitter).

    >>> backoff_delay(3, 0.5, 60, random.Random(1)) <= 2.0
    True
    """
    draw = (rng or random).random()
    return draw * backoff_ceiling(failed_attempts, base_s, cap_s)


def retry_after_seconds(value: str | None, cap_s: float) -> float | None:
    """A ``Retry-After`` header given in seconds, bounded by ``cap_s`` (an HTTP date or junk: None).

    >>> retry_after_seconds("3", 60), retry_after_seconds("600", 60), retry_after_seconds("x", 60)
    (3.0, 60, None)
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds < 0 or seconds != seconds:  # negative or NaN
        return None
    return min(cap_s, seconds)
