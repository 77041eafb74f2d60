"""Segment rules: structured conditions (as Apache Unomi's), parsed from data, never ``eval``.

A rule is one of

- ``{all: [rule, ...]}``, ``{any: [rule, ...]}`` (non-empty lists), ``{not: rule}``;
- ``{feature: NAME, op: OP, value: VALUE}``: a comparison of one catalogue feature
  (:mod:`features.segments.catalog`) with a constant;
- ``{segment: NAME}``: membership of another segment (as of the same evaluation).

Operators by feature type:

=============  =====================================================================
type           operators (``value``)
=============  =====================================================================
number         ``eq ne lt le gt ge`` (a number), ``in not_in`` (a list of numbers)
timestamp      the same, with RFC 3339 strings or epoch milliseconds
boolean        ``eq ne`` (``true``/``false``)
string         ``eq ne`` (a string), ``in not_in`` (a list of strings)
list           ``contains`` (a string: one of the list's elements)
trait          ``eq ne lt le gt ge in not_in`` (a string, number or boolean: ``traits.<name>``;
               a value of another type than the constant compares false, even for ``ne``)
any            ``exists`` (``value`` optional, default ``true``: the feature is not null)
=============  =====================================================================

A comparison with a null value is false (``ne`` and ``not_in`` too); ``exists`` tests non-null.

Examples
--------
>>> r = parse_rule({"all": [{"feature": "purchases_total", "op": "ge", "value": 1},
...                         {"not": {"segment": "vip"}}]}, "entry")
>>> r.text()
'(purchases_total >= 1 and not in_segment(vip))'
>>> holds(r, {"purchases_total": 2}.__getitem__, lambda s: False)
True
>>> try:
...     parse_rule({"feature": "cart_abandoned", "op": "gt", "value": 3}, "entry")
... except RuleError as e:
...     print(e.field, "|", e.message)
entry.op | op 'gt' does not apply to cart_abandoned (boolean): use one of eq, ne, exists
>>> sorted(features_of(r)), sorted(segments_of(r))
(['purchases_total'], ['vip'])
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from features.segments.catalog import (
    DEFAULT_TARGETS,
    TRAIT_PREFIX,
    FeatureType,
    Kind,
    catalog,
    feature_type,
)
from schemas.events import format_ts, parse_ts

Op = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "contains", "exists"]
OPS: Final[tuple[str, ...]] = get_args(Op)
_ORDER: Final = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in")
#: The operators each feature type accepts (``exists`` applies to every type).
OPS_BY_KIND: Final[dict[Kind, tuple[str, ...]]] = {
    "number": (*_ORDER, "exists"),
    "timestamp": (*_ORDER, "exists"),
    "boolean": ("eq", "ne", "exists"),
    "string": ("eq", "ne", "in", "not_in", "exists"),
    "list": ("contains", "exists"),
    "trait": (*_ORDER, "exists"),
}
_SYMBOL: Final = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
#: The keys of a comparison.
COMPARISON_KEYS: Final = ("feature", "op", "value")


class RuleError(ValueError):
    """A rule that does not parse: ``field`` is its path (``entry.all[1].op``); ``where`` and
    ``key`` locate it in the loaded data (the loader maps them to a line)."""

    def __init__(self, field: str, message: str, where: object = None, key: object = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.where = where
        self.key = key


@dataclass(frozen=True, slots=True)
class Cmp:
    """``feature op value``; timestamps are held as epoch ms, lists as tuples."""

    feature: str
    op: Op
    value: Any
    kind: Kind

    def text(self) -> str:
        """Readable form, e.g. ``score.churn >= 0.7``."""
        f, op, v = self.feature, self.op, self.value
        if op == "exists":
            return f"exists({f})" if v else f"not exists({f})"
        shown = _show(v, self.kind)
        return f"{f} {_SYMBOL.get(op, op.replace('_', ' '))} {shown}"


@dataclass(frozen=True, slots=True)
class InSegment:
    """Membership of another segment."""

    segment: str

    def text(self) -> str:
        """Readable form."""
        return f"in_segment({self.segment})"


@dataclass(frozen=True, slots=True)
class AllOf:
    """Every rule holds."""

    rules: tuple[Rule, ...]

    def text(self) -> str:
        """Readable form."""
        return "(" + " and ".join(r.text() for r in self.rules) + ")"


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one rule holds."""

    rules: tuple[Rule, ...]

    def text(self) -> str:
        """Readable form."""
        return "(" + " or ".join(r.text() for r in self.rules) + ")"


@dataclass(frozen=True, slots=True)
class Not:
    """The rule does not hold."""

    rule: Rule

    def text(self) -> str:
        """Readable form."""
        return "not " + self.rule.text()


Rule = AllOf | AnyOf | Not | Cmp | InSegment


def _show(v: Any, kind: Kind) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_show(x, kind) for x in v) + "]"
    if kind == "timestamp":
        return format_ts(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


# --------------------------------------------------------------------------------------------
# Evaluation


def compare(c: Cmp, v: Any) -> bool:
    """Whether a feature value satisfies a comparison (null: false; ``exists``: non-null).

    >>> c = Cmp("days_since_last_seen", "ge", 30, "number")
    >>> compare(c, 30.0), compare(c, 29.999), compare(c, None)
    (True, False, False)
    >>> compare(Cmp("days_since_last_seen", "exists", False, "number"), None)
    True
    """
    op, x = c.op, c.value
    if op == "exists":
        return (v is not None) == bool(x)
    if v is None:
        return False
    if c.kind == "trait" and not _comparable(v, x):
        return False
    if c.kind == "timestamp" and isinstance(v, str):
        v = parse_ts(v)
        if v is None:
            return False
    if op == "eq":
        return bool(v == x)
    if op == "ne":
        return bool(v != x)
    if op == "lt":
        return bool(v < x)
    if op == "le":
        return bool(v <= x)
    if op == "gt":
        return bool(v > x)
    if op == "ge":
        return bool(v >= x)
    if op == "in":
        return v in x
    if op == "not_in":
        return v not in x
    return bool(x in v)  # contains


def _kind(v: Any) -> str:
    return "bool" if isinstance(v, bool) else "number" if isinstance(v, int | float) else "str"


def _comparable(v: Any, x: Any) -> bool:
    """Whether a trait value and a constant (or every constant of a list) have one type.

    >>> _comparable("gold", ("gold", "silver")), _comparable(1, True), _comparable(2, 1.5)
    (True, False, True)
    """
    if isinstance(x, tuple):
        return all(_kind(v) == _kind(e) for e in x)
    return _kind(v) == _kind(x)


def holds(rule: Rule, value: Callable[[str], Any], member: Callable[[str], bool]) -> bool:
    """The truth of a rule: ``value(feature)`` reads a feature, ``member(segment)`` a membership."""
    if isinstance(rule, Cmp):
        return compare(rule, value(rule.feature))
    if isinstance(rule, AllOf):
        return all(holds(r, value, member) for r in rule.rules)
    if isinstance(rule, AnyOf):
        return any(holds(r, value, member) for r in rule.rules)
    if isinstance(rule, Not):
        return not holds(rule.rule, value, member)
    return member(rule.segment)


def walk(rule: Rule) -> Iterator[Rule]:
    """The rule and all its sub-rules, depth first."""
    yield rule
    if isinstance(rule, AllOf | AnyOf):
        for r in rule.rules:
            yield from walk(r)
    elif isinstance(rule, Not):
        yield from walk(rule.rule)


def features_of(rule: Rule) -> set[str]:
    """The features a rule reads."""
    return {r.feature for r in walk(rule) if isinstance(r, Cmp)}


def segments_of(rule: Rule) -> set[str]:
    """The segments whose membership a rule reads."""
    return {r.segment for r in walk(rule) if isinstance(r, InSegment)}


def comparisons(rule: Rule) -> list[Cmp]:
    """Every comparison of a rule, in order."""
    return [r for r in walk(rule) if isinstance(r, Cmp)]


# --------------------------------------------------------------------------------------------
# Parsing


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _scalar(t: FeatureType, name: str, x: object, field: str, where: object) -> Any:
    """A constant of the feature's type, normalised (timestamps to epoch ms)."""
    kind = t.kind
    if kind in ("number",) and _is_number(x):
        return x
    if kind == "timestamp" and isinstance(x, int | str) and not isinstance(x, bool):
        ms = parse_ts(x)
        if ms is not None:
            return ms
        raise RuleError(field, f"{x!r} is not a timestamp (RFC 3339 with a zone)", where, "value")
    if kind == "boolean" and isinstance(x, bool):
        return x
    if kind == "trait" and (isinstance(x, str | bool) or _is_number(x)):
        return x
    if kind in ("string", "list") and isinstance(x, str):
        if t.choices is not None and x not in t.choices:
            raise RuleError(
                field,
                f"{name} is never {x!r}: one of {', '.join(t.choices)}" + _near(x, t.choices),
                where,
                "value",
            )
        return x
    want = {"list": "string", "timestamp": "timestamp"}.get(kind, kind)
    raise RuleError(
        field,
        f"type mismatch: {name} is a {kind}, {x!r} ({type(x).__name__}) is not a {want}",
        where,
        "value",
    )


def _near(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _comparison(data: Mapping[Any, Any], field: str, targets: tuple[str, ...]) -> Cmp:
    extra = [k for k in data if k not in COMPARISON_KEYS]
    if extra:
        raise RuleError(
            f"{field}.{extra[0]}",
            f"unknown key {extra[0]!r} in a comparison (keys: feature, op, value)",
            data,
            extra[0],
        )
    name = data["feature"]
    t = feature_type(name, targets) if isinstance(name, str) else None
    if t is None:
        hint = _near(str(name), sorted(catalog(targets)))
        if isinstance(name, str) and name.startswith("score."):
            hint = f" (score targets: {', '.join(targets)})"
        if isinstance(name, str) and name.startswith(TRAIT_PREFIX):
            hint = " (a trait name matches [a-z][a-z0-9_]{0,39})"
        raise RuleError(f"{field}.feature", f"unknown feature {name!r}{hint}", data, "feature")
    op = data.get("op")
    if op not in OPS:
        raise RuleError(f"{field}.op", f"unknown op {op!r}: one of {', '.join(OPS)}", data, "op")
    allowed = OPS_BY_KIND[t.kind]
    if op not in allowed:
        raise RuleError(
            f"{field}.op",
            f"op {op!r} does not apply to {name} ({t.kind}): use one of {', '.join(allowed)}",
            data,
            "op",
        )
    vfield = f"{field}.value"
    if op == "exists":
        x = data.get("value", True)
        if not isinstance(x, bool):
            raise RuleError(vfield, "exists takes true or false", data, "value")
        return Cmp(name, op, x, t.kind)
    if "value" not in data:
        raise RuleError(vfield, f"op {op!r} needs a value", data, "op")
    x = data["value"]
    if op in ("in", "not_in"):
        if not isinstance(x, list) or not x:
            raise RuleError(vfield, f"op {op!r} takes a non-empty list", data, "value")
        return Cmp(name, op, tuple(_scalar(t, name, e, vfield, data) for e in x), t.kind)
    return Cmp(name, op, _scalar(t, name, x, vfield, data), t.kind)


def parse_rule(data: object, field: str, targets: tuple[str, ...] = DEFAULT_TARGETS) -> Rule:
    """A rule from loaded YAML/JSON data; :class:`RuleError` names the field that is wrong."""
    if not isinstance(data, Mapping) or not data:
        raise RuleError(
            field, "a rule is a mapping with one of: all, any, not, feature, segment", data
        )
    if "feature" in data:
        return _comparison(data, field, targets)
    keys = list(data)
    head = keys[0]
    if len(keys) > 1 or head not in ("all", "any", "not", "segment"):
        bad = next((k for k in keys if k not in ("all", "any", "not", "segment")), keys[1])
        raise RuleError(
            f"{field}.{bad}",
            f"unexpected key {bad!r}: a rule has exactly one of all, any, not, feature "
            "(with op, value), segment",
            data,
            bad,
        )
    body = data[head]
    sub = f"{field}.{head}"
    if head == "segment":
        if not isinstance(body, str) or not body:
            raise RuleError(sub, "segment takes a segment name", data, head)
        return InSegment(body)
    if head == "not":
        return Not(parse_rule(body, sub, targets))
    if not isinstance(body, list) or not body:
        raise RuleError(sub, f"{head} takes a non-empty list of rules", data, head)
    rules = tuple(parse_rule(r, f"{sub}[{i}]", targets) for i, r in enumerate(body))
    return AllOf(rules) if head == "all" else AnyOf(rules)
