"""The product dataflow as a module-level ``flow``, for Bytewax's own runner::

    NEXTBEST_REDIS_URL=redis://... NEXTBEST_KAFKA_BROKERS=host:9092 \\
        python -m bytewax.run nextbest.flow:flow [-w workers] [-i process -a addresses]

(the way to run a Bytewax cluster of several processes). It reads the same settings as
``nextbest run`` but needs external services: the embedded Redis and broker live only as long as
one command. The input topics are listed when the flow starts; when partitions are added or a
topic is recreated the flow stops cleanly (the process exits) so that the orchestrator starts it
again over every partition, from the recovery snapshot (``NEXTBEST_RECOVERY_DIR``). Topics are not
created here: create them first (``nextbest run`` does, once).
"""

from __future__ import annotations

from bytewax.dataflow import Dataflow

from dataflows.sources import StopRequest
from nextbest.running import kafka_flow
from nextbest.settings import ConfigError, Settings


def _from_env() -> Dataflow:
    settings = Settings.from_env()
    url = settings.redis_client_url  # (a Redis Cluster's URL with NEXTBEST_REDIS_CLUSTER)
    if not url or not settings.kafka_brokers:
        raise ConfigError(
            "nextbest.flow needs external services: set NEXTBEST_REDIS_URL and "
            "NEXTBEST_KAFKA_BROKERS (or use `nextbest run`, which can start embedded ones)"
        )
    built: Dataflow = kafka_flow(settings, settings.kafka_brokers, url, StopRequest())
    return built


flow = _from_env()
