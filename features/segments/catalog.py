"""What a segment rule may read: every comparable field of the profile document, typed.

A rule names a *feature*; this catalogue says its type, whether it may be null, how to read it
from a profile document and how it changes with time when no event arrives:

- every feature of :data:`features.registry.FEATURES` that is a number, a boolean, a timestamp
  or a list of strings (``category_scores``, ``counts`` and ``identities`` are objects: not
  comparable; ``has_identities`` says whether ``identities`` is non-empty);
- the RFM fields of :func:`features.rfm.rfm_fields` (``rfm_r``, ``rfm_f``, ``rfm_m``,
  ``rfm_segment``);
- a model score per target, ``score.<target>`` (a probability in [0, 1]), read from
  ``doc["scores"][target]["probability"]`` as serving writes it (:data:`DEFAULT_TARGETS` are
  ``models.targets.NAMES``; this layer cannot import models, a test keeps them equal);
- a trait, ``traits.<name>`` (any trait name, standard or custom: :mod:`schemas.traits`), read
  from ``doc["traits"][name]["value"]`` (null when the profile has no such trait). A trait is a
  string, a number or a boolean (kind ``trait``): a comparison with a constant of another type is
  false. Traits change only with events.

Time kinds (:attr:`FeatureType.time`): ``window`` (a windowed count or amount: changes when a
bucket enters or leaves its window), ``monotone`` (non-decreasing in time for a fixed profile:
``days_since_*``, ``tenure_days``, ``cart_abandoned``), ``score`` (changes as the model says) and
``None`` (constant between events).

A new feature in the registry must be classified here: the import fails until it is.

Examples
--------
>>> t = catalog()["days_since_last_seen"]
>>> t.kind, t.nullable, t.time
('number', True, 'monotone')
>>> catalog()["top_categories"].kind, catalog()["score.churn"].time
('list', 'score')
>>> read({"scores": {"churn": {"probability": 0.8}}}, "score.churn")
0.8
>>> read({"identities": []}, "has_identities")
False
>>> read({"traits": {"loyalty_tier": {"value": "gold"}}}, "traits.loyalty_tier")
'gold'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, Literal

from features.registry import FEATURES
from features.rfm import SEGMENTS as RFM_SEGMENTS
from schemas.traits import TRAIT_NAME_RE

Kind = Literal["number", "boolean", "string", "timestamp", "list", "trait"]
Time = Literal["window", "monotone", "score"] | None

#: The model targets a rule may read as ``score.<target>`` (equal to ``models.targets.NAMES``).
DEFAULT_TARGETS: Final = ("churn", "propensity")
#: Prefix of score features.
SCORE_PREFIX: Final = "score."
#: Prefix of trait features.
TRAIT_PREFIX: Final = "traits."


@dataclass(frozen=True, slots=True)
class FeatureType:
    """How a rule may use one feature.

    ``choices``: the only values a string feature takes (``rfm_segment``), checked at load.
    """

    kind: Kind
    nullable: bool = False
    time: Time = None
    choices: tuple[str, ...] | None = None


_NUM: Final = FeatureType("number")
_NUM_NULL: Final = FeatureType("number", nullable=True)
_TS: Final = FeatureType("timestamp", nullable=True)
_GROWS: Final = FeatureType("number", nullable=True, time="monotone")

#: The registry's scalar features that rules may read (windowed ones are numbers, by kind).
_SCALARS: Final[dict[str, FeatureType]] = {
    "purchases_total": _NUM,
    "revenue_total": _NUM,
    "avg_order_value": _NUM_NULL,
    "first_seen_ts": _TS,
    "last_seen_ts": _TS,
    "last_purchase_ts": _TS,
    "days_since_last_purchase": _GROWS,
    "days_since_last_seen": _GROWS,
    "tenure_days": _GROWS,
    "cart_items": _NUM,
    "cart_value": _NUM,
    "cart_abandoned": FeatureType("boolean", time="monotone"),
    "top_categories": FeatureType("list"),
    "events_total": _NUM,
}
#: The registry's features rules do not compare (objects), with what to use instead.
NOT_COMPARABLE: Final = {
    "category_scores": "top_categories",
    "counts": "events_total or a windowed count",
    "identities": "has_identities",
}
_EXTRA: Final[dict[str, FeatureType]] = {
    "has_identities": FeatureType("boolean"),
    "rfm_r": _NUM_NULL,
    "rfm_f": _NUM_NULL,
    "rfm_m": _NUM_NULL,
    "rfm_segment": FeatureType("string", choices=RFM_SEGMENTS),
}


def _registry_types() -> dict[str, FeatureType]:
    out: dict[str, FeatureType] = {}
    for f in FEATURES:
        if f.kind in ("count", "money"):
            out[f.name] = FeatureType("number", time="window")
        elif f.name in _SCALARS:
            out[f.name] = _SCALARS[f.name]
        elif f.name not in NOT_COMPARABLE:
            raise ValueError(
                f"feature {f.name}: classify it in features.segments.catalog "
                "(_SCALARS or NOT_COMPARABLE)"
            )
    stale = (_SCALARS.keys() | NOT_COMPARABLE.keys()) - {f.name for f in FEATURES}
    if stale:
        raise ValueError(f"features.segments.catalog names unknown features: {sorted(stale)}")
    return out


_REGISTRY_TYPES: Final = _registry_types()


@cache
def catalog(targets: tuple[str, ...] = DEFAULT_TARGETS) -> Mapping[str, FeatureType]:
    """Every feature a rule may read, by name, for the given score targets."""
    scores = {SCORE_PREFIX + t: FeatureType("number", time="score") for t in targets}
    return {**_REGISTRY_TYPES, **_EXTRA, **scores}


TRAIT: Final = FeatureType("trait", nullable=True)


def feature_type(name: str, targets: tuple[str, ...] = DEFAULT_TARGETS) -> FeatureType | None:
    """A feature's type: from the catalogue, or a trait's (``traits.<name>``); ``None`` if it is
    neither.

    >>> feature_type("traits.loyalty_tier").kind, feature_type("traits.Bad"), feature_type("x")
    ('trait', None, None)
    """
    if name.startswith(TRAIT_PREFIX):
        return TRAIT if TRAIT_NAME_RE.fullmatch(name[len(TRAIT_PREFIX) :]) else None
    return catalog(targets).get(name)


class MissingFeatureError(KeyError):
    """A document lacks a field a rule reads (the caller built the document without it)."""


def read(doc: Mapping[str, Any], name: str) -> Any:
    """The value of a catalogue feature in a profile document (see the module docstring).

    ``has_identities`` is read from ``identities`` (or from ``has_identities`` if the document
    carries that instead); a score from ``doc["scores"][target]["probability"]``.
    """
    try:
        if name.startswith(SCORE_PREFIX):
            score = doc["scores"][name[len(SCORE_PREFIX) :]]
            return score["probability"] if isinstance(score, Mapping) else score
        if name == "has_identities" and "identities" in doc:
            return bool(doc["identities"])
        if name.startswith(TRAIT_PREFIX):
            got = doc["traits"].get(name[len(TRAIT_PREFIX) :])
            return got.get("value") if isinstance(got, Mapping) else got
        return doc[name]
    except KeyError as e:
        raise MissingFeatureError(f"the profile document has no {name!r} (missing {e})") from None


def names_of(kind: Kind, names: Iterable[str], targets: tuple[str, ...]) -> list[str]:
    """The names among ``names`` whose type is ``kind`` (for the JSON Schema)."""
    cat = catalog(targets)
    return [n for n in names if cat[n].kind == kind]
