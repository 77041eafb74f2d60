"""Event and API contracts: typed structs, decoding, errors, published JSON Schema."""

from schemas.events import (
    EVENT_TYPES,
    REASONS,
    DecodeError,
    Event,
    Item,
    decode_event,
    encode_event,
    format_ts,
    parse_ts,
)

__all__ = [
    "EVENT_TYPES",
    "REASONS",
    "DecodeError",
    "Event",
    "Item",
    "decode_event",
    "encode_event",
    "format_ts",
    "parse_ts",
]
