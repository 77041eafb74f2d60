"""Offline evaluation of product recommendations against the simulator's latent truth.

The simulator (:mod:`nextbest.simulator`) writes a history (events before the holdout) and a
truth file whose rows carry, per registered customer, ``products_in_holdout`` (what they bought
in the holdout), ``oracle_products`` (the 20 products they most likely pick at the holdout start,
from their latent taste and the products' popularity and fashion) and ``holdout_sessions`` (the
products viewed, in order, in up to 5 of their holdout sessions). This module scores a
recommender on that truth, as of the end of the history, next to three references:

``global_popularity``
    The most popular products of the last :data:`WINDOW_DAYS` days of the history, by a weighted
    count of events: purchase 5 (per item), ``add_to_cart`` 3, ``product_view`` 1
    (:data:`WEIGHTS`). The same list for everyone.
``category_popularity``
    For a customer, the categories of their own history (same weights, whole history), each
    category's most popular products (as above), interleaved by the customer's category share
    (D'Hondt: the next slot goes to the category with the largest ``share / (slots taken + 1)``);
    global popularity for a customer without history, and to fill up.
``oracle``
    The truth's ``oracle_products``: what the latent taste says, knowing nothing of the history.

Two tasks, each with ``k`` recommendations (10 by default):

1. **Next purchases**: every customer of the truth who bought in the holdout gets ``k``
   products; a *hit* is a list holding at least one product bought in the holdout. Reported:
   hit rate@k, NDCG@k (binary relevance: bought in the holdout) and catalogue coverage
   (distinct products recommended over all customers / distinct products in the history).
2. **Next product in a session**: for every held-out session and every prefix of length >= 1
   of its product views, the target is the product viewed next (a prefix whose next product
   equals its last one is skipped); hit rate@k of the recommender given the prefix, against
   global popularity. (No oracle here: the truth does not hold the latent session process.)

The recommender is a callable ``recommend(customer_id, session_prefix, k)``, ``session_prefix``
``None`` for task 1, else the product ids viewed so far in the session (the last one being the
last click); it returns product ids, best first (only the first ``k`` distinct ones count).

The aims (issue 13): engine hit rate@10 >= 1.5x global popularity and >= 0.5x the oracle;
next-product hit rate >= 2x popularity. :attr:`RecoReport.aims` says whether each is met.

Examples
--------
>>> hit_rate_at_k([["a", "b"], ["c"]], [{"b"}, {"d"}], k=2)
0.5
>>> round(ndcg_at_k(["x", "a"], {"a"}, k=2), 4)
0.6309
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from schemas.events import Event, decode_event

__all__ = [
    "AIMS",
    "WEIGHTS",
    "WINDOW_DAYS",
    "Aim",
    "History",
    "MethodScores",
    "RecoReport",
    "Recommender",
    "TruthRow",
    "coverage",
    "evaluate",
    "format_report",
    "hit_rate_at_k",
    "ndcg_at_k",
    "read_history",
    "read_truth",
    "session_prefixes",
]

#: A recommender: ``(customer_id, session prefix or None, k) -> product ids, best first``.
Recommender = Callable[[str, list[str] | None, int], list[str]]

#: Popularity weight of an event type (a purchase counts per item).
WEIGHTS: Final[dict[str, float]] = {"purchase": 5.0, "add_to_cart": 3.0, "product_view": 1.0}
#: Days before the history's end over which popularity is counted.
WINDOW_DAYS: Final = 30
DAY_MS: Final = 86_400_000
#: The issue's aims: (name, numerator method, denominator method, task, minimum ratio).
AIMS: Final = (
    ("hit rate vs global popularity", "engine", "global_popularity", "purchases", 1.5),
    ("hit rate vs oracle", "engine", "oracle", "purchases", 0.5),
    ("next product vs popularity", "engine", "popularity", "next_product", 2.0),
)


# -- metrics --------------------------------------------------------------------------------------


def _top(recs: Iterable[str], k: int) -> list[str]:
    """The first ``k`` distinct items of ``recs``.

    >>> _top(["a", "a", "b", "c"], 2)
    ['a', 'b']
    """
    out: list[str] = []
    seen: set[str] = set()
    for r in recs:
        if r not in seen:
            seen.add(r)
            out.append(r)
            if len(out) == k:
                break
    return out


def hit_rate_at_k(
    recommended: Sequence[Sequence[str]], relevant: Sequence[Collection[str]], k: int
) -> float:
    """Share of lists whose first ``k`` distinct items hold at least one relevant item.

    Parameters
    ----------
    recommended
        One ranked list per case.
    relevant
        The relevant items of each case (same order as ``recommended``).
    k
        Cut-off.

    Returns
    -------
    float
        The hit rate in ``[0, 1]``; 0 without cases.

    Examples
    --------
    >>> hit_rate_at_k([["a", "b", "c"], ["d"], ["e", "f"]], [{"c"}, {"x"}, {"f", "g"}], k=2)
    0.3333333333333333
    >>> hit_rate_at_k([], [], k=10)
    0.0
    """
    if len(recommended) != len(relevant):
        raise ValueError("recommended and relevant differ in length")
    if not recommended:
        return 0.0
    hits = sum(
        any(r in rel for r in _top(recs, k))
        for recs, rel in zip(recommended, relevant, strict=True)
    )
    return hits / len(recommended)


def ndcg_at_k(recommended: Sequence[str], relevant: Collection[str], k: int) -> float:
    """NDCG@k of one ranked list with binary relevance.

    ``DCG = sum over the first k distinct items i (0-based) that are relevant of
    1 / log2(i + 2)``, divided by the DCG of an ideal list (all relevant items first, at most
    ``k``). 0 when nothing is relevant.

    Examples
    --------
    >>> ndcg_at_k(["a", "b"], {"a"}, k=10)
    1.0
    >>> round(ndcg_at_k(["x", "y", "a", "b"], {"a", "b"}, k=10), 4)
    0.5706
    >>> ndcg_at_k(["x", "y", "a"], {"a"}, k=2)
    0.0
    """
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i, r in enumerate(_top(recommended, k)) if r in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal


def coverage(recommended: Iterable[Sequence[str]], catalogue: Collection[str], k: int) -> float:
    """Distinct items among the first ``k`` of every list, over the size of ``catalogue``.

    Recommended items outside ``catalogue`` count too (a recommender may know products that the
    history does not show); 0 for an empty catalogue.

    >>> coverage([["a", "b"], ["b", "c"]], {"a", "b", "c", "d"}, k=1)
    0.5
    """
    if not catalogue:
        return 0.0
    distinct: set[str] = set()
    for recs in recommended:
        distinct.update(_top(recs, k))
    return len(distinct) / len(catalogue)


def session_prefixes(sessions: Iterable[Sequence[str]]) -> Iterator[tuple[list[str], str]]:
    """Every ``(prefix, next product)`` of sessions' product views: prefixes of length >= 1, but
    not those whose next product equals their last one (a reload is no prediction).

    >>> list(session_prefixes([["a", "b", "b", "c"]]))
    [(['a'], 'b'), (['a', 'b', 'b'], 'c')]
    """
    for views in sessions:
        for n in range(1, len(views)):
            if views[n] != views[n - 1]:
                yield list(views[:n]), views[n]


# -- the history and its baselines ----------------------------------------------------------------


def _ranked(scores: Mapping[str, float]) -> list[str]:
    """Keys by descending score, ties by key (deterministic)."""
    return sorted(scores, key=lambda p: (-scores[p], p))


@dataclass
class History:
    """What the baselines know of a history (see :func:`read_history`).

    Attributes
    ----------
    end_ms
        Newest event time (epoch ms); the evaluation is as of it.
    products
        Distinct product ids in the history (the catalogue for coverage).
    product_category
        Last category seen per product.
    popularity
        Weighted event count per product over the last :data:`WINDOW_DAYS` days.
    customer_categories
        Per customer, weighted event count per category over the whole history.
    """

    end_ms: int = 0
    products: set[str] = field(default_factory=set)
    product_category: dict[str, str] = field(default_factory=dict)
    popularity: dict[str, float] = field(default_factory=dict)
    customer_categories: dict[str, dict[str, float]] = field(default_factory=dict)
    _global: list[str] | None = field(default=None, repr=False)
    _by_category: dict[str, list[str]] | None = field(default=None, repr=False)

    def global_popularity(self, k: int) -> list[str]:
        """The ``k`` most popular products (the ``global_popularity`` baseline).

        >>> h = History(popularity={"a": 1.0, "b": 3.0, "c": 3.0})
        >>> h.global_popularity(2)
        ['b', 'c']
        """
        if self._global is None:
            self._global = _ranked(self.popularity)
        return self._global[:k]

    def category_top(self, category: str) -> list[str]:
        """The popular products of ``category``, most popular first."""
        if self._by_category is None:
            groups: defaultdict[str, dict[str, float]] = defaultdict(dict)
            for pid, score in self.popularity.items():
                cat = self.product_category.get(pid)
                if cat is not None:
                    groups[cat][pid] = score
            self._by_category = {cat: _ranked(s) for cat, s in groups.items()}
        return self._by_category.get(category, [])

    def category_popularity(self, customer_id: str, k: int) -> list[str]:
        """The ``category_popularity`` baseline for a customer (see the module).

        >>> h = History(popularity={"a": 3.0, "b": 2.0, "x": 5.0, "y": 1.0},
        ...             product_category={"a": "shoes", "b": "shoes", "x": "books", "y": "books"},
        ...             customer_categories={"c-1": {"shoes": 3.0, "books": 1.0}})
        >>> h.category_popularity("c-1", 4)
        ['a', 'b', 'x', 'y']
        >>> h.category_popularity("c-2", 2)
        ['x', 'a']
        """
        shares = self.customer_categories.get(customer_id, {})
        out: list[str] = []
        chosen: set[str] = set()
        cats = sorted(shares, key=lambda c: (-shares[c], c))
        taken = dict.fromkeys(cats, 0)
        cursor = dict.fromkeys(cats, 0)
        heap = [(-shares[c], i, c) for i, c in enumerate(cats)]
        heapq.heapify(heap)
        while heap and len(out) < k:
            _, i, cat = heapq.heappop(heap)
            top = self.category_top(cat)
            while cursor[cat] < len(top) and top[cursor[cat]] in chosen:
                cursor[cat] += 1
            if cursor[cat] >= len(top):
                continue  # the category is exhausted: it leaves the rotation
            pid = top[cursor[cat]]
            out.append(pid)
            chosen.add(pid)
            taken[cat] += 1
            heapq.heappush(heap, (-shares[cat] / (taken[cat] + 1), i, cat))
        for pid in self.global_popularity(k + len(out)):
            if len(out) >= k:
                break
            if pid not in chosen:
                out.append(pid)
                chosen.add(pid)
        return out


def read_history(path: Path, window_days: int = WINDOW_DAYS) -> History:
    """Read a JSONL history (the simulator's output) into a :class:`History`.

    Lines that do not decode (``schemas.events.decode_event``) are skipped. Popularity counts the
    events of the last ``window_days`` days before the newest event; a customer's categories
    count their own events (by ``customer_id``) over the whole history.
    """
    scored: list[tuple[int, str, float]] = []
    history = History()
    cats = history.product_category
    by_customer: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
    end = 0
    with path.open("rb") as fh:
        for line in fh:
            ev = decode_event(line)
            if not isinstance(ev, Event):
                continue
            end = max(end, ev.ts)
            weight = WEIGHTS.get(ev.type)
            if weight is None:
                continue
            for pid, cat in _products(ev):
                history.products.add(pid)
                if cat is not None:
                    cats[pid] = cat
                scored.append((ev.ts, pid, weight))
                if ev.customer_id is not None and cat is not None:
                    by_customer[ev.customer_id][cat] += weight
    history.end_ms = end
    since = end - window_days * DAY_MS
    popularity: defaultdict[str, float] = defaultdict(float)
    for ts, pid, weight in scored:
        if ts > since:
            popularity[pid] += weight
    history.popularity = dict(popularity)
    history.customer_categories = {c: dict(v) for c, v in by_customer.items()}
    return history


def _products(ev: Event) -> list[tuple[str, str | None]]:
    """The products an event is about: its ``product_id``, or a purchase's items."""
    if ev.type == "purchase":
        return [(i.product_id, i.category) for i in ev.items or ()]
    if ev.product_id is not None:
        return [(ev.product_id, ev.category)]
    return []


# -- the truth ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TruthRow:
    """The recommendation fields of one truth row (other fields are ignored)."""

    customer_id: str
    products_in_holdout: list[str]
    oracle_products: list[str]
    holdout_sessions: list[list[str]]


def read_truth(path: Path) -> list[TruthRow]:
    """The truth rows with their recommendation fields (missing ones read as empty).

    Raises
    ------
    ValueError
        If a line is not a JSON object with a ``customer_id``.
    """
    rows: list[TruthRow] = []
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = orjson.loads(line)
                rows.append(
                    TruthRow(
                        customer_id=str(d["customer_id"]),
                        products_in_holdout=[str(p) for p in d.get("products_in_holdout") or ()],
                        oracle_products=[str(p) for p in d.get("oracle_products") or ()],
                        holdout_sessions=[
                            [str(p) for p in s] for s in d.get("holdout_sessions") or ()
                        ],
                    )
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a truth row ({exc})") from None
    return rows


# -- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodScores:
    """Task 1 scores of one method: hit rate@k, mean NDCG@k, catalogue coverage."""

    hit_rate: float
    ndcg: float
    coverage: float


@dataclass(frozen=True)
class Aim:
    """One of the issue's aims: ``ratio`` = numerator / denominator, met if >= ``target``."""

    name: str
    ratio: float | None
    target: float

    @property
    def met(self) -> bool:
        """Whether the ratio reaches the target (never without a ratio)."""
        return self.ratio is not None and self.ratio >= self.target


@dataclass(frozen=True)
class RecoReport:
    """The evaluation's result (see :func:`evaluate`).

    Attributes
    ----------
    k
        Recommendations per request.
    customers
        Customers evaluated (bought in the holdout).
    sessions, prefixes
        Held-out sessions and their prefixes evaluated for the next product.
    products_in_history
        Distinct products in the history (coverage's denominator).
    scores
        Task 1 per method: ``engine``, ``global_popularity``, ``category_popularity``,
        ``oracle``.
    next_product
        Task 2 hit rate@k per method: ``engine``, ``popularity``.
    """

    k: int
    customers: int
    sessions: int
    prefixes: int
    products_in_history: int
    scores: dict[str, MethodScores]
    next_product: dict[str, float]

    @property
    def aims(self) -> list[Aim]:
        """The issue's aims with their ratios."""
        out: list[Aim] = []
        for name, num, den, task, target in AIMS:
            table = (
                {m: s.hit_rate for m, s in self.scores.items()}
                if task == "purchases"
                else self.next_product
            )
            a, b = table.get(num), table.get(den)
            ratio = a / b if a is not None and b else None
            out.append(Aim(name, ratio, target))
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the report, aims included.

        >>> r = RecoReport(10, 2, 1, 3, 5, {"engine": MethodScores(0.5, 0.25, 0.4)},
        ...                {"engine": 0.6, "popularity": 0.25})
        >>> r.to_json()["aims"][2]
        {'name': 'next product vs popularity', 'ratio': 2.4, 'target': 2.0, 'met': True}
        """
        return {
            "k": self.k,
            "customers": self.customers,
            "sessions": self.sessions,
            "prefixes": self.prefixes,
            "products_in_history": self.products_in_history,
            "scores": {
                m: {"hit_rate": s.hit_rate, "ndcg": s.ndcg, "coverage": s.coverage}
                for m, s in self.scores.items()
            },
            "next_product": dict(self.next_product),
            "aims": [
                {"name": a.name, "ratio": a.ratio, "target": a.target, "met": a.met}
                for a in self.aims
            ],
        }


def format_report(report: RecoReport) -> str:
    """A readable table of the report.

    >>> r = RecoReport(10, 2, 1, 3, 5, {"engine": MethodScores(0.5, 0.25, 0.4)},
    ...                {"engine": 0.6, "popularity": 0.2})
    >>> print(format_report(r))  # doctest: +NORMALIZE_WHITESPACE
    next purchases: 2 customers who bought in the holdout, 10 recommendations each
    method                hit rate@10   NDCG@10   coverage
    engine                      0.500     0.250      0.400
    next product in a session: 1 held-out sessions, 3 prefixes
    method                hit rate@10
    engine                      0.600
    popularity                  0.200
    aims
    hit rate vs global popularity     n/a  (aim >= 1.5)  not measured
    hit rate vs oracle                n/a  (aim >= 0.5)  not measured
    next product vs popularity      3.00x  (aim >= 2.0)  met
    """
    k = report.k
    lines = [
        f"next purchases: {report.customers} customers who bought in the holdout, "
        f"{k} recommendations each",
        f"{'method':<20}{f'hit rate@{k}':>13}{f'NDCG@{k}':>10}{'coverage':>11}",
    ]
    for m, s in report.scores.items():
        lines.append(f"{m:<20}{s.hit_rate:>13.3f}{s.ndcg:>10.3f}{s.coverage:>11.3f}")
    lines.append(
        f"next product in a session: {report.sessions} held-out sessions, "
        f"{report.prefixes} prefixes"
    )
    lines.append(f"{'method':<20}{f'hit rate@{k}':>13}")
    for m, v in report.next_product.items():
        lines.append(f"{m:<20}{v:>13.3f}")
    lines.append("aims")
    for a in report.aims:
        ratio = "n/a" if a.ratio is None else f"{a.ratio:.2f}x"
        verdict = "not measured" if a.ratio is None else ("met" if a.met else "not met")
        lines.append(f"{a.name:<30}{ratio:>8}  (aim >= {a.target})  {verdict}")
    return "\n".join(lines)


# -- the protocol ---------------------------------------------------------------------------------


def _scores(
    lists: Sequence[Sequence[str]],
    relevant: Sequence[Collection[str]],
    catalogue: Collection[str],
    k: int,
) -> MethodScores:
    n = len(lists)
    ndcg = (
        sum(ndcg_at_k(r, rel, k) for r, rel in zip(lists, relevant, strict=True)) / n if n else 0.0
    )
    return MethodScores(
        hit_rate=hit_rate_at_k(lists, relevant, k),
        ndcg=ndcg,
        coverage=coverage(lists, catalogue, k),
    )


def evaluate(history: Path, truth: Path, recommend: Recommender, k: int = 10) -> RecoReport:
    """Score ``recommend`` (the engine) and the baselines on a simulated history and its truth.

    Parameters
    ----------
    history
        The history (JSONL events, the simulator's output; lines that do not decode skipped).
    truth
        The simulator's truth file (rows with ``products_in_holdout``, ``oracle_products``,
        ``holdout_sessions``).
    recommend
        The engine: ``recommend(customer_id, None, k)`` as of the history's end for task 1;
        ``recommend(customer_id, prefix, k)`` for task 2, as if ``prefix`` were the customer's
        most recent product views. Called in the truth file's order (deterministic).
    k
        Recommendations per request.

    Returns
    -------
    RecoReport
        The scores, counts and aims.
    """
    hist = read_history(history)
    rows = read_truth(truth)
    buyers = [r for r in rows if r.products_in_holdout]
    relevant = [set(r.products_in_holdout) for r in buyers]
    lists: dict[str, list[list[str]]] = {
        "engine": [list(recommend(r.customer_id, None, k)) for r in buyers],
        "global_popularity": [hist.global_popularity(k) for _ in buyers],
        "category_popularity": [hist.category_popularity(r.customer_id, k) for r in buyers],
        "oracle": [r.oracle_products[:k] for r in buyers],
    }
    scores = {m: _scores(v, relevant, hist.products, k) for m, v in lists.items()}
    popular = hist.global_popularity(k)
    n_sessions = 0
    engine_hits = popular_hits = n_prefixes = 0
    for r in rows:
        n_sessions += len(r.holdout_sessions)
        for prefix, target in session_prefixes(r.holdout_sessions):
            n_prefixes += 1
            engine_hits += target in _top(recommend(r.customer_id, prefix, k), k)
            popular_hits += target in popular
    next_product = {
        "engine": engine_hits / n_prefixes if n_prefixes else 0.0,
        "popularity": popular_hits / n_prefixes if n_prefixes else 0.0,
    }
    return RecoReport(
        k=k,
        customers=len(buyers),
        sessions=n_sessions,
        prefixes=n_prefixes,
        products_in_history=len(hist.products),
        scores=scores,
        next_product=next_product,
    )
