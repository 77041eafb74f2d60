"""Recommendations: candidates from several sources, one blended score, business filters.

Pure: the inputs are what serving read from Redis (:class:`Inputs`), the settings a
:class:`RecoConfig` (a YAML file, ``NEXTBEST_RECOMMENDATIONS``; the shipped one is
``decisions/recommendations.yaml``).

**Sources** (each gives a candidate a score in ``[0, 1]``):

* ``item_to_item``: the neighbours (:mod:`features.products`) of the *seeds*: the page's
  ``context_product`` and the customer's most recent distinct products (viewed or carted; the
  newest first). A seed's weight is ``seed_decay ** rank`` (the last click counts most; the
  context product has rank 0) times ``2 ** (-age / seed_half_life_hours)`` (what was viewed
  a week ago says less about now). Per seed, a neighbour's value is the sum over relations of
  ``relations[relation]`` x its co-occurrence weight (decayed to ``as_of``), divided by the
  seed's strongest; a candidate's score is the sum over seeds of ``seed weight x value``
  (evidence adds up: a product near several recent products scores more than 1).
* ``category``: the customer's top ``categories`` by interest, each with its share of their
  interest, times a product's popularity in that category relative to the category's first.
* ``trending``: trending over the last 24 hours, relative to the first.
* ``popular``: popularity over the last weeks (global), relative to the first.

**Score** = ``sum(weights[source] * source score)``; ties by product id. **Filters**: products
bought within ``repurchase_days``, in the cart, out of stock in the catalogue, the page's own
product (``context_product``) and the product interacted with last, if that was within
``exclude_last_minutes`` (the page the visitor is on), are not recommended (one viewed earlier
may be: "continue where you left off"); with ``category``, only that
category. **Diversity**: at most ``max_per_category`` products of a category among the answer
(then the next best of other categories). Each item says which sources proposed it and why
(its strongest contribution).

Examples
--------
>>> cfg = RecoConfig()
>>> inp = Inputs(recent=[(0, "v", "a", "shoes")],
...              neighbours={"a": ({"view": [("b", 4.0, "shoes"), ("c", 1.0, "bags")]}, 0)},
...              popular=[("d", 5.0, "toys")])
>>> [(i.product_id, i.sources, i.reason) for i in rank(inp, cfg, 3)]
... # doctest: +NORMALIZE_WHITESPACE
[('b', ['item_to_item'], 'viewed together with a'),
 ('c', ['item_to_item'], 'viewed together with a'),
 ('d', ['popular'], 'popular now')]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from features import products as pr

#: Sources in the order they are listed in an item.
SOURCES: Final = ("item_to_item", "category", "trending", "popular")
RELATIONS: Final = pr.RELATIONS
_REASONS: Final = {
    "view": "viewed together with {}",
    "cart": "added to cart together with {}",
    "buy": "bought together with {}",
}


class RecoConfigError(ValueError):
    """An invalid recommendations file: ``file``, ``line`` (or ``None``), ``field``."""

    def __init__(self, file: str, line: int | None, field: str | None, message: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        head = f"{where}: field {field}" if field else where
        super().__init__(f"{head}: {message}")
        self.file, self.line, self.field, self.message = file, line, field, message


@dataclass(frozen=True, slots=True)
class RecoConfig:
    """How recommendations are blended and filtered (see the module docstring)."""

    weights: Mapping[str, float] = field(
        default_factory=lambda: {
            "item_to_item": 1.0,
            "category": 1.0,
            "trending": 0.15,
            "popular": 0.1,
        }
    )
    relations: Mapping[str, float] = field(
        default_factory=lambda: {"view": 1.0, "cart": 1.5, "buy": 2.0}
    )
    seeds: int = 5
    seed_decay: float = 0.6
    seed_half_life_hours: float = 24.0
    categories: int = 3
    repurchase_days: float = 7.0
    exclude_last_minutes: float = 30.0
    max_per_category: int = 5
    #: A digest of the file, for answers' freshness (empty: the defaults).
    digest: str = ""


@dataclass(slots=True)
class Inputs:
    """What one answer reads.

    ``recent``: ``(ts, kind, product, category)``, newest last (a profile's ``recent``);
    ``neighbours``: product -> (relation -> ``[(neighbour, weight, category)]``, as of ms);
    ``popular`` / ``trending``: ``[(product, score, category)]`` best first; ``by_category``:
    category -> the same; ``interests``: category -> score; ``cart`` and ``bought`` (product ->
    ts) as in a profile; ``unavailable``: products the catalogue says are out of stock.
    """

    recent: Sequence[tuple[int, str, str, str]] = ()
    context_product: str | None = None
    neighbours: Mapping[str, tuple[Mapping[str, Sequence[tuple[str, float, str]]], int]] = field(
        default_factory=dict
    )
    popular: Sequence[tuple[str, float, str]] = ()
    trending: Sequence[tuple[str, float, str]] = ()
    by_category: Mapping[str, Sequence[tuple[str, float, str]]] = field(default_factory=dict)
    interests: Mapping[str, float] = field(default_factory=dict)
    cart: Mapping[str, int] = field(default_factory=dict)
    bought: Mapping[str, int] = field(default_factory=dict)
    unavailable: AbstractSet[str] = frozenset()
    category: str | None = None
    as_of: int = 0
    #: personal sources (item-to-item from the history, category interest) allowed
    personal: bool = True
    #: the profile was left out: its personalization consent is withdrawn
    withheld: bool = False


@dataclass(slots=True)
class Item:
    """One recommended product."""

    product_id: str
    score: float
    category: str
    sources: list[str]
    reason: str
    contributions: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The item as answered (the API's ``items``)."""
        return {
            "product_id": self.product_id,
            "score": round(self.score, 6),
            "category": self.category or None,
            "sources": self.sources,
            "reason": self.reason,
            "contributions": {k: round(v, 6) for k, v in self.contributions.items()},
        }


def seeds(inp: Inputs, cfg: RecoConfig) -> list[str]:
    """The products item-to-item starts from: the context product, then the most recent
    distinct products (newest first), at most ``cfg.seeds``.

    >>> seeds(Inputs(recent=[(1, "v", "a", ""), (2, "v", "b", ""), (3, "c", "a", "")],
    ...              context_product="x"), RecoConfig())
    ['x', 'a', 'b']
    """
    return [p for p, _ in seed_weights(inp, cfg)]


def seed_weights(inp: Inputs, cfg: RecoConfig) -> list[tuple[str, float]]:
    """The seeds with their weights: ``seed_decay ** rank`` times ``2 ** (-age /
    seed_half_life)`` (the age of the newest interaction with it; the context product's is 0).

    >>> [(p, round(w, 3)) for p, w in seed_weights(Inputs(
    ...     recent=[(0, "v", "a", ""), (86_400_000, "v", "b", "")], as_of=86_400_000),
    ...     RecoConfig())]
    [('b', 1.0), ('a', 0.3)]
    """
    out: dict[str, float] = {}
    if inp.context_product:
        out[inp.context_product] = 1.0
    if inp.personal:
        h = cfg.seed_half_life_hours * pr.HOUR
        for ts, _k, p, _c in reversed(inp.recent):
            if p not in out and len(out) < cfg.seeds:
                age = max(0, inp.as_of - ts)
                out[p] = cfg.seed_decay ** len(out) * 2.0 ** (-age / h)
    return list(out.items())[: cfg.seeds]


def excluded(inp: Inputs, cfg: RecoConfig) -> set[str]:
    """Products not to recommend: bought within the repurchase window, in the cart, out of
    stock, the page's own product (``context_product``) and the product interacted with last
    when that was within ``exclude_last_minutes`` (the page the visitor is on).

    >>> sorted(excluded(Inputs(recent=[(0, "v", "a", ""), (5, "v", "b", "")],
    ...                        cart={"c": 1}, bought={"d": 0, "e": -40 * 86_400_000},
    ...                        unavailable={"f"}, context_product="g"), RecoConfig()))
    ['b', 'c', 'd', 'f', 'g']
    >>> excluded(Inputs(recent=[(0, "v", "b", "")], as_of=3_600_000), RecoConfig())
    set()
    """
    out = set(inp.unavailable)
    if inp.context_product:
        out.add(inp.context_product)
    if inp.personal:
        if inp.recent and inp.as_of - inp.recent[-1][0] <= cfg.exclude_last_minutes * 60_000:
            out.add(inp.recent[-1][2])
        out.update(inp.cart)
        since = inp.as_of - cfg.repurchase_days * pr.DAY
        out.update(p for p, ts in inp.bought.items() if ts >= since)
    return out


#: A reason before it is written out: (its template, the product or category it names).
Why = tuple[str, str]


class _Candidates:
    """Scores by source, the candidates' categories, and each one's strongest contribution."""

    def __init__(self) -> None:
        self.scores: dict[str, dict[str, float]] = {s: {} for s in SOURCES}
        self.categories: dict[str, str] = {}
        self.why: dict[str, tuple[float, Why]] = {}

    def add_all(self, source: str, items: Sequence[tuple[str, float, str]], weight: float,
                why: Why) -> None:  # fmt: skip
        """Add a list's relative scores (``weight`` x each) with one reason for all."""
        if weight <= 0:
            return
        scores, cats, best = self.scores[source], self.categories, self.why
        for p, v, c in items:
            x = weight * v
            scores[p] = scores.get(p, 0.0) + x
            if c and p not in cats:
                cats[p] = c
            b = best.get(p)
            if b is None or x > b[0]:
                best[p] = (x, why)


def _relative(items: Sequence[tuple[str, float, str]], most: int) -> list[tuple[str, float, str]]:
    """The first ``most`` scores divided by the first (best) one's."""
    if not items or items[0][1] <= 0:
        return []
    top = items[0][1]
    return [(p, s / top, c) for p, s, c in items[:most] if s > 0]


def _item_to_item(inp: Inputs, cfg: RecoConfig, cand: _Candidates) -> None:
    """The item-to-item source (see the module docstring)."""
    weight = cfg.weights.get("item_to_item", 0.0)
    if weight <= 0:
        return
    scores, cats, best = cand.scores["item_to_item"], cand.categories, cand.why
    for seed, sw in seed_weights(inp, cfg):
        got = inp.neighbours.get(seed)
        if got is None:
            continue
        lists, since = got
        per: dict[str, float] = {}
        strongest: dict[str, tuple[float, str]] = {}
        for relation, items in lists.items():
            rw = cfg.relations.get(relation, 0.0)
            if rw <= 0:
                continue
            f = rw * 2.0 ** (-max(0, inp.as_of - since) / pr.HALF_LIFE_MS.get(relation, pr.WEEK))
            for p, nw, c in items:
                v = nw * f
                per[p] = per.get(p, 0.0) + v
                if c and p not in cats:
                    cats[p] = c
                if v > strongest.get(p, (0.0, ""))[0]:
                    strongest[p] = (v, relation)
        top = max(per.values(), default=0.0)
        if top <= 0:
            continue
        k = weight * sw / top
        for p, v in per.items():
            x = k * v
            scores[p] = scores.get(p, 0.0) + x
            b = best.get(p)
            if b is None or x > b[0]:
                best[p] = (x, (_REASONS.get(strongest[p][1], "related to {}"), seed))


def rank(inp: Inputs, cfg: RecoConfig, n: int) -> list[Item]:
    """The ``n`` best products for ``inp`` (see the module docstring). Each list source
    proposes at most ``max(3 n, 30)`` of its first products: enough for ``n`` after the
    filters and the diversity rule, and the cost of an answer stays small."""
    cand = _Candidates()
    w = cfg.weights
    most = max(3 * n, 30)
    _item_to_item(inp, cfg, cand)
    if inp.personal and inp.interests:  # category interest x category popularity
        top_cats = sorted(inp.interests.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.categories]
        total = sum(s for _, s in top_cats) or 1.0
        for cat, s in top_cats:
            items = _relative(inp.by_category.get(cat, ()), most)
            cand.add_all("category", items, w.get("category", 0) * s / total,
                         ("popular in {} this week", cat))  # fmt: skip
    if inp.category is not None:
        items = _relative(inp.by_category.get(inp.category, ()), most)
        cand.add_all("category", items, w.get("category", 0),
                     ("popular in {} this week", inp.category))  # fmt: skip
    cand.add_all("trending", _relative(inp.trending, most), w.get("trending", 0),
                 ("trending now", ""))  # fmt: skip
    cand.add_all("popular", _relative(inp.popular, most), w.get("popular", 0),
                 ("popular now", ""))  # fmt: skip
    return _select(cand, excluded(inp, cfg), inp.category, cfg, n)


def _select(
    cand: _Candidates, out: set[str], category: str | None, cfg: RecoConfig, n: int
) -> list[Item]:
    totals: dict[str, float] = {}
    for scores in cand.scores.values():
        for p, v in scores.items():
            totals[p] = totals.get(p, 0.0) + v
    cats = cand.categories
    scored = [
        (s, p)
        for p, s in totals.items()
        if s > 0 and p not in out and (category is None or cats.get(p, "") == category)
    ]
    scored.sort(key=lambda t: (-t[0], t[1]))
    items: list[Item] = []
    per_cat: dict[str, int] = {}
    held: list[tuple[float, str]] = []
    for s, p in scored:
        c = cats.get(p, "")
        if per_cat.get(c, 0) >= cfg.max_per_category and category is None:
            held.append((s, p))
            continue
        per_cat[c] = per_cat.get(c, 0) + 1
        items.append(_item(cand, p, s))
        if len(items) == n:
            return items
    for s, p in held:  # not enough other categories: the diversity rule gives way
        items.append(_item(cand, p, s))
        if len(items) == n:
            break
    return items


def _item(cand: _Candidates, p: str, s: float) -> Item:
    parts = {src: cand.scores[src][p] for src in SOURCES if p in cand.scores[src]}
    template, arg = cand.why[p][1]
    return Item(
        product_id=p,
        score=s,
        category=cand.categories.get(p, ""),
        sources=list(parts),
        reason=template.format(arg),
        contributions=parts,
    )


# ---------------------------------------------------------------------------------------------
# The settings file


def builtin_path() -> Path:
    """The shipped settings, ``decisions/recommendations.yaml``."""
    return Path(__file__).with_name("recommendations.yaml")


_SCALARS: Final = {
    "seeds": (int, 0, 50),
    "seed_decay": (float, 0.0, 1.0),
    "seed_half_life_hours": (float, 0.01, 24.0 * 3650),
    "categories": (int, 0, 20),
    "repurchase_days": (float, 0.0, 3650.0),
    "exclude_last_minutes": (float, 0.0, 1440.0),
    "max_per_category": (int, 1, 100),
}


def load_config(path: str | Path | None = None) -> RecoConfig:
    """Load and validate a recommendations file (``None``: the shipped one). Raises
    :class:`RecoConfigError` naming the file, line and field."""
    import hashlib

    from features.segments.config import YamlError, line_of, load_yaml

    p = builtin_path() if path is None else Path(path)
    name = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecoConfigError(name, None, None, f"cannot read: {e}") from None
    try:
        doc = load_yaml(text)
    except YamlError as e:
        raise RecoConfigError(name, e.line, None, e.message) from None
    if not isinstance(doc, dict):
        raise RecoConfigError(name, None, None, "expected a mapping at the top")
    defaults = RecoConfig()
    known = {"weights", "relations", *_SCALARS}
    for key in doc:
        if key not in known:
            raise RecoConfigError(name, line_of(doc, key), str(key),
                                  f"unknown field; known: {', '.join(sorted(known))}")  # fmt: skip
    out: dict[str, Any] = {}
    for key, names in (("weights", SOURCES), ("relations", RELATIONS)):
        if key not in doc:
            continue
        m = doc[key]
        if not isinstance(m, dict):
            raise RecoConfigError(name, line_of(doc, key), key, "expected a mapping")
        values = dict(getattr(defaults, key))
        for k, v in m.items():
            if k not in names:
                raise RecoConfigError(name, line_of(m, k), f"{key}.{k}",
                                      f"unknown; known: {', '.join(names)}")  # fmt: skip
            if not _finite(v) or v < 0:
                raise RecoConfigError(name, line_of(m, k), f"{key}.{k}",
                                      f"expected a number >= 0, got {v!r}")  # fmt: skip
            values[k] = float(v)
        out[key] = values
    for key, (kind, low, high) in _SCALARS.items():
        if key not in doc:
            continue
        v = doc[key]
        ok = _finite(v) and (kind is float or isinstance(v, int)) and low <= v <= high
        if not ok:
            what = "an integer" if kind is int else "a number"
            raise RecoConfigError(name, line_of(doc, key), key,
                                  f"expected {what} in [{low}, {high}], got {v!r}")  # fmt: skip
        out[key] = kind(v)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return RecoConfig(**out, digest=digest)


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
