"""Model scores for profiles: the latest checkpoints, their fallbacks, and the prior.

The dataflow publishes each target's checkpoint to Redis (``nb:{model:<target>}:checkpoint``,
keeping the previous one at ``...:previous`` and the version at ``...:version``). Readers load the
latest; when it is missing or corrupt they fall back to the previous one, and without either they
score with the documented prior (``"source": "prior"``) and say why in ``status``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

import redis
import redis.asyncio as aioredis

from features.document import profile_document
from features.profile import ProfileView
from features.rfm import RfmBoundaries
from features.store import model_keys
from models.features import features_from_document
from models.labels import TARGETS
from models.online import CheckpointError, OnlineModel, checkpoint_meta
from models.targets import prior_of
from schemas.events import format_ts

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """One target's model as loaded by a reader."""

    target: str
    model: OnlineModel | None = None
    version: int | None = None
    status: str = "no checkpoint yet: scoring with the prior"
    meta: dict[str, Any] = field(default_factory=dict)
    #: A checkpoint was published but none could be loaded (not the cold start's prior).
    unusable: bool = False


def _bytes(v: Any) -> bytes | None:
    return v.encode() if isinstance(v, str) else v  # type: ignore[no-any-return]


def _decode(current: Any, previous: Any, target: str) -> LoadedModel:
    """Load the current checkpoint, else the previous one, else nothing (the prior)."""
    problems: list[str] = []
    for label, data in (("latest", _bytes(current)), ("previous", _bytes(previous))):
        if not data:
            continue
        try:
            model = OnlineModel.from_checkpoint(data)
            meta = checkpoint_meta(data)
        except CheckpointError as exc:
            problems.append(f"{label} checkpoint unusable ({exc})")
            log.warning("model %s: %s checkpoint unusable: %s", target, label, exc)
            continue
        status = (
            "loaded latest checkpoint"
            if label == "latest"
            else "; ".join([*problems, "fell back to the previous checkpoint"])
        )
        return LoadedModel(target, model, int(meta.get("version", 0)), status, meta)
    status = "; ".join([*problems, "scoring with the prior"]) if problems else LoadedModel.status
    return LoadedModel(target, status=status, unusable=bool(problems))


def segments_field(segments: Mapping[str, int]) -> dict[str, dict[str, str]]:
    """The profile document's ``segments``: each membership with ``since`` (RFC 3339).

    >>> segments_field({"lapsed_30d": 1_767_225_600_000})
    {'lapsed_30d': {'since': '2026-01-01T00:00:00Z'}}
    """
    return {name: {"since": format_ts(since)} for name, since in sorted(segments.items())}


class ModelSet:
    """The loaded models of every target; reload when the published version changes.

    ``actions``: the action models' targets (``action:<id>``) to load too (``actions``
    attribute), for next best action's propensities (:meth:`propensity`).
    """

    def __init__(self, actions: tuple[str, ...] = ()) -> None:
        self.models: dict[str, LoadedModel] = {t: LoadedModel(t) for t in TARGETS}
        self.actions: dict[str, LoadedModel] = {t: LoadedModel(t) for t in actions}
        self._seen: dict[str, bytes | None] = {t: None for t in (*TARGETS, *actions)}

    def _loaded(self, target: str) -> LoadedModel:
        return self.models[target] if target in self.models else self.actions[target]

    def _store(self, lm: LoadedModel) -> None:
        (self.models if lm.target in self.models else self.actions)[lm.target] = lm

    def unusable_actions(self, ids: tuple[str, ...]) -> list[str]:
        """The actions among ``ids`` whose model was published but cannot be loaded."""
        return [a for a in ids if (lm := self.actions.get("action:" + a)) and lm.unusable]

    def propensity(self, action: Any, features: Mapping[str, float]) -> Any:
        """P(conversion | profile, action) (a :class:`decisions.policy.Propensity`): the action
        model's when it is loaded and ready, else the action's configured prior."""
        from decisions.policy import Propensity
        from models.pipelines import contributions

        lm = self.actions.get("action:" + action.id)
        if lm is None or lm.model is None or not lm.model.ready:
            return Propensity(action.prior, "prior")
        m = lm.model
        return Propensity(m.score(features), "model", lm.version,
                          contributions(m.estimator, dict(features)))  # fmt: skip

    def _changed(self, target: str, version: Any) -> bool:
        v = _bytes(version)
        if v is not None and v == self._seen[target]:
            return False
        self._seen[target] = v
        return True

    def refresh(self, client: redis.Redis) -> None:
        """Load new checkpoints (sync: the CLI)."""
        for t in self._seen:
            cur, prev, ver = model_keys(t)
            if self._changed(t, client.get(ver)) or self._loaded(t).model is None:
                self._store(_decode(client.get(cur), client.get(prev), t))

    async def arefresh(self, client: aioredis.Redis) -> None:
        """Load new checkpoints (async: serving, polled in the background): every version in
        one round trip, then the changed checkpoints."""
        targets = list(self._seen)
        pipe = client.pipeline(transaction=False)
        for t in targets:
            pipe.get(model_keys(t)[2])
        versions = await pipe.execute()
        for t, ver in zip(targets, versions, strict=True):
            if ver is None and self._loaded(t).model is None:
                continue  # nothing published (yet)
            cur, prev, _ = model_keys(t)
            if self._changed(t, ver) or self._loaded(t).model is None:
                self._store(_decode(await client.get(cur), await client.get(prev), t))

    def scores(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Scores for a rendered profile document (features as of its ``as_of``)."""
        feats = features_from_document(doc)
        out: dict[str, Any] = {}
        for t, lm in self.models.items():
            if lm.model is not None:
                p, source = lm.model.predict(feats)
            else:
                p, source = prior_of(t)(feats), "prior"
            out[t] = {"probability": round(p, 6), "source": source, "model_version": lm.version}
        return out

    def document(
        self,
        v: ProfileView,
        as_of_ms: int,
        bounds: RfmBoundaries | None,
        resolved_from: str | None = None,
        segments: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """The public profile document with its ``scores``: what every reader returns.

        With ``segments`` (the stored memberships, segment -> since in ms), the document
        carries ``"segments": {name: {"since": RFC 3339}}``: the memberships as the dataflow
        last evaluated them (not recomputed at ``as_of``).
        """
        doc = profile_document(v, as_of_ms, bounds, resolved_from)
        doc["scores"] = {**self.scores(doc), **btyd_scores(v, as_of_ms, bounds)}
        if segments is not None:
            doc["segments"] = segments_field(segments)
        return doc

    def describe(self) -> list[dict[str, Any]]:
        """What ``GET /v1/models`` lists."""
        rows = []
        for t, lm in (*self.models.items(), *self.actions.items()):
            metrics = dict(lm.meta.get("metrics", {}))
            rows.append(
                {
                    "model": t,
                    "version": lm.version,
                    "status": lm.status,
                    "pipeline": lm.meta.get("pipeline"),
                    "created_at_ms": lm.meta.get("created_at_ms"),
                    "examples_seen": metrics.get("examples_seen", 0),
                    "positives": metrics.get("positives", 0),
                    "negatives": metrics.get("negatives", 0),
                    "metrics": {k: metrics.get(k) for k in ("roc_auc", "log_loss", "brier")},
                    "drifts": metrics.get("drifts", 0),
                    "history": metrics.get("history", []),
                }
            )
        return rows


#: The horizon of ``scores.expected_purchases_90d``.
EXPECTED_PURCHASES_DAYS: Final = 90


def btyd_scores(v: ProfileView, as_of_ms: int, bounds: RfmBoundaries | None) -> dict[str, Any]:
    """``p_alive`` and ``expected_purchases_90d`` of the buy-till-you-die model (BG/NBD,
    :mod:`models.btyd`) with the population parameters the dataflow published with the RFM
    boundaries; ``source`` ``"btyd"``, or ``"none"`` (null values) without parameters or without
    a purchase. ``model_version`` is the day (UTC, ``YYYY-MM-DD``) the parameters are as of.

    >>> from features.profile import ProfileView
    >>> b = RfmBoundaries((1, 2, 3, 4), (1, 2, 3, 4), (1.0, 2.0, 3.0, 4.0), 100, 0,
    ...                   btyd=(0.5, 60.0, 1.0, 1.4), btyd_day=20_000)
    >>> v = ProfileView(key="c:1", first_seen_ts=0, last_seen_ts=0, last_purchase_ts=0,
    ...                 events_total=1, purchases_total=1)
    >>> s = btyd_scores(v, 30 * 86_400_000, b)
    >>> s["p_alive"]["probability"], s["p_alive"]["source"], s["p_alive"]["model_version"]
    (1.0, 'btyd', '2024-10-04')
    >>> 0 < s["expected_purchases_90d"]["value"] < 5
    True
    >>> btyd_scores(v, 0, None)["p_alive"]
    {'probability': None, 'source': 'none', 'model_version': None}
    """
    from models import btyd
    from models.btyd_histories import history_of

    params = None if bounds is None or bounds.btyd is None else btyd.BgNbdParams(*bounds.btyd)
    hist = history_of(v.purchases_total, v.first_seen_ts, v.last_purchase_ts, as_of_ms)
    if params is None or hist is None:
        none = {"source": "none", "model_version": None}
        return {"p_alive": {"probability": None, **none},
                "expected_purchases_90d": {"value": None, **none}}  # fmt: skip
    day = bounds.btyd_day if bounds is not None else None
    version = None if day is None else str(date.fromordinal(date(1970, 1, 1).toordinal() + day))
    x, t_x, age = hist
    return {
        "p_alive": {
            "probability": round(btyd.p_alive(params, x, t_x, age), 6),
            "source": "btyd",
            "model_version": version,
        },
        "expected_purchases_90d": {
            "value": round(
                btyd.expected_purchases(params, float(EXPECTED_PURCHASES_DAYS), x, t_x, age), 6
            ),
            "source": "btyd",
            "model_version": version,
        },
    }
