"""Model inputs: a customer's features as of a time, from the same render the profile uses.

One definition for training and serving: the dataflow snapshots ``state_features(state, ts)``
for the labels, serving scores :func:`features_from_document` of the profile document it rendered
(or ``feature_vector(view, as_of)``), so there is no training/serving skew. Every value
is a finite float and the keys always come in the order of :data:`FEATURE_NAMES`.

The inputs are declared as data in :data:`MODEL_INPUTS` (their table is in the README, "Online
models"): each is a transform (mostly ``log1p``, ``log(1 + x)`` of a non-negative value, 0 for
null or negative ones) of features of :mod:`features.registry` as of ``as_of``. :func:`model_inputs`
computes them, once, over a :class:`FeatureSource`: a rendered document (:class:`DocumentSource`:
:func:`features_from_document`, serving) or a profile state (:class:`features.profile.StateSource`:
:func:`state_features`, the dataflow's training snapshots, without building a view or a document).
Their order is the models' input order (checkpoints keep weights in it).

The one-hour windows of the profile are left out on purpose: training snapshots describe a
customer just *before* the first event of a day (or an idle day), where they are almost always 0,
so a model could not learn them and would extrapolate wildly mid-session. (On the simulator,
leaving them out raised the churn AUC from 0.959 to 0.970.)

Examples
--------
>>> from features.profile import ingest, new_state, view
>>> from schemas import Event
>>> T = 1767323045000                                    # 2026-01-02T03:04:05Z
>>> s = new_state("c:42")
>>> _ = ingest(s, Event(event_id="1", type="purchase", ts=T, customer_id="42", total=99.0,
...                     category="shoes"), lateness_ms=600_000)
>>> f = feature_vector(view(s), T + 9 * 86_400_000)
>>> list(f) == list(FEATURE_NAMES)
True
>>> f["never_purchased"], round(f["log_days_since_last_purchase"], 4), f["n_top_categories"]
(0.0, 2.3026, 1.0)
>>> round(f["log_purchases_30d"], 4), f["log_purchases_7d"], round(f["log_revenue_total"], 4)
(0.6931, 0.0, 4.6052)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from features.profile import ProfileState, ProfileView, render, window_values
from features.registry import BY_NAME, FEATURES, Feature
from features.windows import DAY

__all__ = [
    "FEATURE_NAMES",
    "MODEL_INPUTS",
    "DocumentSource",
    "FeatureSource",
    "ModelInput",
    "feature_vector",
    "features_from_document",
    "input_table",
    "model_inputs",
    "state_features",
]


class FeatureSource(Protocol):
    """A profile as of a time, as model inputs read it: a state (no view, no document: the
    training snapshots' hot path) or a rendered document (serving)."""

    def number(self, f: Feature, /) -> float | None:
        """A windowed or ``number``-carrying feature's value as a number (``None``: null)."""
        ...


class DocumentSource:
    """The numbers of a rendered profile document (missing fields read as null)."""

    __slots__ = ("doc",)

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc

    def number(self, f: Feature, /) -> float | None:
        """``doc[f.name]``, parsed back to a number when it is a timestamp or a list."""
        x = self.doc.get(f.name)
        if x is None or f.parse is None:
            return x  # type: ignore[no-any-return]
        return f.parse(x)


def log1p(x: Any) -> float:
    """log1p of a non-negative number; ``None``, negatives and non-finite values give 0.

    >>> log1p(None), log1p(-3.0), log1p(float("inf")), round(log1p(1), 4)
    (0.0, 0.0, 0.0, 0.6931)
    """
    if x is None:
        return 0.0
    v = float(x)
    if not v > 0.0 or math.isinf(v):
        return 0.0
    return math.log1p(v)


def _flag(x: Any) -> float:
    return 1.0 if x else 0.0


def _size(x: Any) -> float:
    return 0.0 if x is None else float(x)


def _never(purchases: Any, last_purchase: Any) -> float:
    return 1.0 if not purchases and last_purchase is None else 0.0


def _log_span_days(first: Any, last: Any) -> float:
    return log1p(None if first is None or last is None else (last - first) / DAY)


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One model input: ``how`` of the numbers of the features it ``reads``."""

    name: str
    reads: tuple[Feature, ...]
    how: Callable[..., float]
    doc: str


def _input(name: str, how: Callable[..., float], doc: str, *reads: str) -> ModelInput:
    return ModelInput(name, tuple(BY_NAME[r] for r in reads), how, doc)


#: Every model input, in the models' input order (checkpoints keep weights in it): the windowed
#: features marked ``model``, in registry order, then these scalars. Every value is a finite float.
MODEL_INPUTS: Final[tuple[ModelInput, ...]] = (
    *(_input(f"log_{f.name}", log1p, f"log1p of `{f.name}`", f.name) for f in FEATURES if f.model),
    _input("log_purchases_total", log1p, "log1p of `purchases_total`", "purchases_total"),
    _input("log_revenue_total", log1p, "log1p of `revenue_total` (0 if negative)", "revenue_total"),
    _input(
        "log_avg_order_value",
        log1p,
        "log1p of `avg_order_value`; 0 when never purchased",
        "avg_order_value",
    ),
    _input(
        "never_purchased",
        _never,
        "1.0 without any purchase, else 0.0",
        "purchases_total",
        "last_purchase_ts",
    ),
    _input(
        "log_days_since_last_purchase",
        log1p,
        "log1p of `days_since_last_purchase`; 0 when never purchased",
        "days_since_last_purchase",
    ),
    _input(
        "log_days_since_last_seen",
        log1p,
        "log1p of `days_since_last_seen`; 0 when null",
        "days_since_last_seen",
    ),
    _input(
        "log_active_days",
        _log_span_days,
        "log1p of the days from the first to the last event; 0 if none (not `tenure_days`, "
        "which keeps growing while a customer is away, as `days_since_last_seen` does)",
        "first_seen_ts",
        "last_seen_ts",
    ),
    _input("log_events_total", log1p, "log1p of `events_total`", "events_total"),
    _input("log_cart_items", log1p, "log1p of `cart_items`", "cart_items"),
    _input("log_cart_value", log1p, "log1p of `cart_value`", "cart_value"),
    _input("cart_abandoned", _flag, "1.0 when `cart_abandoned`, else 0.0", "cart_abandoned"),
    _input("n_top_categories", _size, "number of `top_categories` (0 to 3)", "top_categories"),
)

#: Every model input's name, in the order :func:`model_inputs` returns them.
FEATURE_NAMES: Final[tuple[str, ...]] = tuple(i.name for i in MODEL_INPUTS)

# (name, how, first read, second read or None): no per-call allocation beyond the result.
_PLAN: Final = tuple(
    (i.name, i.how, i.reads[0], i.reads[1] if len(i.reads) > 1 else None) for i in MODEL_INPUTS
)
if any(len(i.reads) > 2 for i in MODEL_INPUTS):
    raise ValueError("a model input reads at most two features")


def model_inputs(src: FeatureSource) -> dict[str, float]:
    """The model inputs of a profile as of a time, keys in :data:`FEATURE_NAMES` order.

    Parameters
    ----------
    src
        A :class:`DocumentSource` or a :class:`features.profile.StateSource`.

    Returns
    -------
    dict[str, float]
        Every input of :data:`MODEL_INPUTS`: a finite float.
    """
    num = src.number
    f: dict[str, float] = {}
    for name, how, a, b in _PLAN:
        f[name] = how(num(a)) if b is None else how(num(a), num(b))
    return f


def features_from_document(doc: Mapping[str, Any]) -> dict[str, float]:
    """The model features of a rendered profile document (:func:`features.profile.render`).

    Parameters
    ----------
    doc
        The public profile document as of some time.

    Returns
    -------
    dict[str, float]
        ``model_inputs(DocumentSource(doc))``: keys in :data:`FEATURE_NAMES` order.

    Examples
    --------
    >>> from features.profile import ProfileView, render
    >>> doc = render(ProfileView(key="c:1"), as_of=0)             # a customer never seen
    >>> f = features_from_document(doc)
    >>> f["never_purchased"], sum(f.values())
    (1.0, 1.0)
    """
    return model_inputs(DocumentSource(doc))


def feature_vector(v: ProfileView, as_of_ms: int) -> dict[str, float]:
    """The model features of a profile view as of a time.

    Parameters
    ----------
    v
        A view: :func:`features.profile.view` of a state, or ``from_fields`` of its Redis hash.
    as_of_ms
        Epoch milliseconds (event time).

    Returns
    -------
    dict[str, float]
        ``features_from_document(render(v, as_of_ms))``: keys in :data:`FEATURE_NAMES` order.

    Examples
    --------
    >>> from features.profile import ProfileView
    >>> v = ProfileView(key="a:dev", first_seen_ts=0, last_seen_ts=0, events_total=1,
    ...                 counts={"page_view": 1}, buckets={"pv24h": {0: 1}})
    >>> f = feature_vector(v, as_of_ms=2 * 86_400_000)
    >>> round(f["log_days_since_last_seen"], 4), f["log_page_views_24h"], f["never_purchased"]
    (1.0986, 0.0, 1.0)
    """
    return features_from_document(render(v, as_of_ms))


def _state_reader(f: Feature) -> tuple[int, int, int, Callable[[Any, int], float | None] | None]:
    """How :func:`state_features` reads a feature: (0, series) a window count, (1, plus, minus) a
    net window sum in currency units, (2, -, -, number) a scalar of the totals."""
    if f.number is not None:
        return (2, 0, 0, f.number)
    if f.series is None:
        raise ValueError(f"{f.name}: neither windowed nor a number")
    if f.minus is None:
        return (0, f.series.idx, 0, None)
    return (1, f.series.idx, f.minus.idx, None)


# :data:`MODEL_INPUTS` compiled for states: what StateSource.number would do, without a call per
# read (the training snapshots' hot path); the property test holds it equal to the documents'.
_STATE_PLAN: Final = tuple(
    (
        i.name,
        i.how,
        *_state_reader(i.reads[0]),
        _state_reader(i.reads[1]) if len(i.reads) > 1 else None,
    )
    for i in MODEL_INPUTS
)


def state_features(state: ProfileState, as_of_ms: int) -> dict[str, float]:
    """``model_inputs(StateSource(state, as_of_ms))``: the model features straight from a state.

    The dataflow's training snapshots use it: no view or document is built, and the reads of
    :data:`MODEL_INPUTS` are compiled once (equal to going through :class:`StateSource`, which a
    test checks). A property test holds it equal to :func:`feature_vector` of the state's view
    (the other source).

    Examples
    --------
    >>> from features.profile import ingest, new_state, view
    >>> from schemas import Event
    >>> s = new_state("c:42")
    >>> _ = ingest(s, Event(event_id="1", type="purchase", ts=1767323045000, customer_id="42",
    ...                     total=99.0, category="shoes"), lateness_ms=600_000)
    >>> later = 1767323045000 + 86_400_000
    >>> state_features(s, later) == feature_vector(view(s), later)
    True
    >>> from features.profile import StateSource
    >>> state_features(s, later) == model_inputs(StateSource(s, later))
    True
    """
    sums = window_values(state, as_of_ms)
    totals = state.current
    f: dict[str, float] = {}
    for name, how, kind, a, b, read, second in _STATE_PLAN:
        if kind == 0:
            x: float | None = sums[a]
        elif kind == 1:
            x = (sums[a] - sums[b]) / 100
        else:
            x = read(totals, as_of_ms)  # type: ignore[misc]
        if second is None:
            f[name] = how(x)
            continue
        k2, a2, b2, read2 = second
        if k2 == 0:
            y: float | None = sums[a2]
        elif k2 == 1:
            y = (sums[a2] - sums[b2]) / 100
        else:
            y = read2(totals, as_of_ms)  # type: ignore[misc]
        f[name] = how(x, y)
    return f


def input_table() -> str:
    """The README's table of model inputs (Markdown)."""
    rows = ["| model input | definition |", "| --- | --- |"]
    rows += [f"| `{i.name}` | {i.doc} |" for i in MODEL_INPUTS]
    return "\n".join(rows)
