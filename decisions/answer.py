"""A decision as the API answers it and as the decision log records it (pure).

The answer (:func:`answer_body`): ``decision_id``; ``actions``, the served one first, each with
its arbitration terms (``priority`` = ``propensity`` x ``value`` x ``weight``), the
``probability`` the policy serves it with, the propensity's ``source`` (``model``, ``prior``,
or ``exploration`` for an action served by an exploration draw; ``propensity_source`` keeps
model or prior), its rendered ``payload`` and an ``explanation`` (the eligibility conditions
that held, the top feature contributions of the action model, the arbitration terms);
``excluded`` actions with the reason; ``policy``; ``freshness`` (``as_of``, the profile's newest
event, model versions, the catalogue's digest); ``degraded`` and ``reason``.
"""

from __future__ import annotations

from typing import Any

from decisions.catalog import Catalog
from decisions.policy import Decision, Ranked, prior_propensity, render_payload
from schemas.decisions import Candidate, DecisionRecord
from schemas.events import format_ts


def fallback_decision(cat: Catalog, channel: str) -> Decision:
    """The channel's fallback action alone (valued on an empty profile: its defaults), or
    nothing when the channel has none: what a degraded decision serves.

    >>> from decisions.catalog import load_catalog
    >>> d = fallback_decision(load_catalog(segments=("loyal",)), "web")
    >>> d.served.action.id, d.selection, d.served.probability
    ('recommended_products', 'fallback', 1.0)
    """
    fb = cat.channels[channel].fallback
    ranked: tuple[Ranked, ...] = ()
    if fb is not None:
        a = cat[fb]
        prop = prior_propensity(a, {})
        v = a.value.of({})
        ranked = (Ranked(a, prop, v, prop.p * v * a.weight, 1.0, ()),)
    served = ranked[0] if ranked else None
    return Decision(channel, ranked, served, "fallback" if ranked else "none", cat.epsilon, (), ())


def record_of(
    decision_id: str,
    key: str,
    as_of_ms: int,
    d: Decision,
    features: dict[str, float],
    degraded: str | None,
    catalog_digest: str,
    model_versions: dict[str, int],
) -> DecisionRecord:
    """The decision log record of a decision."""
    return DecisionRecord(
        decision_id=decision_id,
        ts=as_of_ms,
        key=key,
        customer_id=key[2:] if key.startswith("c:") else None,
        anonymous_id=key[2:] if key.startswith("a:") else None,
        channel=d.channel,
        policy="epsilon_greedy",
        epsilon=d.epsilon,
        served=d.served.action.id if d.served is not None else None,
        served_probability=d.served.probability if d.served is not None else 1.0,
        selection=d.selection,
        candidates=[
            Candidate(
                action_id=c.action.id,
                propensity=c.propensity.p,
                source=c.propensity.source,
                value=c.value,
                weight=c.action.weight,
                priority=c.priority,
                probability=c.probability,
            )
            for c in d.candidates
        ],
        features=features,
        model_versions=model_versions,
        degraded=degraded is not None,
        reason=degraded,
        catalog=catalog_digest,
    )


def answer_body(
    decision_id: str,
    as_of_ms: int,
    d: Decision,
    doc: dict[str, Any],
    newest: str | None,
    degraded: str | None,
    versions: dict[str, int],
    catalog_digest: str,
) -> dict[str, Any]:
    """The API's answer (see the module docstring)."""
    served_p = d.served.probability if d.served is not None else None
    return {
        "decision_id": decision_id,
        "channel": d.channel,
        "actions": [action_body(r, r is d.served, d.selection, doc) for r in d.ranked],
        "excluded": [{"id": a, "reason": why} for a, why in d.excluded],
        "policy": {
            "name": "epsilon_greedy",
            "epsilon": d.epsilon,
            "selection": d.selection,
            "served_probability": None if served_p is None else round(served_p, 6),
        },
        "freshness": {
            "as_of": format_ts(as_of_ms),
            "newest_event": newest,
            "profile": "none" if degraded else ("stored" if newest else "empty"),
            "model_versions": versions,
            "catalog": catalog_digest,
        },
        "degraded": degraded is not None,
        "reason": degraded,
    }


def action_body(r: Ranked, served: bool, selection: str, doc: dict[str, Any]) -> dict[str, Any]:
    """One action of the answer."""
    p = r.propensity
    contributions = [{"feature": f, "contribution": round(c, 4)} for f, c in p.contributions]
    source = "exploration" if served and selection == "exploration" else p.source
    return {
        "id": r.action.id,
        "description": r.action.description,
        "served": served,
        "priority": round(r.priority, 6),
        "propensity": round(p.p, 6),
        "source": source,
        "propensity_source": p.source,
        "value": round(r.value, 4),
        "weight": r.action.weight,
        "probability": round(r.probability, 6),
        "payload": render_payload(r.action.payload, doc),
        "explanation": {
            "eligibility": list(r.rules),
            "contributions": contributions,
            "arbitration": (
                f"priority {r.priority:.4g} = propensity {p.p:.4g} ({p.source}) x value "
                f"{r.value:.4g} x weight {r.action.weight:g}"
            ),
        },
    }
