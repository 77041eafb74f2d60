"""The public profile document: features as of a time, value tiers, resolved identity.

One function used by the CLI (``nextbest profile``) and by serving, so both answer the same.
"""

from __future__ import annotations

from typing import Any

from features.profile import ProfileView, render
from features.rfm import RfmBoundaries, rfm_fields, rfm_point


def profile_document(
    v: ProfileView, as_of_ms: int, bounds: RfmBoundaries | None, resolved_from: str | None = None
) -> dict[str, Any]:
    """The profile as of ``as_of_ms``; ``resolved_from`` names the anonymous id looked up."""
    doc = render(v, as_of_ms)
    doc.update(
        rfm_fields(rfm_point(v.purchases_total, v.revenue_total, v.last_purchase_ts), bounds)
    )
    if resolved_from is not None:
        doc["resolved_from_anonymous_id"] = resolved_from
    return doc
