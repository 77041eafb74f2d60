"""Response bodies of the HTTP API (pydantic models: they make the OpenAPI document meaningful).

Error bodies are :class:`serving.errors.ErrorBody`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MembershipBody(BaseModel):
    """One current segment membership."""

    since: str = Field(
        description="Event time the customer entered the segment (RFC 3339, UTC).",
        examples=["2026-01-02T03:04:05Z"],
    )


class TraitBody(BaseModel):
    """One trait: the value kept, the source that sent it, that event's time."""

    value: str | bool | int | float | None = Field(description="The value (null: none).")
    source: str = Field(description="The source system, e.g. crm.", examples=["crm"])
    ts: str = Field(description="Event time of the value (RFC 3339, UTC).")


class ConflictBody(BaseModel):
    """An identifier claimed by several customers: the owner keeps it."""

    identifier: str = Field(description="The identifier's token (em:/ph: + 32 hex).")
    kind: Literal["email", "phone"]
    owner: str = Field(description="The customer whose claim came first in event time.")
    claimed_by: list[str] = Field(description="Every customer that claimed it.")


class ProfileBody(BaseModel):
    """A customer's profile as of a time (``features.profile.render``).

    Extra fields are allowed and passed through, so features added to ``render`` reach callers
    before this model lists them.
    """

    model_config = ConfigDict(extra="allow")

    customer_id: str = Field(description="The customer id.", examples=["42"])
    kind: Literal["customer", "anonymous"] = Field(description="Profile kind.")
    as_of: str = Field(
        description="The time the profile is computed as of (RFC 3339, UTC).",
        examples=["2026-01-02T03:04:05Z"],
    )
    first_seen_ts: str | None = Field(
        description="Event time of the earliest event (RFC 3339, UTC); null for a profile "
        "that has only traits (a CRM record without behaviour)."
    )
    last_seen_ts: str | None = Field(
        description="Event time of the latest event (RFC 3339, UTC); null as first_seen_ts."
    )
    events_total: int = Field(description="Events applied to the profile.", ge=0)
    purchases_total: int = Field(description="Purchases.", ge=0)
    revenue_total: float = Field(description="Purchase totals minus refund totals.")
    counts: dict[str, int] = Field(
        description="Events by type.", examples=[{"page_view": 3, "purchase": 1}]
    )
    traits: dict[str, TraitBody] = Field(
        default_factory=dict,
        description="The person's traits from source systems (identify events), each with the "
        "source and event time of the value kept (see the README, Traits). email and phone are "
        "tokens (salted hashes), never the raw values.",
        examples=[
            {"loyalty_tier": {"value": "gold", "source": "crm", "ts": "2026-01-02T03:04:05Z"}}
        ],
    )
    identifier_conflicts: list[ConflictBody] = Field(
        default_factory=list,
        description="Identifiers this customer claimed that another customer claimed too.",
    )
    segments: dict[str, MembershipBody] = Field(
        default_factory=dict,
        description="The customer's current segment memberships (as the dataflow last "
        "evaluated them) with the time each was entered.",
        examples=[{"cart_abandoned": {"since": "2026-01-02T03:34:05Z"}}],
    )


class VisitorBody(BaseModel):
    """A visitor's profile: the linked customer's (``customer_id`` set) or the anonymous one."""

    model_config = ConfigDict(extra="allow")

    customer_id: str | None = Field(default=None, description="The linked customer, if any.")
    anonymous_id: str | None = Field(default=None, description="Set for an anonymous profile.")
    resolved_from_anonymous_id: str = Field(description="The anonymous id that was looked up.")
    kind: Literal["customer", "anonymous"] = Field(description="Profile kind.")
    as_of: str = Field(description="The time the profile is computed as of (RFC 3339, UTC).")


class HealthBody(BaseModel):
    """Liveness: the process is up."""

    status: Literal["ok"] = "ok"


class ReadyBody(BaseModel):
    """Readiness: whether every dependency answers, and why not."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(
        description="Dependency name -> ``ok`` or the reason it is not ready.",
        examples=[{"redis": "ok"}],
    )
