"""The action catalogue: what the engine may propose, declared as data (``NEXTBEST_ACTIONS``).

The file (JSON Schema: ``schemas/json/actions.schema.json``; the shipped example for the
simulated shop: ``decisions/actions.yaml``)::

    version: 1
    exploration: {epsilon: 0.1}          # epsilon-greedy on the served (first) action
    attribution: {impression: 1h, click: 1d, conversion: 7d}   # outcome windows, event time
    min_outcomes: 200                    # an action model replaces the prior after this many
    channels:
      web: {max_per_day: 3, fallback: newsletter_signup}  # offers per customer per UTC day
      email: {max_per_day: 1}                              # no fallback: may answer nothing
    actions:
      - id: winback_discount             # [a-z][a-z0-9_]*, unique
        description: 10 % off the next order for a customer at risk
        channels: [web, email]
        eligibility: {all: [{feature: purchases_total, op: ge, value: 1},
                            {feature: score.churn, op: ge, value: 0.5}]}   # segment rule format
        value: {feature: avg_order_value, times: 0.9, default: 40}  # or a number
        weight: 1.0                      # the marketer's lever
        prior: 0.04                      # P(conversion) until the action model is ready
        valid_from: 2026-01-01T00:00:00Z # optional, and valid_until
        contact: {max_per_day: 1, min_interval: 7d, after_conversion: 30d}  # per channel
        payload: {discount_pct: 10}      # free-form, returned to the caller

Every error stops the load with an :class:`ActionConfigError` naming the file, line, action
and field. Eligibility rules may read every feature segments read (the profile document, scores,
RFM) and ``{segment: NAME}`` for the segments loaded (pass their names).

Examples
--------
>>> c = parse_catalog('''
... channels:
...   web: {max_per_day: 3, fallback: signup}
... actions:
...   - id: signup
...     description: join the newsletter
...     channels: [web]
...     value: 2
...     prior: 0.02
...   - id: winback
...     description: a discount for lapsing buyers
...     channels: [web, email]
...     eligibility: {segment: at_risk}
...     value: {feature: avg_order_value, times: 0.5, default: 20}
...     prior: 0.05
... ''', "demo.yaml", segments=("at_risk",))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
decisions.catalog.ActionConfigError: demo.yaml:12: action 'winback', field channels: ...
>>> try:
...     parse_catalog('''
... channels: {web: {}}
... actions:
...   - id: winback
...     description: x
...     channels: [web]
...     value: {feature: avg_order_vlaue}
...     prior: 0.05
... ''', "bad.yaml")
... except ActionConfigError as e:
...     print(e.line, e.action, e.field, "|", e.message)
7 winback value.feature | unknown number feature 'avg_order_vlaue' (did you mean 'avg_order_value'?)
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeGuard

from features.segments.catalog import DEFAULT_TARGETS, MissingFeatureError, catalog, read
from features.segments.config import YamlError, line_of, load_yaml, parse_duration
from features.segments.rules import Rule, RuleError, parse_rule, segments_of
from schemas.events import OUTCOME_TYPES, parse_ts

FILE_KEYS: Final = ("version", "exploration", "attribution", "min_outcomes", "channels", "actions")
ACTION_KEYS: Final = (
    "id",
    "description",
    "channels",
    "eligibility",
    "value",
    "weight",
    "prior",
    "valid_from",
    "valid_until",
    "contact",
    "payload",
)
CHANNEL_KEYS: Final = ("max_per_day", "fallback")
CONTACT_KEYS: Final = ("max_per_day", "min_interval", "after_conversion")
VALUE_KEYS: Final = ("feature", "times", "plus", "default", "min", "max")
ID_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
#: Default outcome attribution windows (event time after the decision).
DEFAULT_ATTRIBUTION: Final = {"impression": "1h", "click": "1d", "conversion": "7d"}
DEFAULT_EPSILON: Final = 0.1
DEFAULT_MIN_OUTCOMES: Final = 200
#: The name of the shipped example catalogue.
BUILTIN: Final = "actions.yaml"


class ActionConfigError(ValueError):
    """An invalid catalogue: ``file``, ``line`` (1-based or ``None``), ``action`` (its id, or
    ``None``) and ``field`` (a path such as ``contact.min_interval``)."""

    def __init__(
        self, file: str, line: int | None, action: str | None, field: str | None, message: str
    ) -> None:
        where = f"{file}:{line}" if line is not None else file
        parts = [f"action {action!r}"] if action is not None else []
        if field is not None:
            parts.append(f"field {field}")
        head = ", ".join(parts)
        super().__init__(f"{where}: {head}: {message}" if head else f"{where}: {message}")
        self.file, self.line, self.action, self.field = file, line, action, field
        self.message = message


@dataclass(frozen=True, slots=True)
class Value:
    """An action's business value: a constant, or ``feature * times + plus`` (``default`` when
    the feature is null), clipped to ``[min, max]``.

    >>> Value(feature="avg_order_value", times=0.1, default=3.0).of({"avg_order_value": 80.0})
    8.0
    >>> Value(feature="avg_order_value", times=0.1, default=3.0).of({"avg_order_value": None})
    3.0
    >>> Value(constant=5.0).text()
    '5.0'
    """

    constant: float | None = None
    feature: str | None = None
    times: float = 1.0
    plus: float = 0.0
    default: float = 0.0
    minimum: float | None = None
    maximum: float | None = None

    def of(self, doc: Mapping[str, Any]) -> float:
        """The value for a profile document."""
        if self.constant is not None:
            return self.constant
        assert self.feature is not None
        try:
            x = read(doc, self.feature)
        except MissingFeatureError:  # a document without it (a degraded decision): the default
            x = None
        v = self.default if x is None else float(x) * self.times + self.plus
        if self.minimum is not None:
            v = max(v, self.minimum)
        if self.maximum is not None:
            v = min(v, self.maximum)
        return v

    def text(self) -> str:
        """Readable form, e.g. ``avg_order_value * 0.9 (default 40)``."""
        if self.constant is not None:
            return repr(self.constant)
        s = f"{self.feature} * {self.times:g}"
        if self.plus:
            s += f" + {self.plus:g}"
        return s + f" (default {self.default:g})"


@dataclass(frozen=True, slots=True)
class Contact:
    """Contact-policy limits of one action, per channel (``None``: no limit)."""

    max_per_day: int | None = None
    min_interval_ms: int | None = None
    after_conversion_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Action:
    """One action of the catalogue (see the module docstring)."""

    id: str
    description: str
    channels: tuple[str, ...]
    value: Value
    prior: float
    weight: float = 1.0
    eligibility: Rule | None = None
    valid_from: int | None = None
    valid_until: int | None = None
    contact: Contact = Contact()
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel: the most offers per customer per UTC day and the fallback action."""

    name: str
    max_per_day: int | None = None
    fallback: str | None = None


@dataclass(frozen=True)
class Catalog:
    """A validated catalogue. ``digest``: a short hash of the file's text (logged with every
    decision, so a log says which catalogue decided)."""

    actions: tuple[Action, ...]
    channels: Mapping[str, Channel]
    epsilon: float = DEFAULT_EPSILON
    attribution_ms: Mapping[str, int] = field(
        default_factory=lambda: {k: parse_duration(v) for k, v in DEFAULT_ATTRIBUTION.items()}
    )
    min_outcomes: int = DEFAULT_MIN_OUTCOMES
    source: str = "<memory>"
    digest: str = ""

    def __getitem__(self, action_id: str) -> Action:
        for a in self.actions:
            if a.id == action_id:
                return a
        raise KeyError(action_id)

    @property
    def ids(self) -> tuple[str, ...]:
        """Action ids in file order."""
        return tuple(a.id for a in self.actions)

    def for_channel(self, channel: str) -> tuple[Action, ...]:
        """The actions offered on a channel, in file order."""
        return tuple(a for a in self.actions if channel in a.channels)


def builtin_path() -> Path:
    """The shipped example catalogue."""
    return Path(str(resources.files("decisions").joinpath(BUILTIN)))


def load_catalog(
    path: str | Path | None = None,
    segments: Sequence[str] = (),
    targets: Sequence[str] = DEFAULT_TARGETS,
) -> Catalog:
    """Load and validate a catalogue file (``None``: the shipped one); ``segments``: the names
    eligibility rules may reference. Raises :class:`ActionConfigError`."""
    p = builtin_path() if path is None else Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ActionConfigError(str(p), None, None, None, f"cannot read: {e}") from None
    return parse_catalog(text, str(p), segments, targets)


def _near(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _number(x: object) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


class _Fail:
    """Builds errors of one file."""

    def __init__(self, file: str) -> None:
        self.file = file

    def __call__(
        self, where: object, key: object, action: str | None, fld: str | None, msg: str
    ) -> ActionConfigError:
        return ActionConfigError(self.file, line_of(where, key), action, fld, msg)


def _keys(
    d: Mapping[Any, Any], allowed: Sequence[str], fail: _Fail, aid: str | None, at: str
) -> None:
    for k in d:
        if k not in allowed:
            fld = f"{at}.{k}" if at else str(k)
            raise fail(d, k, aid, fld, f"unknown key {k!r} (keys: {', '.join(allowed)})")


def _mapping(
    x: object, where: object, key: object, fail: _Fail, aid: str | None, fld: str
) -> Mapping[Any, Any]:
    if x is None:
        return {}
    if not isinstance(x, Mapping):
        raise fail(where, key, aid, fld, "a mapping is needed")
    return x


def _duration(d: Mapping[Any, Any], key: str, fail: _Fail, aid: str | None, at: str) -> int | None:
    if key not in d or d[key] is None:
        return None
    try:
        return parse_duration(d[key])
    except ValueError as e:
        raise fail(d, key, aid, f"{at}.{key}", str(e)) from None


def _count(d: Mapping[Any, Any], key: str, fail: _Fail, aid: str | None, at: str) -> int | None:
    x = d.get(key)
    if x is None:
        return None
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise fail(d, key, aid, f"{at}.{key}", f"a whole number >= 0 is needed, got {x!r}")
    return x


def parse_catalog(
    text: str,
    file: str = "<string>",
    segments: Sequence[str] = (),
    targets: Sequence[str] = DEFAULT_TARGETS,
) -> Catalog:
    """Validate the text of a catalogue (see the module docstring)."""
    fail = _Fail(file)
    try:
        data = load_yaml(text)
    except YamlError as e:
        raise ActionConfigError(file, e.line, None, None, e.message) from None
    if not isinstance(data, Mapping):
        raise fail(data, None, None, None, "the file is a mapping with 'channels' and 'actions'")
    _keys(data, FILE_KEYS, fail, None, "")
    if data.get("version", 1) != 1:
        raise fail(data, "version", None, "version", "only version 1 is known")
    epsilon = _exploration(data, fail)
    windows = _attribution(data, fail)
    min_outcomes = _count(data, "min_outcomes", fail, None, "")
    channels = _channels(data, fail)
    items = data.get("actions")
    if not isinstance(items, list) or not items:
        raise fail(data, "actions", None, "actions", "a non-empty list of actions is needed")
    actions: list[Action] = []
    seen: dict[str, int | None] = {}
    for i, item in enumerate(items):
        a = _action(item, i, items, channels, tuple(segments), tuple(targets), fail)
        if a.id in seen:
            raise fail(item, "id", a.id, "id", f"duplicate action id (first at line {seen[a.id]})")
        seen[a.id] = line_of(item, "id")
        actions.append(a)
    ids = {a.id: a for a in actions}
    for ch in channels.values():
        if ch.fallback is None:
            continue
        fb = ids.get(ch.fallback)
        raw = data["channels"][ch.name]
        if fb is None:
            raise fail(
                raw,
                "fallback",
                None,
                f"channels.{ch.name}.fallback",
                f"unknown action {ch.fallback!r}" + _near(ch.fallback, list(ids)),
            )
        if ch.name not in fb.channels:
            raise fail(
                raw,
                "fallback",
                None,
                f"channels.{ch.name}.fallback",
                f"action {fb.id!r} is not offered on {ch.name}",
            )
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Catalog(
        tuple(actions),
        channels,
        epsilon,
        windows,
        DEFAULT_MIN_OUTCOMES if min_outcomes is None else min_outcomes,
        file,
        digest,
    )


def _exploration(data: Mapping[Any, Any], fail: _Fail) -> float:
    ex = _mapping(data.get("exploration"), data, "exploration", fail, None, "exploration")
    _keys(ex, ("policy", "epsilon"), fail, None, "exploration")
    if ex.get("policy", "epsilon_greedy") != "epsilon_greedy":
        raise fail(ex, "policy", None, "exploration.policy", "only epsilon_greedy is known")
    eps = ex.get("epsilon", DEFAULT_EPSILON)
    if not _number(eps) or not 0.0 <= eps <= 1.0:
        raise fail(ex, "epsilon", None, "exploration.epsilon", f"a number in [0, 1], got {eps!r}")
    return float(eps)


def _attribution(data: Mapping[Any, Any], fail: _Fail) -> dict[str, int]:
    at = _mapping(data.get("attribution"), data, "attribution", fail, None, "attribution")
    _keys(at, OUTCOME_TYPES, fail, None, "attribution")
    out = {k: parse_duration(v) for k, v in DEFAULT_ATTRIBUTION.items()}
    for k in at:
        ms = _duration(at, k, fail, None, "attribution")
        if ms is not None:
            out[k] = ms
    return out


def _channels(data: Mapping[Any, Any], fail: _Fail) -> dict[str, Channel]:
    raw = data.get("channels")
    if not isinstance(raw, Mapping) or not raw:
        raise fail(data, "channels", None, "channels", "a mapping of channel names is needed")
    out: dict[str, Channel] = {}
    for name, body in raw.items():
        if not isinstance(name, str) or not ID_RE.match(name):
            raise fail(
                raw, name, None, "channels", f"a channel name like 'web' is needed, got {name!r}"
            )
        d = _mapping(body, raw, name, fail, None, f"channels.{name}")
        _keys(d, CHANNEL_KEYS, fail, None, f"channels.{name}")
        fb = d.get("fallback")
        if fb is not None and not isinstance(fb, str):
            raise fail(d, "fallback", None, f"channels.{name}.fallback", "an action id is needed")
        out[name] = Channel(name, _count(d, "max_per_day", fail, None, f"channels.{name}"), fb)
    return out


def _action(
    item: object,
    i: int,
    items: list[Any],
    channels: Mapping[str, Channel],
    segments: tuple[str, ...],
    targets: tuple[str, ...],
    fail: _Fail,
) -> Action:
    if not isinstance(item, Mapping):
        raise fail(items, i, None, f"actions[{i}]", "an action is a mapping")
    aid = item.get("id")
    if not isinstance(aid, str) or not ID_RE.match(aid):
        raise fail(
            item,
            "id",
            None,
            f"actions[{i}].id",
            f"an id matching {ID_RE.pattern} is needed, got {aid!r}",
        )
    _keys(item, ACTION_KEYS, fail, aid, "")
    desc = item.get("description")
    if not isinstance(desc, str) or not desc.strip():
        raise fail(item, "description", aid, "description", "a text is needed")
    chans = item.get("channels")
    if not isinstance(chans, list) or not chans or not all(isinstance(c, str) for c in chans):
        raise fail(item, "channels", aid, "channels", "a non-empty list of channel names is needed")
    for c in chans:
        if c not in channels:
            raise fail(
                item,
                "channels",
                aid,
                "channels",
                f"channel {c!r} is not declared under channels (declared: {', '.join(channels)})",
            )
    rule: Rule | None = None
    if item.get("eligibility") is not None:
        try:
            rule = parse_rule(item["eligibility"], "eligibility", targets)
        except RuleError as e:
            raise fail(
                e.where if e.where is not None else item,
                e.key if e.where is not None else "eligibility",
                aid,
                e.field,
                e.message,
            ) from None
        for ref in sorted(segments_of(rule)):
            if ref not in segments:
                raise fail(
                    item,
                    "eligibility",
                    aid,
                    "eligibility",
                    f"unknown segment {ref!r}"
                    + (
                        _near(ref, segments)
                        if segments
                        else " (no segments are defined: "
                        "NEXTBEST_SEGMENTS=off needs actions without segment rules)"
                    ),
                )
    prior = item.get("prior")
    if not _number(prior) or not 0.0 <= prior <= 1.0:
        raise fail(item, "prior", aid, "prior", f"a probability in [0, 1] is needed, got {prior!r}")
    weight = item.get("weight", 1.0)
    if not _number(weight) or weight < 0:
        raise fail(item, "weight", aid, "weight", f"a number >= 0 is needed, got {weight!r}")
    bounds = [_time(item, key, aid, fail) for key in ("valid_from", "valid_until")]
    if bounds[0] is not None and bounds[1] is not None and bounds[1] <= bounds[0]:
        raise fail(item, "valid_until", aid, "valid_until", "must be after valid_from")
    ct = _mapping(item.get("contact"), item, "contact", fail, aid, "contact")
    _keys(ct, CONTACT_KEYS, fail, aid, "contact")
    contact = Contact(
        _count(ct, "max_per_day", fail, aid, "contact"),
        _duration(ct, "min_interval", fail, aid, "contact"),
        _duration(ct, "after_conversion", fail, aid, "contact"),
    )
    payload = _mapping(item.get("payload"), item, "payload", fail, aid, "payload")
    return Action(
        aid,
        desc.strip(),
        tuple(chans),
        _value(item, aid, targets, fail),
        float(prior),
        float(weight),
        rule,
        bounds[0],
        bounds[1],
        contact,
        dict(payload),
    )


def _time(item: Mapping[Any, Any], key: str, aid: str, fail: _Fail) -> int | None:
    """An RFC 3339 time with a zone (YAML may have parsed it already) or epoch ms."""
    x = item.get(key)
    if x is None:
        return None
    ms: int | None = None
    if isinstance(x, datetime):
        ms = None if x.tzinfo is None else int(x.timestamp() * 1000)
    elif isinstance(x, str | int) and not isinstance(x, bool):
        ms = parse_ts(x)
    if ms is None:
        raise fail(item, key, aid, key, f"a time (RFC 3339 with a zone) is needed, got {x!r}")
    return ms


def _value(item: Mapping[Any, Any], aid: str, targets: tuple[str, ...], fail: _Fail) -> Value:
    if "value" not in item:
        raise fail(item, None, aid, "value", "a value is needed (a number, or {feature, times})")
    raw = item["value"]
    if _number(raw):
        if raw < 0:
            raise fail(item, "value", aid, "value", "a value >= 0 is needed")
        return Value(constant=float(raw))
    if not isinstance(raw, Mapping):
        raise fail(
            item,
            "value",
            aid,
            "value",
            "a number or a mapping {feature, times, plus, default, min, max}",
        )
    _keys(raw, VALUE_KEYS, fail, aid, "value")
    numbers = [n for n, t in catalog(targets).items() if t.kind == "number"]
    feat = raw.get("feature")
    if not isinstance(feat, str) or feat not in numbers:
        raise fail(
            raw,
            "feature",
            aid,
            "value.feature",
            f"unknown number feature {feat!r}" + _near(str(feat), numbers),
        )
    nums: dict[str, float | None] = {}
    for key, default in (
        ("times", 1.0),
        ("plus", 0.0),
        ("default", 0.0),
        ("min", None),
        ("max", None),
    ):
        x = raw.get(key, default)
        if x is not None and not _number(x):
            raise fail(raw, key, aid, f"value.{key}", f"a number is needed, got {x!r}")
        nums[key] = None if x is None else float(x)
    lo = 0.0 if nums["min"] is None else nums["min"]
    if lo < 0 or (nums["default"] or 0.0) < 0:
        raise fail(raw, "min", aid, "value.min", "values are >= 0 (min and default)")
    return Value(
        None,
        feat,
        nums["times"] or 0.0,
        nums["plus"] or 0.0,
        nums["default"] or 0.0,
        lo,
        nums["max"],
    )
