"""JSON Schema files for producers, generated from the structs in :mod:`schemas.events`.

``python -m schemas.jsonschema --write`` (or ``make schemas``) regenerates ``schemas/json/``;
``tests/test_schemas.py`` fails when the checked-in files drift from the structs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec

from schemas.events import (
    CLICKSTREAM_TYPES,
    EVENT_TYPES,
    FEEDBACK_TYPES,
    ID_FIELDS,
    MAX_EVENT_BYTES,
    MAX_ID_LEN,
    MAX_ITEMS,
    MAX_PROPERTIES,
    OUTCOME_TYPES,
    SOURCE_TYPES,
    TRANSACTION_TYPES,
    _WireEvent,
)
from schemas.traits import (
    MAX_CUSTOM_TRAITS,
    MAX_TRAIT_CHARS,
    SOURCE_RE,
    STANDARD_TRAITS,
    TRAIT_NAME_RE,
)

OUT_DIR = Path(__file__).parent / "json"


def event_schema() -> dict[str, Any]:
    """The event contract as JSON Schema (draft 2020-12)."""
    schema = msgspec.json.schema(_WireEvent)
    defs = schema.pop("$defs")
    body = defs.pop("_WireEvent")
    props = body["properties"]
    for name in ID_FIELDS:
        props[name] = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN}
    props["type"] = {"enum": sorted(EVENT_TYPES)}
    props["ts"] = {
        "description": "Event time: RFC 3339 with a zone, or epoch milliseconds.",
        "anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}],
    }
    props["properties"] = {"type": "object", "maxProperties": MAX_PROPERTIES}
    for name in ("price", "total", "value"):
        props[name] = {"type": "number", "minimum": 0}
    props["outcome"] = {"enum": list(OUTCOME_TYPES)}
    props["quantity"] = {"type": "integer", "minimum": 1, "maximum": 10000}
    props["items"] = {"type": "array", "maxItems": MAX_ITEMS, "items": {"$ref": "#/$defs/Item"}}
    props["source"] = {"type": "string", "pattern": f"^{SOURCE_RE.pattern}$"}
    props["email"] = {
        "type": "string",
        "description": "An email address (trimmed, lower-cased; local@domain.tld), or its "
        "token em:<32 hex>; stored only as a salted hash. Resolves the event to its customer.",
    }
    props["phone"] = {
        "type": "string",
        "description": "A phone number in E.164 after removing spaces, dashes, dots and "
        "parentheses (a leading 00 becomes +): + and 8 to 15 digits; or its token ph:<32 hex>. "
        "Stored only as a salted hash. Resolves the event to its customer.",
    }
    text = {"type": ["string", "null"], "maxLength": MAX_TRAIT_CHARS}
    standard: dict[str, Any] = {n: text for n in STANDARD_TRAITS}
    standard["email"] = {"type": ["string", "null"], "description": "as the event's email"}
    standard["phone"] = {"type": ["string", "null"], "description": "as the event's phone"}
    standard["country"] = {"type": ["string", "null"], "pattern": "^[A-Za-z]{2}$"}
    standard["birthday"] = {"type": ["string", "null"], "format": "date"}
    props["traits"] = {
        "type": "object",
        "description": f"identify: the person's traits; at most {MAX_CUSTOM_TRAITS} custom "
        "traits besides the standard ones (a string, a number, a boolean or null).",
        "properties": standard,
        "propertyNames": {
            "anyOf": [{"enum": list(STANDARD_TRAITS)}, {"pattern": f"^{TRAIT_NAME_RE.pattern}$"}]
        },
        "additionalProperties": {
            "anyOf": [text, {"type": ["number", "boolean"]}],
        },
        "maxProperties": MAX_CUSTOM_TRAITS + len(STANDARD_TRAITS),
    }
    body.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://nextbest.example/schemas/event.json",
        "title": "nextbest event",
        "description": (
            f"One event per Kafka message or JSONL line, at most {MAX_EVENT_BYTES} bytes. "
            f"Clickstream types: {', '.join(sorted(CLICKSTREAM_TYPES))}. Transaction types "
            f"(customer_id and total required): {', '.join(sorted(TRANSACTION_TYPES))}. "
            f"Feedback types (decision_id, action_id and outcome required): "
            f"{', '.join(sorted(FEEDBACK_TYPES))}. Source-system types (traits and source "
            f"required): {', '.join(sorted(SOURCE_TYPES))}. Identity: customer_id, "
            "anonymous_id, email or phone. Unknown extra fields are accepted."
        ),
        **body,
        "required": ["event_id", "type", "ts"],
        "anyOf": [
            *({"required": [n]} for n in ("customer_id", "anonymous_id", "email", "phone")),
            {  # an identify's traits.email / traits.phone stand for its email / phone
                "required": ["type", "traits"],
                "properties": {
                    "type": {"const": "identify"},
                    "traits": {
                        "anyOf": [
                            {"required": [n], "properties": {n: {"type": "string"}}}
                            for n in ("email", "phone")
                        ]
                    },
                },
            },
        ],
        "allOf": [
            {
                "if": {"properties": {"type": {"enum": sorted(TRANSACTION_TYPES)}}},
                "then": {"required": ["customer_id", "total"]},
            },
            {
                "if": {"properties": {"type": {"enum": sorted(FEEDBACK_TYPES)}}},
                "then": {"required": ["decision_id", "action_id", "outcome"]},
            },
            {
                "if": {"properties": {"type": {"enum": sorted(SOURCE_TYPES)}}},
                "then": {"required": ["traits", "source"]},
            },
        ],
        "$defs": defs,
    }


def rendered() -> dict[str, str]:
    """File name -> exact file text of every generated schema."""
    return {"event.json": json.dumps(event_schema(), indent=2, sort_keys=True) + "\n"}


def main() -> None:
    """Write (``--write``) or check the generated files."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    OUT_DIR.mkdir(exist_ok=True)
    stale = []
    for name, text in rendered().items():
        path = OUT_DIR / name
        if args.write:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(name)
    if stale:
        raise SystemExit(f"stale JSON Schema files: {stale}; run `make schemas`")


if __name__ == "__main__":
    main()
