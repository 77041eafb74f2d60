"""Segment definitions from a YAML file, validated at load: the only module here that reads a file.

The file (its JSON Schema: ``schemas/json/segments.schema.json``)::

    version: 1                      # optional
    segments:
      - name: at_risk               # [a-z][a-z0-9_]*, unique
        description: bought before, churn score high
        entry: {all: [{feature: purchases_total, op: ge, value: 1},
                      {feature: score.churn, op: ge, value: 0.7}]}
        exit: {feature: score.churn, op: lt, value: 0.6}     # optional (hysteresis)
        min_duration: 30m                                     # optional: <n>ms|s|m|h|d|w

Rules are described in :mod:`features.segments.rules`. Every error stops the load with a
:class:`SegmentConfigError` naming the file, the line, the segment and the field: YAML syntax,
unknown keys, unknown features or ops, type mismatches, unknown or cyclic segment references,
duplicate names, bad durations.

Examples
--------
>>> s = parse_segments('''
... segments:
...   - name: lapsed
...     description: no visit for 30 days
...     entry: {feature: days_since_last_seen, op: ge, value: 30}
...   - name: lapsed_buyer
...     description: lapsed, bought before
...     entry: {all: [{segment: lapsed}, {feature: purchases_total, op: gt, value: 0}]}
... ''', "demo.yaml")
>>> [seg.name for seg in s.order], sorted(s.features)
(['lapsed', 'lapsed_buyer'], ['days_since_last_seen', 'purchases_total'])
>>> try:
...     parse_segments('''
... segments:
...   - name: odd
...     description: a typo
...     entry: {feature: rfm_segment, op: lt, value: 2}
... ''', "bad.yaml")
... except SegmentConfigError as e:
...     print(e.file, e.line, e.segment, e.field)
...     print(e.message)
bad.yaml 5 odd entry.op
op 'lt' does not apply to rfm_segment (string): use one of eq, ne, in, not_in, exists
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from features.registry import BY_NAME
from features.segments.catalog import DEFAULT_TARGETS
from features.segments.rules import Cmp, Rule, RuleError, comparisons, parse_rule, segments_of
from features.windows import DAY, HOUR, MINUTE, SECOND

#: The keys of a segment, and of the file.
SEGMENT_KEYS: Final = ("name", "description", "entry", "exit", "min_duration")
FILE_KEYS: Final = ("version", "segments")
NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DURATION_RE: Final = re.compile(r"^([0-9]{1,9})(ms|s|m|h|d|w)$")
_UNITS: Final = {"ms": 1, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": 7 * DAY}
#: The name of the built-in file, shipped in this package.
BUILTIN: Final = "builtin.yaml"


class SegmentConfigError(ValueError):
    """An invalid segments file: ``file``, ``line`` (1-based, or ``None``), ``segment`` (its
    name, or ``None`` for the file itself) and ``field`` (a path such as ``entry.all[0].op``)."""

    def __init__(
        self, file: str, line: int | None, segment: str | None, field: str | None, message: str
    ) -> None:
        where = f"{file}:{line}" if line is not None else file
        parts = []
        if segment is not None:
            parts.append(f"segment {segment!r}")
        if field is not None:
            parts.append(f"field {field}")
        head = ", ".join(parts)
        super().__init__(f"{where}: {head}: {message}" if head else f"{where}: {message}")
        self.file = file
        self.line = line
        self.segment = segment
        self.field = field
        self.message = message


def parse_duration(text: object) -> int:
    """Milliseconds of ``<n><unit>`` with unit ``ms``, ``s``, ``m``, ``h``, ``d`` or ``w``.

    >>> parse_duration("30m"), parse_duration("2d"), parse_duration("0s")
    (1800000, 172800000, 0)
    >>> parse_duration("2 days")
    Traceback (most recent call last):
    ...
    ValueError: bad duration '2 days': <number><unit>, unit one of ms, s, m, h, d, w (e.g. 30m, 2d)
    """
    m = DURATION_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"bad duration {text!r}: <number><unit>, unit one of ms, s, m, h, d, w (e.g. 30m, 2d)"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment definition; ``exit`` ``None`` means: leave when ``entry`` is false."""

    name: str
    description: str
    entry: Rule
    exit: Rule | None = None
    min_duration_ms: int = 0

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The entry rule, then the exit rule if any."""
        return (self.entry,) if self.exit is None else (self.entry, self.exit)


@dataclass(frozen=True)
class SegmentSet:
    """Validated segments: ``order`` is the evaluation order (a segment comes after every segment
    it references; otherwise file order). ``features`` are all the features the rules read and
    ``constants`` each feature's constants (what :func:`~features.segments.flips.next_flip`
    searches for)."""

    order: tuple[Segment, ...]
    source: str = "<memory>"
    targets: tuple[str, ...] = DEFAULT_TARGETS
    features: frozenset[str] = field(init=False)
    constants: Mapping[str, tuple[Cmp, ...]] = field(init=False)
    #: The series (windowed features' buckets) the rules read.
    series: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        found: dict[str, list[Cmp]] = {}
        for seg in self.order:
            for rule in seg.rules:
                for c in comparisons(rule):
                    found.setdefault(c.feature, []).append(c)
        object.__setattr__(self, "features", frozenset(found))
        object.__setattr__(self, "constants", {k: tuple(v) for k, v in found.items()})
        reads = (BY_NAME[n] for n in found if n in BY_NAME)
        series = {s.name for f in reads for s in (f.series, f.minus) if s is not None}
        object.__setattr__(self, "series", frozenset(series))

    @property
    def names(self) -> tuple[str, ...]:
        """Segment names in evaluation order."""
        return tuple(s.name for s in self.order)

    def __getitem__(self, name: str) -> Segment:
        for s in self.order:
            if s.name == name:
                return s
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.order)


# --------------------------------------------------------------------------------------------
# YAML with line numbers


class _Map(dict[Any, Any]):
    """A loaded mapping that remembers its line and each key's line (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class _Seq(list[Any]):
    line: int = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    """A safe loader whose mappings and lists know their lines; duplicate keys are errors."""


def _map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    loader.flatten_mapping(node)
    for knode, vnode in node.value:
        key = loader.construct_object(knode, deep=True)
        if key in out.key_lines:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", knode.start_mark
            )
        out[key] = loader.construct_object(vnode, deep=True)
        out.key_lines[key] = knode.start_mark.line + 1
    return out


def _seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(n, deep=True) for n in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [n.start_mark.line + 1 for n in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _map)  # type: ignore[arg-type]
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _seq)  # type: ignore[arg-type]


def _line(where: object, key: object = None) -> int | None:
    if isinstance(where, _Map) and key in where.key_lines:
        return where.key_lines[key]
    if isinstance(where, _Seq) and isinstance(key, int) and 0 <= key < len(where.item_lines):
        return where.item_lines[key]
    return getattr(where, "line", None)


#: The line (1-based) of a loaded mapping or list, or of one of its keys or items (``None``
#: when unknown): for other YAML files validated the same way (the action catalogue).
line_of = _line


class YamlError(ValueError):
    """YAML that does not load: ``line`` (1-based or ``None``) and ``message``."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def load_yaml(text: str) -> Any:
    """YAML text whose mappings and lists know their lines (:func:`line_of`); duplicate keys
    are errors. Raises :class:`YamlError`.

    >>> d = load_yaml("a: 1\\nb:\\n  - x\\n")
    >>> d["b"], line_of(d, "b"), line_of(d["b"], 0)
    (['x'], 2, 3)
    """
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise YamlError(line, f"YAML syntax: {e.problem}") from None
    except yaml.YAMLError as e:
        raise YamlError(None, f"YAML: {e}") from None


# --------------------------------------------------------------------------------------------
# Loading


def builtin_path() -> Path:
    """The path of the built-in segments file shipped with the package."""
    return Path(str(resources.files("features.segments").joinpath(BUILTIN)))


def load_segments(
    path: str | Path | None = None, targets: Sequence[str] = DEFAULT_TARGETS
) -> SegmentSet:
    """Load and validate a segments file (default: the built-in one).

    Parameters
    ----------
    path
        A YAML file; ``None``: :func:`builtin_path`.
    targets
        The score targets rules may read as ``score.<target>`` (pass ``models.targets.NAMES``).

    Raises
    ------
    SegmentConfigError
        Anything wrong, with the file, line, segment and field named (a file that cannot be read
        too).
    """
    p = builtin_path() if path is None else Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SegmentConfigError(str(p), None, None, None, f"cannot read: {e}") from None
    return parse_segments(text, str(p), targets)


def parse_segments(
    text: str, file: str = "<string>", targets: Sequence[str] = DEFAULT_TARGETS
) -> SegmentSet:
    """Validate the text of a segments file (see the module docstring)."""
    tg = tuple(targets)
    try:
        data = load_yaml(text)
    except YamlError as e:
        raise SegmentConfigError(file, e.line, None, None, e.message) from None

    def fail(line: int | None, seg: str | None, fld: str | None, msg: str) -> SegmentConfigError:
        return SegmentConfigError(file, line, seg, fld, msg)

    if not isinstance(data, _Map):
        raise fail(_line(data) or 1, None, None, "the file is a mapping with a 'segments' list")
    for k in data:
        if k not in FILE_KEYS:
            raise fail(_line(data, k), None, str(k), f"unknown key {k!r} (keys: version, segments)")
    if data.get("version", 1) != 1:
        raise fail(_line(data, "version"), None, "version", "only version 1 is known")
    items = data.get("segments")
    if not isinstance(items, _Seq):
        raise fail(_line(data, "segments") or 1, None, "segments", "a list of segments is needed")
    parsed: list[tuple[Segment, _Map]] = []
    seen: dict[str, int | None] = {}
    for i, item in enumerate(items):
        seg, raw = _segment(item, i, items, tg, fail)
        if seg.name in seen:
            raise fail(
                _line(raw, "name"),
                seg.name,
                "name",
                f"duplicate segment name (first defined at line {seen[seg.name]})",
            )
        seen[seg.name] = _line(raw, "name")
        parsed.append((seg, raw))
    return SegmentSet(_ordered(parsed, fail), source=file, targets=tg)


def _segment(item: object, i: int, items: _Seq, targets: tuple[str, ...], fail: Any) -> Any:
    if not isinstance(item, _Map):
        raise fail(_line(items, i), None, f"segments[{i}]", "a segment is a mapping")
    name = item.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise fail(
            _line(item, "name"),
            None,
            f"segments[{i}].name",
            f"a name matching {NAME_RE.pattern} is needed, got {name!r}",
        )
    for k in item:
        if k not in SEGMENT_KEYS:
            raise fail(
                _line(item, k), name, str(k), f"unknown key {k!r} (keys: {', '.join(SEGMENT_KEYS)})"
            )
    desc = item.get("description")
    if not isinstance(desc, str) or not desc.strip():
        raise fail(_line(item, "description") or item.line, name, "description", "a text is needed")
    if "entry" not in item:
        raise fail(item.line, name, "entry", "an entry rule is needed")
    rules: dict[str, Rule] = {}
    for key in ("entry", "exit"):
        if key in item:
            try:
                rules[key] = parse_rule(item[key], key, targets)
            except RuleError as e:
                line = _line(e.where, e.key) or _line(item, key)
                raise fail(line, name, e.field, e.message) from None
    try:
        dur = parse_duration(item.get("min_duration", "0s"))
    except ValueError as e:
        raise fail(_line(item, "min_duration"), name, "min_duration", str(e)) from None
    return Segment(name, desc.strip(), rules["entry"], rules.get("exit"), dur), item


def _ordered(parsed: list[tuple[Segment, _Map]], fail: Any) -> tuple[Segment, ...]:
    """Topological order (file order among the ready); unknown references and cycles fail."""
    by_name = {s.name: (s, raw) for s, raw in parsed}
    deps: dict[str, list[str]] = {}
    for s, raw in parsed:
        deps[s.name] = []
        for key, rule in (("entry", s.entry), ("exit", s.exit)):
            for ref in sorted(segments_of(rule)) if rule is not None else ():
                if ref not in by_name:
                    hint = [n for n in by_name if n.startswith(ref[:3])][:1]
                    more = f" (did you mean {hint[0]!r}?)" if hint else ""
                    raise fail(_line(raw, key), s.name, key, f"unknown segment {ref!r}{more}")
                deps[s.name].append(ref)
    done: dict[str, None] = {}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name) :], name]
            seg, raw = by_name[cycle[0]]
            key = "entry" if cycle[1] in segments_of(seg.entry) else "exit"
            raise fail(
                _line(raw, key), seg.name, key, "a cycle between segments: " + " -> ".join(cycle)
            )
        state[name] = 1
        for ref in deps[name]:
            visit(ref, [*path, name])
        state[name] = 2
        done[name] = None

    for s, _ in parsed:
        visit(s.name, [])
    return tuple(by_name[n][0] for n in done)
