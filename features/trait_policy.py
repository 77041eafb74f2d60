"""The trait merge policy from a YAML file (``NEXTBEST_TRAITS``; shipped: ``features/traits.yaml``).

The file::

    version: 1                      # optional
    traits:
      email: {priority: [crm]}      # the CRM owns email
      loyalty_tier: {priority: [loyalty, crm]}   # first listed = highest

A trait not listed: the latest event time wins (see :mod:`features.traits`). Every error stops
the load with a :class:`TraitConfigError` naming the file, the line and the field.

>>> p = parse_policy("traits:\\n  email: {priority: [crm, shop]}\\n", "t.yaml")
>>> p.priority["email"], p.rank("email", "shop"), p.rank("country", "crm")
(('crm', 'shop'), 1, 0)
>>> try:
...     parse_policy("traits:\\n  email: {priority: [crm]}\\n  Tier: {priority: [x]}\\n", "t.yaml")
... except TraitConfigError as e:
...     print(e)
t.yaml:3: field traits.Tier: a trait name matching [a-z][a-z0-9_]{0,39} is needed
>>> try:
...     parse_policy("traits:\\n  email: {priority: crm}\\n", "t.yaml")
... except TraitConfigError as e:
...     print(e.line, e.field)
2 traits.email.priority
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Final

from features.segments.config import YamlError, line_of, load_yaml
from features.traits import TraitPolicy
from schemas.traits import SOURCE_RE, TRAIT_NAME_RE

BUILTIN: Final = "traits.yaml"


class TraitConfigError(ValueError):
    """An invalid trait policy file: ``file``, ``line`` (or ``None``), ``field``."""

    def __init__(self, file: str, line: int | None, field: str | None, message: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        head = f"{where}: field {field}" if field else where
        super().__init__(f"{head}: {message}")
        self.file, self.line, self.field, self.message = file, line, field, message


def builtin_path() -> Path:
    """The shipped policy, ``features/traits.yaml``."""
    return Path(str(resources.files("features").joinpath(BUILTIN)))


def load_policy(path: str | Path | None = None) -> TraitPolicy:
    """Load and validate a policy file (``None``: the shipped one)."""
    p = builtin_path() if path is None else Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TraitConfigError(str(p), None, None, f"cannot read: {e}") from None
    return parse_policy(text, str(p))


def parse_policy(text: str, file: str = "<string>") -> TraitPolicy:
    """Validate the text of a policy file (see the module docstring)."""
    try:
        doc: Any = load_yaml(text)
    except YamlError as e:
        raise TraitConfigError(file, e.line, None, e.message) from None
    if doc is None:
        return TraitPolicy(source=file)
    if not isinstance(doc, dict):
        raise TraitConfigError(file, line_of(doc) or 1, None, "expected a mapping with 'traits'")
    for k in doc:
        if k not in ("version", "traits"):
            raise TraitConfigError(file, line_of(doc, k), str(k),
                                   "unknown field; known: version, traits")  # fmt: skip
    if doc.get("version", 1) != 1:
        raise TraitConfigError(file, line_of(doc, "version"), "version", "only version 1 is known")
    traits = doc.get("traits") or {}
    if not isinstance(traits, dict):
        raise TraitConfigError(file, line_of(doc, "traits"), "traits", "expected a mapping")
    out: dict[str, tuple[str, ...]] = {}
    for name, body in traits.items():
        fld = f"traits.{name}"
        line = line_of(traits, name)
        if not isinstance(name, str) or not TRAIT_NAME_RE.fullmatch(name):
            msg = f"a trait name matching {TRAIT_NAME_RE.pattern} is needed"
            raise TraitConfigError(file, line, fld, msg)
        if not isinstance(body, dict) or set(body) != {"priority"}:
            raise TraitConfigError(file, line, fld, "expected {priority: [source, ...]}")
        prio = body["priority"]
        pline = line_of(body, "priority") or line
        if not isinstance(prio, list) or not prio:
            raise TraitConfigError(file, pline, f"{fld}.priority",
                                   "expected a non-empty list of sources")  # fmt: skip
        for i, src in enumerate(prio):
            if not isinstance(src, str) or not SOURCE_RE.fullmatch(src):
                raise TraitConfigError(file, line_of(prio, i) or pline, f"{fld}.priority[{i}]",
                                       f"a source matching {SOURCE_RE.pattern} is needed, "
                                       f"got {src!r}")  # fmt: skip
        if len(set(prio)) != len(prio):
            raise TraitConfigError(file, pline, f"{fld}.priority", "a source is listed twice")
        out[name] = tuple(prio)
    return TraitPolicy(out, source=file)
