"""The product catalogue in a serving process's memory, by version: answers read the version in
their first Redis round trip and use the catalogue held; a new version is loaded in the
background, outside any answer's Redis budget (:mod:`serving.reco`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from features.catalog import CatalogItem, decode_item
from features.store import CATALOG_KEY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Catalogue:
    """One version of the loaded catalogue."""

    version: bytes | None
    items: dict[str, CatalogItem]
    unavailable: frozenset[str]


@dataclass
class CatalogCache:
    """The loaded catalogue in memory, by version. Answers read the version; a new one is
    loaded in the background (:meth:`notice`), outside any answer's Redis budget, and answers
    use the one held meanwhile."""

    #: the catalogue held, replaced whole: an answer that took it uses one version throughout
    held: Catalogue = field(default_factory=lambda: Catalogue(None, {}, frozenset()))
    _loading: asyncio.Task[None] | None = None

    @property
    def version(self) -> bytes | None:
        """The version held."""
        return self.held.version

    def notice(self, client: aioredis.Redis, version: Any) -> None:
        """Start loading the catalogue of ``version`` unless it is held or being loaded."""
        if version == self.version or self._loading is not None:
            return
        self._loading = asyncio.get_running_loop().create_task(self._load(client, version))

    async def _load(self, client: aioredis.Redis, version: Any) -> None:
        try:
            await self.refresh(client, version)
        except (RedisError, OSError) as exc:
            log.warning("catalogue version %r not loaded: %s", version, exc)
        finally:
            self._loading = None

    async def refresh(self, client: aioredis.Redis, version: Any) -> None:
        """Read the catalogue again if ``version`` (as just read) is not the one held."""
        if version == self.version:
            return
        raw = await client.hgetall(CATALOG_KEY) if version is not None else {}
        items: dict[str, CatalogItem] = {}
        for v in raw.values():
            try:
                item = decode_item(v)
            except Exception:  # a hand-written field must not break answers
                continue
            items[item.product_id] = item
        self.held = Catalogue(
            version, items, frozenset(p for p, i in items.items() if not i.in_stock)
        )
