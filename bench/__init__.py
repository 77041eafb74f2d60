"""Benchmarks that print ratios against baselines measured in the same run.

``python -m bench`` (``make bench``) simulates one event file and, against a Redis server and a
Kafka-protocol broker it starts itself, measures:

(a) ``baseline``: a minimal Bytewax flow (read, decode, count per key, discard) in-process;
(b) ``full``: ``nextbest replay FILE --json`` as a subprocess, writing profiles to Redis;
(c) ``freshness``: produce-to-Redis visibility at a fixed rate against ``nextbest run``, next to
    a transport baseline (the same events through the same broker to plain consumers);
(d) ``memory``: Redis memory and encoding of the profiles written by (b).

The full flow is driven only through its public entry points (the CLI and the Redis key layout
``nb:{c:<customer_id>}:profile``), so the bench does not depend on the flow's internals.
"""
