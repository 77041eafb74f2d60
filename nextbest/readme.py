"""``python -m nextbest.readme``: rewrite the README's generated tables from their declarations.

The configuration table comes from :data:`nextbest.settings.SPECS`, the windowed features and
series from :data:`features.registry.FEATURES`, the model inputs from
:data:`models.features.MODEL_INPUTS`; each sits between ``<!-- <marker>:start -->`` and
``<!-- <marker>:end -->``, and a test keeps each in sync.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from features.registry import feature_table
from models.features import input_table
from nextbest.settings import settings_table

#: The README of the repository.
README: Final = Path(__file__).resolve().parent.parent / "README.md"

#: Marker -> the function that writes its table.
TABLES: Final[dict[str, Callable[[], str]]] = {
    "settings-table": settings_table,
    "feature-table": feature_table,
    "model-inputs": input_table,
}


def update_readme(path: Path = README) -> list[str]:
    """Rewrite every generated table of the README; return the markers whose table changed."""
    text = path.read_text()
    changed = []
    for marker, table in TABLES.items():
        start, end = f"<!-- {marker}:start -->\n", f"<!-- {marker}:end -->"
        i, j = text.index(start) + len(start), text.index(end)
        new = text[:i] + table() + "\n" + text[j:]
        if new != text:
            changed.append(marker)
            text = new
    if changed:
        path.write_text(text)
    return changed


if __name__ == "__main__":
    print("updated:", ", ".join(update_readme()) or "nothing")
