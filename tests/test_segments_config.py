"""Segment definitions: the built-in file, validation errors (file, line, segment, field), the
published JSON Schema."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from features.registry import FEATURES
from features.segments import (
    SegmentConfigError,
    builtin_path,
    catalog,
    load_segments,
    parse_duration,
    parse_segments,
)
from features.segments.catalog import DEFAULT_TARGETS, NOT_COMPARABLE
from features.segments.rules import AnyOf, InSegment
from features.segments.schema import OUT, rendered, segments_schema
from models.targets import NAMES

BUILTIN = (
    "cart_abandoned",
    "at_risk",
    "lapsed_30d",
    "high_intent",
    "browsing_not_buying",
    "new_customers",
    "champions",
    "loyal",
)


def test_builtin_loads_in_order() -> None:
    s = load_segments()
    assert s.names == BUILTIN
    assert s.source == str(builtin_path())
    assert s["at_risk"].exit is not None
    loyal = s["loyal"].entry
    assert isinstance(loyal, AnyOf) and InSegment("champions") in loyal.rules
    assert s.names.index("champions") < s.names.index("loyal")


def test_builtin_segments_each_have_a_comment() -> None:
    lines = builtin_path().read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- name:"):
            assert lines[i - 1].strip().startswith("#"), line


def test_score_targets_are_the_models_targets() -> None:
    assert tuple(NAMES) == DEFAULT_TARGETS
    assert load_segments(targets=NAMES).targets == DEFAULT_TARGETS


def test_catalogue_covers_the_registry() -> None:
    cat = catalog()
    for f in FEATURES:
        assert (f.name in cat) != (f.name in NOT_COMPARABLE), f.name
    for extra in ("rfm_r", "rfm_f", "rfm_m", "rfm_segment", "has_identities", "score.churn"):
        assert extra in cat


def test_schema_file_in_sync() -> None:
    assert OUT.read_text() == rendered(), "run python -m features.segments.schema --write"


def test_schema_accepts_the_builtin_file_and_rejects_bad_ones() -> None:
    schema = segments_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    v.validate(yaml.safe_load(builtin_path().read_text()))

    def bad(entry: object, **more: object) -> None:
        doc = {"segments": [{"name": "x", "description": "d", "entry": entry, **more}]}
        assert not v.is_valid(doc), entry

    bad({"feature": "cart_abandoned", "op": "gt", "value": 3})
    bad({"feature": "rfm_segment", "op": "lt", "value": 2})
    bad({"feature": "rfm_segment", "op": "eq", "value": "champion"})
    bad({"feature": "page_views_1h", "op": "ge", "value": "3"})
    bad({"feature": "nope", "op": "exists"})
    bad({"feature": "page_views_1h", "op": "between", "value": 3})
    bad({"all": []})
    bad({"all": [{"segment": "y"}], "any": [{"segment": "y"}]})
    bad({"segment": "y"}, min_duration="2 days")
    bad({"segment": "y"}, colour="red")
    ok = {
        "segments": [
            {
                "name": "x",
                "description": "d",
                "min_duration": "30m",
                "entry": {
                    "all": [
                        {"feature": "score.churn", "op": "ge", "value": 0.7},
                        {"not": {"feature": "days_since_last_seen", "op": "exists"}},
                        {"feature": "top_categories", "op": "contains", "value": "shoes"},
                        {"feature": "last_seen_ts", "op": "lt", "value": "2026-01-01T00:00:00Z"},
                        {"feature": "rfm_segment", "op": "in", "value": ["loyal", "champions"]},
                    ]
                },
            }
        ]
    }
    v.validate(ok)
    parse_segments(json.dumps(ok))  # the loader agrees


def _err(text: str) -> SegmentConfigError:
    with pytest.raises(SegmentConfigError) as info:
        parse_segments(textwrap.dedent(text).lstrip("\n"), "seg.yaml")
    return info.value


ONE = """
segments:
  - name: a
    description: something
    entry: {feature: cart_items, op: gt, value: 0}
"""


def test_a_valid_file_parses() -> None:
    assert parse_segments(ONE).names == ("a",)


@pytest.mark.parametrize(
    ("text", "line", "segment", "field", "words"),
    [
        ("segments:\n  - name: a\n    entry: {feature: x\n", 4, None, None, "YAML syntax"),
        ("segments: []\ncolour: red\n", 2, None, "colour", "unknown key 'colour'"),
        ("- a\n", 1, None, None, "a mapping"),
        ("version: 2\nsegments: []\n", 1, None, "version", "version 1"),
        (ONE + "    colour: red\n", 5, "a", "colour", "unknown key 'colour'"),
        (
            ONE.replace("cart_items", "cart_item"),
            4,
            "a",
            "entry.feature",
            "unknown feature 'cart_item' (did you mean 'cart_items'?)",
        ),
        (ONE.replace("cart_items", "score.ltv"), 4, "a", "entry.feature", "score targets"),
        (
            ONE.replace("cart_items, op: gt, value: 0", "cart_abandoned, op: gt, value: 3"),
            4,
            "a",
            "entry.op",
            "op 'gt' does not apply to cart_abandoned (boolean)",
        ),
        (
            ONE.replace("cart_items, op: gt, value: 0", "rfm_segment, op: lt, value: 2"),
            4,
            "a",
            "entry.op",
            "does not apply to rfm_segment (string)",
        ),
        (
            ONE.replace("value: 0", "value: '3'"),
            4,
            "a",
            "entry.value",
            "type mismatch: cart_items is a number, '3' (str) is not a number",
        ),
        (ONE.replace("value: 0", "value: true"), 4, "a", "entry.value", "type mismatch"),
        (
            ONE.replace("cart_items, op: gt, value: 0", "rfm_segment, op: eq, value: champion"),
            4,
            "a",
            "entry.value",
            "did you mean 'champions'?",
        ),
        (ONE.replace("op: gt", "op: greater"), 4, "a", "entry.op", "unknown op 'greater'"),
        (ONE.replace("op: gt", "op: in"), 4, "a", "entry.value", "non-empty list"),
        (ONE.replace("op: gt, value: 0", "op: gt"), 4, "a", "entry.value", "needs a value"),
        (
            ONE.replace("cart_items, op: gt, value: 0", "last_seen_ts, op: lt, value: yesterday"),
            4,
            "a",
            "entry.value",
            "not a timestamp",
        ),
        (
            ONE.replace("entry: {feature: cart_items, op: gt, value: 0}", "entry: {all: []}"),
            4,
            "a",
            "entry.all",
            "non-empty list",
        ),
        (
            ONE.replace(
                "entry: {feature: cart_items, op: gt, value: 0}",
                "entry: {all: [{segment: b}], any: []}",
            ),
            4,
            "a",
            "entry.any",
            "exactly one of",
        ),
        (
            ONE.replace(
                "entry: {feature: cart_items, op: gt, value: 0}",
                "entry:\n      all:\n        - {feature: cart_items, op: gt, value: 0}\n"
                "        - {feature: events_total, op: ge, value: x}",
            ),
            7,
            "a",
            "entry.all[1].value",
            "type mismatch",
        ),
        (
            ONE.replace("{feature: cart_items, op: gt, value: 0}", "{segment: b}"),
            4,
            "a",
            "entry",
            "unknown segment 'b'",
        ),
        (ONE + "    min_duration: 2 days\n", 5, "a", "min_duration", "bad duration"),
        (ONE + "    exit: 3\n", 5, "a", "exit", "a rule is a mapping"),
        (ONE.replace("    description: something\n", ""), 2, "a", "description", "a text"),
        (
            ONE.replace("    entry: {feature: cart_items, op: gt, value: 0}\n", ""),
            2,
            "a",
            "entry",
            "an entry rule",
        ),
        (ONE.replace("name: a", "name: A-1"), 2, None, "segments[0].name", "a name matching"),
        (ONE + ONE.replace("segments:\n", ""), 6, "a", "name", "duplicate segment name"),
        (ONE + "    name: b\n", 5, None, None, "duplicate key 'name'"),
    ],
)
def test_errors_name_file_line_segment_field(
    text: str, line: int, segment: str | None, field: str | None, words: str
) -> None:
    e = _err(text)
    assert (e.file, e.line, e.segment, e.field) == ("seg.yaml", line, segment, field), str(e)
    assert words in e.message, str(e)
    assert str(e).startswith(f"seg.yaml:{line}: ")
    if segment is not None:
        assert f"segment {segment!r}" in str(e)


def test_cycles_are_named() -> None:
    e = _err("""
        segments:
          - name: a
            description: x
            entry: {segment: b}
          - name: b
            description: y
            entry: {any: [{feature: cart_items, op: gt, value: 0}, {not: {segment: c}}]}
          - name: c
            description: z
            entry: {feature: cart_items, op: eq, value: 0}
            exit: {segment: a}
        """)
    assert e.segment == "a" and e.field == "entry" and e.line == 4
    assert "a cycle between segments: a -> b -> c -> a" in e.message
    e = _err(ONE.replace("{feature: cart_items, op: gt, value: 0}", "{not: {segment: a}}"))
    assert "a -> a" in e.message


def test_order_puts_references_first() -> None:
    s = parse_segments(
        textwrap.dedent("""
        segments:
          - {name: c, description: x, entry: {all: [{segment: b}, {segment: a}]}}
          - {name: a, description: x, entry: {feature: cart_items, op: gt, value: 0}}
          - {name: b, description: x, entry: {not: {segment: a}}}
          - {name: d, description: x, entry: {feature: cart_items, op: gt, value: 1}}
        """)
    )
    assert s.names == ("a", "b", "c", "d")


def test_load_from_a_file_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text(ONE.lstrip().replace("op: gt", "op: bigger"))
    with pytest.raises(SegmentConfigError) as info:
        load_segments(p)
    assert info.value.file == str(p) and str(info.value).startswith(f"{p}:4: segment 'a'")
    p.write_text(ONE)
    assert load_segments(p).names == ("a",)
    with pytest.raises(SegmentConfigError, match="cannot read"):
        load_segments(tmp_path / "missing.yaml")


def test_durations() -> None:
    assert parse_duration("45s") == 45_000 and parse_duration("1w") == 7 * 86_400_000
    for bad in ("", "5", "1.5h", "-1d", "2 d", 30):
        with pytest.raises(ValueError, match="bad duration"):
            parse_duration(bad)
