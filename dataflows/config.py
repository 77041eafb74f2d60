"""The knobs of the profile dataflow."""

from __future__ import annotations

from dataclasses import dataclass

from models import labels as lb


@dataclass(frozen=True)
class FlowConfig:
    """The knobs of the flow (from settings)."""

    lateness_ms: int = 600_000
    retention_ms: int = 400 * 86_400_000
    recovery: bool = False
    rfm_publish_every: int = 1000
    #: A changed profile is written at most once per this many wall-clock ms (the rest of the
    #: changes in between are coalesced into the next write); 0 writes after every batch.
    write_interval_ms: int = 0
    #: Label horizons (churn, propensity) and the model settings.
    horizons: lb.Horizons = lb.DEFAULT_HORIZONS
    model_pipeline: str = "logreg"
    model_min_examples: int = 500
    checkpoint_every: int = 1000
    checkpoint_interval_ms: int = 30_000
    #: Take training snapshots and learn the online models (off: profiles only).
    models: bool = True
    #: Days between idle snapshots of a customer who stays away (0: none; see models.labels).
    idle_snapshot_days: int = 7
    #: Keys per second a clock re-projects after Redis lost its data.
    reproject_rate: int = 10_000
    #: Events more than this ahead of their record's own timestamp are rejected (0: no check).
    max_future_ms: int = 86_400_000
