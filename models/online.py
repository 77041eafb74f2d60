"""Online binary models: progressive validation, rolling metrics, drift, prior, checkpoints.

One :class:`OnlineModel` per target (``churn``, ``propensity``), owned by one dataflow step so
parallel workers never fork it. Each labelled :class:`models.labels.Example` is first *scored*
by the current model, then *learned* (progressive validation): the metrics are those of a model
that never saw the example. Until ``min_examples`` examples are learned, with at least a tenth of
that of each label (:attr:`OnlineModel.ready`), :meth:`OnlineModel.predict` answers with the
target's prior (:mod:`models.prior`) and says ``"prior"``.

Pipelines (:func:`make_pipeline`):

* ``logreg`` (default): ``preprocessing.StandardScaler() | compose.FuncTransformer(clip_z) |
  linear_model.LogisticRegression`` with SGD (learning rate 0.01, intercept learning rate 0.01)
  and L2 ``1e-4``. :func:`clip_z` bounds every standardised value to ``[-5, 5]``, so a feature
  seen far outside its training range (a rare count, a long absence) moves a score by a bounded
  amount instead of saturating it. (On the simulator, 5,000 customers x 365 days, a 0.005-0.02
  range of learning rates gave churn AUC 0.972-0.975 and propensity 0.970-0.974.)
* ``hat``: ``tree.HoeffdingAdaptiveTreeClassifier(seed=seed)``;
* ``arf``: ``forest.ARFClassifier(n_models=10, seed=seed)``.

Metrics (rolling ROC AUC, log loss, Brier score, counts, history) and the drift detector are
kept by :class:`models.quality.ModelQuality`, which :class:`OnlineModel` extends.

Checkpoints (:meth:`OnlineModel.to_checkpoint`) are bytes::

    b"NBMODEL1" | u32 big-endian length | JSON metadata | pickle of the model

The metadata (``format``, ``target``, ``pipeline``, ``version``, ``created_at_ms``,
``examples_seen``, ``metrics`` (:meth:`OnlineModel.metrics_snapshot`), ``river_version``,
``payload_sha256``, ...) can be read without unpickling (:func:`checkpoint_meta`).
:meth:`OnlineModel.from_checkpoint` checks the magic, the format version and the payload's
SHA-256, and unpickles with an allow-list of globals (River, this package, a few standard
containers); any problem raises :class:`CheckpointError`. The store must still be trusted: the
allow-list narrows what tampered bytes can do, it is no sandbox.

Determinism: with a fixed seed, the same examples give byte-identical checkpoints, also in
another process (any ``PYTHONHASHSEED``) and also when the model was pickled and restored (a
Bytewax snapshot) in between. For that the payload is a canonical pickle (see
:func:`_canonical_pickle`) and the unused, OS-seeded generators that River's tree splitters
create are left out (they are also left out of plain pickles: a Bytewax snapshot of an ``arf``
model stays small). ``to_checkpoint`` takes ``now_ms`` from the caller: pass event time (the
watermark) for reproducible bytes.

Examples
--------
>>> from models.labels import Example
>>> m = OnlineModel("propensity", min_examples=2)
>>> m.predict({"log_purchases_total": 1.0})[1]
'prior'
>>> for i in range(4):
...     _ = m.learn(Example("propensity", "c:1", i, i, {"x": float(i % 2)}, i % 2))
>>> p, source = m.predict({"x": 1.0})
>>> source, 0.0 < p < 1.0
('model', True)
>>> m.metrics_snapshot()["examples_seen"], m.metrics_snapshot()["positives"]
(4, 2)
>>> data = m.to_checkpoint(version=3, now_ms=1_767_225_600_000)
>>> checkpoint_meta(data)["version"], OnlineModel.from_checkpoint(data).examples_seen
(3, 4)

The checkpoint codec is in :mod:`models.checkpoint`, the pipelines in :mod:`models.pipelines`;
``clip_z`` and ``_unseeded`` are imported here because pickles (snapshots, checkpoints) name them
``models.online.<name>``.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import deque
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from typing import Any, Final

import msgspec
from river import drift

from models.checkpoint import (
    _STATE_KEYS,
    FORMAT_VERSION,
    MAGIC,
    CheckpointError,
    _canonical_pickle,
    _dumps,
    _loads,
    _split,
    checkpoint_meta,
)
from models.checkpoint import _unseeded as _unseeded
from models.labels import Example
from models.pipelines import PIPELINES, make_pipeline
from models.pipelines import clip_z as clip_z
from models.quality import _HISTORY_KEYS, HISTORY_LEN, ModelQuality
from models.targets import prior_of

__all__ = [
    "PIPELINES",
    "CheckpointError",
    "OnlineModel",
    "checkpoint_meta",
    "make_pipeline",
]


def _river_version() -> str:
    try:
        return _pkg_version("river")
    except PackageNotFoundError:  # pragma: no cover - river is a dependency
        return "unknown"


RIVER_VERSION: Final = _river_version()


def _proba_true(proba: Mapping[Any, float] | None) -> float:
    """P(label 1) from River's ``predict_proba_one`` output (0.5 when it knows nothing)."""
    if not proba:
        return 0.5
    p = proba.get(True)
    if p is None:
        p = proba.get(1, 0.0)
    p = float(p)
    if math.isnan(p):
        return 0.5
    return min(1.0, max(0.0, p))


class OnlineModel(ModelQuality):
    """One target's online model with its metrics; pickles (see the module docstring).

    Parameters
    ----------
    target
        ``churn``, ``propensity``, or another target (whose prior is then 0.5).
    pipeline
        A :data:`PIPELINES` name.
    seed
        Seed of the pipeline.
    min_examples
        Learned examples before :meth:`predict` uses the model instead of the prior.
    window
        Size of the rolling metrics window.
    history_every
        A metrics snapshot is kept every this many examples.
    drift_delta
        ADWIN's significance.
    """

    def __init__(
        self,
        target: str,
        pipeline: str = "logreg",
        seed: int = 42,
        min_examples: int = 500,
        window: int = 1000,
        history_every: int = 500,
        drift_delta: float = 0.002,
    ) -> None:
        if window < 1 or history_every < 1:
            raise ValueError("window and history_every must be >= 1")
        self.target = target
        self.pipeline = pipeline
        self.seed = seed
        self.min_examples = min_examples
        self.window = window
        self.history_every = history_every
        self.estimator: Any = make_pipeline(pipeline, seed, target)
        self.examples_seen = 0
        self.positives = 0
        self.negatives = 0
        self.last_label_ts: int | None = None
        self.version = 0
        self.created_at_ms: int | None = None
        self._recent: deque[tuple[int, float]] = deque(maxlen=window)
        self._detector: Any = drift.ADWIN(delta=drift_delta)  # type: ignore[no-untyped-call]
        self.drifts = 0
        self.drift_events: deque[tuple[int, int]] = deque(maxlen=HISTORY_LEN)
        # the open label day of the drift detector and its (order key, error) pairs
        self._error_day: int | None = None
        self._day_errors: list[tuple[int, int, float]] = []
        # metric snapshots as tuples of values in _HISTORY_KEYS order (no per-entry string keys:
        # equal models pickle to equal bytes whether or not they were restored in between)
        self.history: deque[tuple[Any, ...]] = deque(maxlen=HISTORY_LEN)

    # The estimator is pickled as nested bytes by :class:`_Pickler` (without the unused generator
    # states River's tree splitters carry) and read back with the restricted unpickler, both in
    # Bytewax snapshots (plain ``pickle``) and in checkpoints.
    def _state(self, estimator: bytes) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["estimator"] = estimator
        return state

    def __getstate__(self) -> dict[str, Any]:
        return self._state(_dumps(self.estimator))

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)  # (attribute order kept: it shows in the pickle bytes)
        estimator = state["estimator"]
        state["estimator"] = _loads(estimator) if isinstance(estimator, bytes) else estimator
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"OnlineModel(target={self.target!r}, pipeline={self.pipeline!r}, "
            f"version={self.version}, examples_seen={self.examples_seen})"
        )

    # ----------------------------------------------------------------------------------------
    # learning and scoring

    def score(self, features: Mapping[str, float]) -> float:
        """The model's probability of label 1, whatever ``min_examples`` (no prior)."""
        return _proba_true(self.estimator.predict_proba_one(dict(features)))

    def learn(self, example: Example) -> float:
        """Score an example with the current model, update the metrics, then learn it.

        Parameters
        ----------
        example
            A labelled example of this model's target.

        Returns
        -------
        float
            The probability the model gave the example *before* learning it.

        Raises
        ------
        ValueError
            When the example is for another target or its label is not 0/1.
        """
        if example.target != self.target:
            raise ValueError(f"example for {example.target!r} given to the {self.target!r} model")
        if example.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {example.label!r}")
        y = int(example.label)
        x = dict(example.features)
        p = _proba_true(self.estimator.predict_proba_one(x))
        self.estimator.learn_one(x, bool(y))
        self.examples_seen += 1
        if y:
            self.positives += 1
        else:
            self.negatives += 1
        self.last_label_ts = example.label_ts
        self._recent.append((y, p))
        self._track_error(abs(y - p), example)
        if self.examples_seen % self.history_every == 0:
            m = self._metrics()
            self.history.append(tuple(m[k] for k in _HISTORY_KEYS))
        return p

    def predict(self, features: Mapping[str, float]) -> tuple[float, str]:
        """``(probability, source)``: the model's after ``min_examples`` examples, else the prior.

        Examples
        --------
        >>> OnlineModel("churn").predict({"never_purchased": 1.0})
        (0.9616577673272618, 'prior')
        """
        if self.ready:
            return self.score(features), "model"
        return prior_of(self.target)(features), "prior"

    @property
    def ready(self) -> bool:
        """Whether :meth:`predict` uses the model: ``min_examples`` learned, and of each label
        at least a tenth of that (at least 1). A model that has seen one label only (a history
        shorter than the churn horizon has no churned customer yet) would answer ~0 or ~1 for
        everyone.

        >>> from models.labels import Example
        >>> m = OnlineModel("churn", min_examples=20)
        >>> for i in range(30):
        ...     _ = m.learn(Example("churn", "c:1", i, i, {"x": 1.0}, 0))
        >>> m.ready, m.predict({"never_purchased": 0.0})[1]
        (False, 'prior')
        >>> for i in range(2):
        ...     _ = m.learn(Example("churn", "c:1", i, i, {"x": 0.0}, 1))
        >>> m.ready, m.predict({"x": 1.0})[1]
        (True, 'model')
        """
        need = max(1, self.min_examples // 10)
        return (
            self.examples_seen >= self.min_examples
            and self.positives >= need
            and self.negatives >= need
        )

    # ----------------------------------------------------------------------------------------
    # metrics

    def metrics_snapshot(self) -> dict[str, Any]:
        """The model's state for ``GET /v1/models`` and the Prometheus gauges.

        Returns
        -------
        dict[str, Any]
            ``target``, ``pipeline``, ``version``, ``source`` (what :meth:`predict` uses now),
            ``min_examples``, ``examples_seen``, ``positives``, ``negatives``, ``label_ts``
            (event time of the newest label), ``window`` (examples in the rolling window),
            ``roc_auc`` (``None`` until both labels are in the window), ``log_loss``, ``brier``
            (``None`` before any example), ``drifts``, ``drift_events`` (the last 50
            ``[examples_seen, label_ts]``) and ``history`` (the last 50 snapshots, one every
            ``history_every`` examples, each with the keys from ``examples_seen`` to ``drifts``).
            JSON-serialisable.
        """
        m = self._metrics()
        return {
            "target": self.target,
            "pipeline": self.pipeline,
            "version": self.version,
            "source": "model" if self.ready else "prior",
            "min_examples": self.min_examples,
            **m,
            "drift_events": [list(e) for e in self.drift_events],
            "history": [dict(zip(_HISTORY_KEYS, h, strict=True)) for h in self.history],
        }

    # ----------------------------------------------------------------------------------------
    # checkpoints

    def to_checkpoint(self, version: int, now_ms: int) -> bytes:
        """Serialise the model with its metadata (see the module docstring for the layout).

        Sets :attr:`version` and :attr:`created_at_ms` first (they are part of the model).

        Parameters
        ----------
        version
            The checkpoint's version (the caller numbers them, e.g. 1, 2, ...).
        now_ms
            Creation time recorded in the metadata (pass event time for reproducible bytes).
        """
        self.version = int(version)
        self.created_at_ms = int(now_ms)
        payload = _canonical_pickle(self._state(_canonical_pickle(self.estimator)))
        meta = {
            "format": FORMAT_VERSION,
            "target": self.target,
            "pipeline": self.pipeline,
            "seed": self.seed,
            "version": self.version,
            "created_at_ms": self.created_at_ms,
            "examples_seen": self.examples_seen,
            "min_examples": self.min_examples,
            "metrics": self.metrics_snapshot(),
            "river_version": RIVER_VERSION,
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }
        head = msgspec.json.encode(meta, order="sorted")
        return MAGIC + struct.pack(">I", len(head)) + head + payload

    @classmethod
    def from_checkpoint(cls, data: bytes) -> OnlineModel:
        """Load a model written by :meth:`to_checkpoint`.

        Raises
        ------
        CheckpointError
            When the bytes are not a checkpoint, are truncated or corrupt, are of another format
            version, or hold something else than an :class:`OnlineModel`.

        Examples
        --------
        >>> OnlineModel.from_checkpoint(b"garbage")
        Traceback (most recent call last):
        ...
        models.checkpoint.CheckpointError: not a model checkpoint (bad magic)
        """
        meta, payload = _split(data)
        if hashlib.sha256(payload).hexdigest() != meta.get("payload_sha256"):
            raise CheckpointError("corrupt checkpoint: payload checksum mismatch")
        try:
            state = _loads(payload)
            if not isinstance(state, dict) or not state.keys() >= _STATE_KEYS:
                raise CheckpointError("checkpoint payload is not an OnlineModel state")
            model = cls.__new__(cls)
            model.__setstate__(state)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"cannot unpickle the model (written with river {meta.get('river_version')}, "
                f"running {RIVER_VERSION}): {type(exc).__name__}: {exc}"
            ) from exc
        return model
