"""The JSON Schema of the segments file, generated from the rule format and the catalogue.

``python -m features.segments.schema --write`` regenerates ``schemas/json/segments.schema.json``
(without ``--write`` it checks it); ``tests/test_segments_config.py`` fails when the checked-in file
drifts. (It lives here, not in :mod:`schemas.jsonschema`, because ``schemas`` may not import
``features``.) The schema checks the shape, the feature names, the operators each feature type
takes and the values' types; the loader (:func:`features.segments.config.load_segments`) checks
the same and what a schema cannot say (references, cycles, unique names).

>>> s = segments_schema()
>>> s["required"], sorted(s["$defs"])[:4]
(['segments'], ['all', 'any', 'boolean_comparison', 'comparison'])
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Final

import schemas
from features.segments.catalog import DEFAULT_TARGETS, TRAIT, FeatureType, catalog
from features.segments.config import DURATION_RE, NAME_RE, SEGMENT_KEYS
from features.segments.rules import OPS_BY_KIND

#: What a trait feature's name matches (``traits.<name>``).
TRAIT_FEATURE_PATTERN: Final = r"^traits\.[a-z][a-z0-9_]{0,39}$"
#: Where the file goes (the event schema's folder).
OUT: Final = Path(schemas.__file__).parent / "json" / "segments.schema.json"

_SCALAR: Final[dict[str, dict[str, Any]]] = {
    "number": {"type": "number"},
    "timestamp": {
        "anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}],
        "description": "RFC 3339 with a zone, or epoch milliseconds",
    },
    "boolean": {"type": "boolean"},
    "string": {"type": "string"},
    "list": {"type": "string", "description": "an element of the list"},
    "trait": {"type": ["string", "number", "boolean"]},
}


def _group_name(t: FeatureType) -> str:
    return f"{t.kind}_comparison" if t.choices is None else f"{t.kind}_choice_comparison"


def _comparison(features: list[str], t: FeatureType) -> dict[str, Any]:
    scalar = dict(_SCALAR[t.kind]) if t.choices is None else {"enum": list(t.choices)}
    ops = OPS_BY_KIND[t.kind]
    single = [o for o in ops if o not in ("in", "not_in", "exists")]
    shapes: list[dict[str, Any]] = []

    def shape(op_list: list[str], value: dict[str, Any] | None, required: bool) -> None:
        props: dict[str, Any] = {"feature": {"enum": features}, "op": {"enum": op_list}}
        if value is not None:
            props["value"] = value
        shapes.append(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["feature", "op", *(["value"] if required else [])],
                "properties": props,
            }
        )

    if single:
        shape(single, scalar, True)
    lists = [o for o in ops if o in ("in", "not_in")]
    if lists:
        shape(lists, {"type": "array", "minItems": 1, "items": scalar}, True)
    shape(["exists"], {"type": "boolean"}, False)
    return {"oneOf": shapes}


def segments_schema(targets: tuple[str, ...] = DEFAULT_TARGETS) -> dict[str, Any]:
    """The segments file as JSON Schema (draft 2020-12)."""
    groups: dict[str, tuple[FeatureType, list[str]]] = {}
    for name, t in sorted(catalog(targets).items()):
        groups.setdefault(_group_name(t), (FeatureType(t.kind, choices=t.choices), []))[1].append(
            name
        )
    defs: dict[str, Any] = {g: _comparison(names, t) for g, (t, names) in groups.items()}
    trait = _comparison([], TRAIT)
    for shape in trait["oneOf"]:
        shape["properties"]["feature"] = {"type": "string", "pattern": TRAIT_FEATURE_PATTERN}
    defs["trait_comparison"] = trait
    groups["trait_comparison"] = (TRAIT, [])
    defs["comparison"] = {"anyOf": [{"$ref": f"#/$defs/{g}"} for g in sorted(groups)]}
    rule_list = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/rule"}}
    for key, body in (
        ("all", rule_list),
        ("any", rule_list),
        ("not", {"$ref": "#/$defs/rule"}),
        ("segment_ref", {"type": "string", "pattern": NAME_RE.pattern}),
    ):
        prop = "segment" if key == "segment_ref" else key
        defs[key] = {
            "type": "object",
            "additionalProperties": False,
            "required": [prop],
            "properties": {prop: body},
        }
    defs["rule"] = {
        "description": "all / any / not over rules, a comparison, or a segment's membership",
        "anyOf": [{"$ref": f"#/$defs/{k}"} for k in ("all", "any", "not", "segment_ref")]
        + [{"$ref": "#/$defs/comparison"}],
    }
    defs["segment"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "description", "entry"],
        "properties": {
            "name": {"type": "string", "pattern": NAME_RE.pattern},
            "description": {"type": "string", "minLength": 1},
            "entry": {"$ref": "#/$defs/rule"},
            "exit": {
                "$ref": "#/$defs/rule",
                "description": "leave when this holds (default: when entry does not)",
            },
            "min_duration": {
                "type": "string",
                "pattern": DURATION_RE.pattern,
                "description": "the entry rule must hold this long before the entry counts",
            },
        },
    }
    assert set(defs["segment"]["properties"]) == set(SEGMENT_KEYS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://nextbest.example/schemas/segments.schema.json",
        "title": "nextbest segments",
        "description": (
            "Segment definitions (NEXTBEST_SEGMENTS): per segment an entry rule, an optional "
            "exit rule and an optional min_duration. Names must be unique; a segment may "
            "reference others without a cycle. Score targets: " + ", ".join(targets) + "."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["segments"],
        "properties": {
            "version": {"const": 1},
            "segments": {"type": "array", "items": {"$ref": "#/$defs/segment"}},
        },
        "$defs": defs,
    }


def rendered() -> str:
    """The exact text of the checked-in file."""
    return json.dumps(segments_schema(), indent=2, sort_keys=True) + "\n"


def write_or_check(out: Path, text: str, module: str, argv: list[str] | None = None) -> None:
    """The command line of a generated schema file: write it (``--write``) or fail when the
    checked-in ``out`` differs from ``text`` (naming ``python -m module --write``)."""
    parser = argparse.ArgumentParser(description=f"Write or check {out.name}.")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.write:
        out.write_text(text)
    elif not out.exists() or out.read_text() != text:
        raise SystemExit(f"stale {out.name}; run python -m {module} --write")


def main(argv: list[str] | None = None) -> None:
    """Write (``--write``) or check the generated file."""
    write_or_check(OUT, rendered(), "features.segments.schema", argv)


if __name__ == "__main__":
    main()
