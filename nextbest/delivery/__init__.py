"""Webhook delivery of segment transitions (``nextbest deliver``).

- :mod:`~nextbest.delivery.signing`: the body's HMAC signature and the backoff schedule (pure);
- :mod:`~nextbest.delivery.config`: the webhook destinations (YAML), validated at start;
- :mod:`~nextbest.delivery.transport`: one HTTP POST, classified (success, retriable or not);
- :mod:`~nextbest.delivery.worker`: one record to every destination, retries, dead letters;
- :mod:`~nextbest.delivery.deadletters`: the dead-letter topic or file;
- :mod:`~nextbest.delivery.sources`: the Kafka consumer and the followed JSONL file;
- :mod:`~nextbest.delivery.metrics`: Prometheus metrics.
"""
