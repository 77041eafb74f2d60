# syntax=docker/dockerfile:1
# nextbest: one image for `nextbest serve`, `nextbest run` and `nextbest deliver`.
# The embedded Redis and broker (pip-installed binaries) come with the package's dependencies but
# are not used here: set NEXTBEST_REDIS_URL and NEXTBEST_KAFKA_BROKERS (the Helm chart always does).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: a wheel of the package, installed with its pinned dependencies into a venv --------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY features ./features
COPY models ./models
COPY decisions ./decisions
COPY dataflows ./dataflows
COPY serving ./serving
COPY nextbest ./nextbest
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/nextbest \
 && /opt/nextbest/bin/pip install /dist/nextbest-*.whl \
 && /opt/nextbest/bin/nextbest --help > /dev/null

# --- runtime: the venv only, as a non-root user ------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/nextbest/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NEXTBEST_HOME=/var/lib/nextbest
RUN groupadd --system --gid 10001 nextbest \
 && useradd --system --uid 10001 --gid nextbest --home-dir /var/lib/nextbest --create-home \
      --shell /usr/sbin/nologin nextbest
COPY --from=builder /opt/nextbest /opt/nextbest
USER 10001:10001
WORKDIR /var/lib/nextbest
# 8000: the HTTP API (`serve`, /metrics included); 9464: /metrics of `run` and `deliver`
EXPOSE 8000 9464
# No HEALTHCHECK: the image runs three different commands; Kubernetes probes `serve` on /healthz
# and /readyz (the Helm chart).
ENTRYPOINT ["nextbest"]
CMD ["serve", "--host", "0.0.0.0"]
