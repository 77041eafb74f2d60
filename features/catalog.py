"""The product catalogue file: JSONL or CSV rows of product id, name, category, price, in stock
and URL (``nextbest catalog load FILE``).

Pure parsing: every row becomes a :class:`CatalogItem` or a :class:`RowError` naming its line
and reason; good rows load whatever the bad ones are. Fields: ``product_id`` (required, at
most 128 characters), ``name``, ``category``, ``url`` (texts, at most 512 characters),
``price`` (a number >= 0), ``in_stock`` (true/false, 1/0, yes/no; default true). Other fields
are ignored. A product id seen twice: the later row is rejected (``duplicate_product_id``).

Examples
--------
>>> items, errors = parse_lines(["product_id,name,price,in_stock", "p-1,Boots,49.9,yes",
...                              "p-2,Hat,-1,no", ",nameless,1,yes"], "csv")
>>> [(i.product_id, i.price, i.in_stock) for i in items]
[('p-1', 49.9, True)]
>>> [(e.line, e.reason) for e in errors]
[(3, 'bad_price'), (4, 'missing_product_id')]
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import msgspec
import orjson

MAX_ID: Final = 128
MAX_TEXT: Final = 512
FIELDS: Final = ("product_id", "name", "category", "price", "in_stock", "url")
_TRUE: Final = {"true", "1", "yes", "y"}
_FALSE: Final = {"false", "0", "no", "n"}


class CatalogItem(msgspec.Struct, frozen=True, omit_defaults=True):
    """One product of the catalogue."""

    product_id: str
    name: str | None = None
    category: str | None = None
    price: float | None = None
    in_stock: bool = True
    url: str | None = None


class RowError(msgspec.Struct, frozen=True):
    """A rejected row: its line (1-based), machine-readable reason and a detail."""

    line: int
    reason: str
    detail: str


def _row(raw: dict[str, Any], line: int) -> CatalogItem | RowError:
    pid = raw.get("product_id")
    if pid is None or (isinstance(pid, str) and not pid.strip()):
        return RowError(line, "missing_product_id", "product_id is required")
    if not isinstance(pid, str | int) or isinstance(pid, bool):
        return RowError(line, "bad_product_id", f"product_id must be a text, got {pid!r}"[:200])
    pid = str(pid).strip()
    if len(pid) > MAX_ID:
        return RowError(line, "too_long", f"product_id longer than {MAX_ID} characters")
    texts: dict[str, str | None] = {}
    for f in ("name", "category", "url"):
        v = raw.get(f)
        if v is None or v == "":
            texts[f] = None
        elif not isinstance(v, str):
            return RowError(line, f"bad_{f}", f"{f} must be a text, got {v!r}"[:200])
        elif len(v) > MAX_TEXT:
            return RowError(line, "too_long", f"{f} longer than {MAX_TEXT} characters")
        else:
            texts[f] = v
    price: float | None = None
    p = raw.get("price")
    if p is not None and p != "":
        try:
            price = float(p) if not isinstance(p, bool) else math.nan
        except (TypeError, ValueError):
            price = math.nan
        if not math.isfinite(price) or price < 0:
            return RowError(line, "bad_price", f"price must be a number >= 0, got {p!r}"[:200])
    s = raw.get("in_stock")
    in_stock = True
    if isinstance(s, bool):
        in_stock = s
    elif s is not None and s != "":
        t = str(s).strip().lower()
        if t in _TRUE:
            in_stock = True
        elif t in _FALSE:
            in_stock = False
        else:
            return RowError(
                line, "bad_in_stock", f"in_stock must be true or false, got {s!r}"[:200]
            )
    return CatalogItem(pid, texts["name"], texts["category"], price, in_stock, texts["url"])


def parse_lines(lines: Iterable[str], kind: str) -> tuple[list[CatalogItem], list[RowError]]:
    """Parse the lines of a ``jsonl`` or ``csv`` (with a header row) catalogue."""
    items: list[CatalogItem] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}

    def keep(got: CatalogItem | RowError, line: int) -> None:
        if isinstance(got, RowError):
            errors.append(got)
        elif got.product_id in seen:
            where = f"{got.product_id!r} is on line {seen[got.product_id]} too"
            errors.append(RowError(line, "duplicate_product_id", where))
        else:
            seen[got.product_id] = line
            items.append(got)

    if kind == "csv":
        rows = csv.reader(lines)
        header: list[str] | None = None
        for n, row in enumerate(rows, 1):
            if header is None:
                header = [h.strip().lower() for h in row]
                if "product_id" not in header:
                    errors.append(RowError(n, "no_header", "the first row must name the columns, "
                                           "product_id among them"))  # fmt: skip
                    return items, errors
                continue
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                errors.append(RowError(n, "bad_row", f"{len(row)} columns, the header has "
                                       f"{len(header)}"))  # fmt: skip
                continue
            keep(_row(dict(zip(header, row, strict=True)), n), n)
        return items, errors
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            errors.append(RowError(n, "invalid_json", str(e)[:200]))
            continue
        if not isinstance(doc, dict):
            errors.append(RowError(n, "not_an_object", "each line must be a JSON object"))
            continue
        keep(_row(doc, n), n)
    return items, errors


def parse_file(path: Path) -> tuple[list[CatalogItem], list[RowError]]:
    """Parse a catalogue file: CSV when its name ends in ``.csv``, else JSONL. Raises
    ``OSError`` / ``UnicodeDecodeError`` when it cannot be read."""
    kind = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    with path.open(encoding="utf-8", newline="" if kind == "csv" else None) as fh:
        return parse_lines(fh.read().splitlines(), kind)


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(CatalogItem)


def encode_item(item: CatalogItem) -> bytes:
    """An item as stored in the catalogue hash (JSON)."""
    return _encoder.encode(item)


def decode_item(raw: bytes | str) -> CatalogItem:
    """An item from the catalogue hash."""
    return _decoder.decode(raw)
