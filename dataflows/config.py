"""The knobs of the profile dataflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from features.traits import LATEST_WINS, TraitPolicy
from models import labels as lb
from schemas.consent import ALL_GRANTED, ConsentDefaults
from schemas.identifiers import UNSALTED, IdentifierHasher

if TYPE_CHECKING:
    from dataflows.steps.segments import SegmentContext
    from decisions.catalog import Catalog


@dataclass(frozen=True)
class FlowConfig:
    """The knobs of the flow. Built from the settings only, by
    :meth:`nextbest.settings.Settings.flow_config` (tests too, with explicit overrides), so that
    no run uses values production never uses; hence no defaults here but for what has no
    setting."""

    lateness_ms: int
    retention_ms: int
    recovery: bool
    #: A changed profile is written at most once per this many wall-clock ms (the rest of the
    #: changes in between are coalesced into the next write); 0 writes after every batch.
    write_interval_ms: int
    #: Label horizons (churn, propensity) and the model settings.
    horizons: lb.Horizons
    model_pipeline: str
    model_min_examples: int
    checkpoint_every: int
    checkpoint_interval_ms: int
    #: Days between idle snapshots of a customer who stays away (0: none; see models.labels).
    idle_snapshot_days: int
    #: Keys per second a clock re-projects after Redis lost its data.
    reproject_rate: int
    #: Events more than this ahead of their record's own timestamp are rejected (0: no check).
    max_future_ms: int
    #: Take training snapshots and learn the online models (off: profiles only).
    models: bool = True
    #: RFM boundaries are published every this many changes of the population.
    rfm_publish_every: int = 1000
    #: Segment definitions and what their rules read beyond the profile (None: no segments).
    segments: SegmentContext | None = None
    #: The action catalogue (attribution windows, the actions' models): decision records and
    #: outcomes in the input train the action models (None: decision records are rejected).
    actions: Catalog | None = None
    #: Product knowledge (popularity, trending, co-occurrence) for recommendations.
    products: bool = True
    #: How traits are merged (``NEXTBEST_TRAITS``).
    traits: TraitPolicy = LATEST_WINS
    #: Each consent purpose's default (``NEXTBEST_CONSENT``).
    consent: ConsentDefaults = ALL_GRANTED
    #: Hashes identifiers at decode (``NEXTBEST_IDENTITY_SALT``; the commands always give it,
    #: :func:`nextbest.running.flow_config`; its repr hides the salt).
    ids: IdentifierHasher = UNSALTED

    @property
    def actions_keep_ms(self) -> int:
        """How long a profile's contact counters live after a write (see decisions.store)."""
        from decisions.store import keep_ms

        return keep_ms(self.actions) if self.actions is not None else 0
