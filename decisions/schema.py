"""The JSON Schema of the action catalogue (``schemas/json/actions.schema.json``).

Generated from the loader's constants and the segment rule definitions (eligibility rules are
segment rules): ``python -m decisions.schema --write`` (or ``make schemas``); a test fails when
the checked-in file is stale, and checks that the shipped catalogue validates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from decisions.catalog import (
    ACTION_KEYS,
    CHANNEL_KEYS,
    CONTACT_KEYS,
    FILE_KEYS,
    ID_RE,
    VALUE_KEYS,
)
from features.segments.catalog import DEFAULT_TARGETS, catalog
from features.segments.config import DURATION_RE
from features.segments.schema import segments_schema, write_or_check
from schemas.events import OUTCOME_TYPES

OUT: Final = Path(__file__).resolve().parent.parent / "schemas" / "json" / "actions.schema.json"


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    return out


def actions_schema(targets: tuple[str, ...] = DEFAULT_TARGETS) -> dict[str, Any]:
    """The catalogue file as JSON Schema (draft 2020-12)."""
    defs = {k: v for k, v in segments_schema(targets)["$defs"].items() if k != "segment"}
    ident = {"type": "string", "pattern": ID_RE.pattern}
    duration = {"type": "string", "pattern": DURATION_RE.pattern}
    count = {"type": "integer", "minimum": 0}
    numbers = sorted(n for n, t in catalog(targets).items() if t.kind == "number")
    defs["value"] = {
        "description": "a constant, or feature * times + plus (default when null), clipped",
        "anyOf": [
            {"type": "number", "minimum": 0},
            _obj(
                {
                    "feature": {"enum": numbers},
                    "times": {"type": "number"},
                    "plus": {"type": "number"},
                    "default": {"type": "number", "minimum": 0},
                    "min": {"type": "number", "minimum": 0},
                    "max": {"type": "number"},
                },
                ["feature"],
            ),
        ],
    }
    defs["contact"] = _obj(
        {"max_per_day": count, "min_interval": duration, "after_conversion": duration}
    )
    stamp = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}]}
    defs["action"] = _obj(
        {
            "id": ident,
            "description": {"type": "string", "minLength": 1},
            "channels": {"type": "array", "minItems": 1, "items": ident},
            "eligibility": {"$ref": "#/$defs/rule"},
            "value": {"$ref": "#/$defs/value"},
            "weight": {"type": "number", "minimum": 0},
            "prior": {"type": "number", "minimum": 0, "maximum": 1},
            "valid_from": stamp,
            "valid_until": stamp,
            "contact": {"$ref": "#/$defs/contact"},
            "payload": {"type": "object"},
        },
        ["id", "description", "channels", "value", "prior"],
    )
    defs["channel"] = _obj({"max_per_day": count, "fallback": ident})
    assert set(defs["action"]["properties"]) == set(ACTION_KEYS)
    assert set(defs["contact"]["properties"]) == set(CONTACT_KEYS)
    assert set(defs["channel"]["properties"]) == set(CHANNEL_KEYS)
    assert set(defs["value"]["anyOf"][1]["properties"]) == set(VALUE_KEYS)
    props = {
        "version": {"const": 1},
        "exploration": _obj(
            {
                "policy": {"const": "epsilon_greedy"},
                "epsilon": {"type": "number", "minimum": 0, "maximum": 1},
            }
        ),
        "attribution": _obj({k: duration for k in OUTCOME_TYPES}),
        "min_outcomes": count,
        "channels": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": ident,
            "additionalProperties": {"$ref": "#/$defs/channel"},
        },
        "actions": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/action"}},
    }
    assert set(props) == set(FILE_KEYS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://nextbest.example/schemas/actions.schema.json",
        "title": "nextbest action catalogue",
        "description": (
            "Next-best-action catalogue (NEXTBEST_ACTIONS): channels with their daily limit and "
            "fallback action, and actions with eligibility (segment rule format), value, weight, "
            "prior, validity and contact policy. Ids must be unique; a fallback must be offered "
            "on its channel. Score targets: " + ", ".join(targets) + "."
        ),
        **_obj(props, ["channels", "actions"]),
        "$defs": defs,
    }


def rendered() -> str:
    """The exact text of the checked-in file."""
    return json.dumps(actions_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write (``--write``) or check the generated file."""
    write_or_check(OUT, rendered(), "decisions.schema", argv)


if __name__ == "__main__":
    main()
