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

Metrics: over a rolling window of the last ``window`` (default 1000) scored examples, the exact
ROC AUC, log loss and Brier score (:mod:`models.evaluation`), plus cumulative counts (examples,
positives, negatives). The absolute error ``|y - p|`` of each scored example feeds an ADWIN
drift detector, a label day at a time: the errors of the examples whose ``label_ts`` falls in a
UTC day are given, in customer order (key, snapshot time), when the first label of a later day
arrives. (Labels come in bursts within a day: purchases resolve positives as they happen, the
horizon matures negatives at day ticks; in arrival order ADWIN saw that mix as hundreds of
"drifts" a year.) A day in which ADWIN detects a *rise* of the mean error (it also flags drops,
e.g. while the model learns: those are ignored) increments ``drifts``, is logged, and is recorded
as ``(examples_seen, label_ts)`` of the example that closed the day (the last 50 are kept).
Every ``history_every`` examples a metrics snapshot is appended to a history of the last 50.

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
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import pickle
import pickletools
import random
import struct
from collections import deque
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from typing import Any, Final

import msgspec
import numpy as np
from river import compose, drift, forest, linear_model, optim, preprocessing, tree
from river.proba.base import Distribution

from models.evaluation import brier, log_loss, roc_auc
from models.labels import DAY_MS as _DAY_MS
from models.labels import Example
from models.targets import prior_of

__all__ = [
    "PIPELINES",
    "CheckpointError",
    "OnlineModel",
    "checkpoint_meta",
    "make_pipeline",
]

log = logging.getLogger(__name__)

#: Selectable pipelines (settings value -> description).
PIPELINES: Final = {
    "logreg": "StandardScaler | LogisticRegression (SGD 0.02, L2 1e-4)",
    "hat": "HoeffdingAdaptiveTreeClassifier",
    "arf": "ARFClassifier (10 trees)",
}
#: Magic prefix of a checkpoint.
MAGIC: Final = b"NBMODEL1"
#: Version of the checkpoint layout and of the pickled :class:`OnlineModel` attributes.
FORMAT_VERSION: Final = 1
PICKLE_PROTOCOL: Final = 5
#: Kept entries of the metric history and of the drift events.
HISTORY_LEN: Final = 50
#: Probabilities are clipped to this for the metrics (a finite log loss).
_EPS: Final = 1e-7


#: Keys of a metric snapshot (and of each history entry).
_HISTORY_KEYS: Final = (
    "examples_seen",
    "positives",
    "negatives",
    "label_ts",
    "window",
    "roc_auc",
    "log_loss",
    "brier",
    "drifts",
)


def _river_version() -> str:
    try:
        return _pkg_version("river")
    except PackageNotFoundError:  # pragma: no cover - river is a dependency
        return "unknown"


RIVER_VERSION: Final = _river_version()


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: corrupt, truncated, or of an incompatible format."""


#: Bound of a standardised feature value in the ``logreg`` pipeline.
Z_CLIP: Final = 5.0


def clip_z(x: dict[str, float]) -> dict[str, float]:
    """Standardised features clipped to ``[-Z_CLIP, Z_CLIP]`` (a pipeline step; picklable).

    >>> clip_z({"a": 7.5, "b": -0.5, "c": -12.0})
    {'a': 5.0, 'b': -0.5, 'c': -5.0}
    """
    return {k: Z_CLIP if v > Z_CLIP else -Z_CLIP if v < -Z_CLIP else v for k, v in x.items()}


def make_pipeline(name: str, seed: int = 42) -> Any:
    """A fresh River estimator for a pipeline name.

    Parameters
    ----------
    name
        ``logreg``, ``hat`` or ``arf`` (see the module docstring).
    seed
        Seed of the randomised pipelines (``hat``, ``arf``); ``logreg`` is deterministic.

    Raises
    ------
    ValueError
        For an unknown name (the message names it and the known ones).

    Examples
    --------
    >>> [type(step).__name__ for step in make_pipeline("logreg").steps.values()]
    ['StandardScaler', 'FuncTransformer', 'LogisticRegression']
    >>> type(make_pipeline("arf", seed=7)).__name__
    'ARFClassifier'
    >>> make_pipeline("svm")
    Traceback (most recent call last):
    ...
    ValueError: unknown model pipeline 'svm'; expected one of: logreg, hat, arf
    """
    if name == "logreg":
        return compose.Pipeline(
            preprocessing.StandardScaler(),
            compose.FuncTransformer(clip_z),
            linear_model.LogisticRegression(optimizer=optim.SGD(0.01), l2=1e-4, intercept_lr=0.01),
        )
    if name == "hat":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
    if name == "arf":
        return forest.ARFClassifier(n_models=10, seed=seed)
    raise ValueError(f"unknown model pipeline {name!r}; expected one of: {', '.join(PIPELINES)}")


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


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


class OnlineModel:
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
        self.estimator: Any = make_pipeline(pipeline, seed)
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
        self._day_errors: list[tuple[str, int, float]] = []
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

    def _track_error(self, error: float, example: Example) -> None:
        """Keep an error with its label day; a later day feeds the open one to the detector."""
        day = example.label_ts // _DAY_MS
        if self._error_day is not None and day > self._error_day:
            self._close_error_day(example.label_ts)
        if self._error_day is None or day > self._error_day:
            self._error_day = day
        # (a label of an earlier day than the open one joins the open day)
        self._day_errors.append((example.key, example.snapshot_ts, error))

    def _close_error_day(self, label_ts: int) -> None:
        detector = self._detector
        drifted = False
        # in customer order, not arrival order: positives and negatives mixed as they are
        for _key, _ts, error in sorted(self._day_errors):
            before = detector.estimation
            detector.update(error)
            # ADWIN flags any change of the mean error; a drop (the model got better, as it does
            # while it learns) is not a drift worth an alarm
            drifted |= bool(detector.drift_detected and detector.estimation > before)
        self._day_errors = []
        if drifted:
            self.drifts += 1
            self.drift_events.append((self.examples_seen, label_ts))
            log.info(
                "drift detected: model=%s pipeline=%s examples_seen=%d label_ts=%d",
                self.target,
                self.pipeline,
                self.examples_seen,
                label_ts,
            )

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

    def _metrics(self) -> dict[str, Any]:
        auc = ll = bs = None
        if self._recent:
            arr = np.asarray(self._recent, dtype=np.float64)
            y, p = arr[:, 0], np.clip(arr[:, 1], _EPS, 1.0 - _EPS)
            if 0 < y.sum() < y.size:
                auc = roc_auc(y, p)
            ll = log_loss(y, p)
            bs = brier(y, p)
        return {
            "examples_seen": self.examples_seen,
            "positives": self.positives,
            "negatives": self.negatives,
            "label_ts": self.last_label_ts,
            "window": len(self._recent),
            "roc_auc": _round(auc),
            "log_loss": _round(ll),
            "brier": _round(bs),
            "drifts": self.drifts,
        }

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
        models.online.CheckpointError: not a model checkpoint (bad magic)
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


#: Attributes a checkpoint's state must have.
_STATE_KEYS: Final = frozenset(
    {"target", "pipeline", "estimator", "examples_seen", "_recent", "_detector", "history"}
)


def _unseeded(cls: Any, state: dict[str, Any]) -> Any:
    """Rebuild an unseeded River distribution (its generator freshly seeded, as River does)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    obj._rng = random.Random(None)
    return obj


class _Pickler(pickle.Pickler):
    """Leaves out the generators of unseeded River distributions.

    River's tree splitters create ``proba.Gaussian()`` with ``seed=None``, whose
    ``random.Random`` is seeded from the OS and never used by the model; pickling its state
    would make otherwise identical checkpoints differ.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Distribution) and getattr(obj, "seed", 0) is None:
            state = {k: v for k, v in vars(obj).items() if k != "_rng"}
            return _unseeded, (type(obj), state)
        return NotImplemented


def _loads(data: bytes) -> Any:
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=PICKLE_PROTOCOL).dump(obj)
    return buf.getvalue()


_STR_OPS: Final = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})


def _int(arg: object) -> int:
    assert isinstance(arg, int)
    return arg


def _canonical_pickle(obj: Any) -> bytes:
    """Pickle bytes that depend only on the values and the sharing of mutable objects.

    Pickle memoises by identity, so whether two equal strings are one object (say a feature
    name that came from one example or another, or a dict key that is also a class's name)
    shows in the bytes: a model restored from a snapshot and trained on would write other bytes
    than the same model never pickled. So the stream is rewritten: every string after the first
    of its value becomes a reference to the first, unused memo entries are dropped, and the rest
    is renumbered (protocol 5, without frames, which are optional).
    """
    raw = _dumps(obj)
    ops = list(pickletools.genops(raw))
    first: dict[str, int] = {}  # string value -> memo id of its first occurrence
    alias: dict[int, int] = {}  # memo id of a repeated string -> memo id of the first
    used: set[int] = set()
    memo_ids: set[int] = set()
    items: list[tuple[int, int | bytes]] = []  # (0, raw op) | (1, put memo id) | (2, get memo id)
    pushed: tuple[str, int | None] | None = None  # the string just pushed, its first's memo id
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(raw)
        name = op.name
        if name in _STR_OPS:
            value = str(arg)
            dup = first.get(value)
            if dup is None:
                items.append((0, raw[pos:end]))
            else:
                used.add(dup)
                items.append((2, dup))
            pushed = (value, dup)
            continue
        if name == "MEMOIZE" or name.endswith("PUT"):
            oid = len(memo_ids) if name == "MEMOIZE" else _int(arg)
            memo_ids.add(oid)
            if pushed is not None and pushed[1] is not None:
                alias[oid] = pushed[1]  # the repeated string is not memoised again
            else:
                if pushed is not None:
                    first[pushed[0]] = oid
                items.append((1, oid))
        elif name.endswith("GET"):
            target = alias.get(_int(arg), _int(arg))
            used.add(target)
            items.append((2, target))
        elif name == "FRAME" or (name == "PROTO" and pos == 0):
            continue  # (re-written below; does not separate a string from its MEMOIZE)
        else:
            items.append((0, raw[pos:end]))
        pushed = None
    out = [b"\x80\x05"]
    new_id: dict[int, int] = {}
    for kind, val in items:
        if kind == 0:
            assert isinstance(val, bytes)
            out.append(val)
        elif kind == 1:
            assert isinstance(val, int)
            if val in used:
                new_id[val] = len(new_id)
                out.append(b"\x94")  # MEMOIZE
        else:
            assert isinstance(val, int)
            n = new_id[val]
            out.append(b"h" + bytes((n,)) if n < 256 else b"j" + struct.pack("<I", n))
    return b"".join(out)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CheckpointError(f"a checkpoint is bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(MAGIC):
        raise CheckpointError("not a model checkpoint (bad magic)")
    start = len(MAGIC) + 4
    if len(data) < start:
        raise CheckpointError("truncated checkpoint")
    (n,) = struct.unpack(">I", data[len(MAGIC) : start])
    if len(data) < start + n:
        raise CheckpointError("truncated checkpoint")
    try:
        meta = msgspec.json.decode(data[start : start + n])
    except msgspec.DecodeError as exc:
        raise CheckpointError(f"corrupt checkpoint metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError("corrupt checkpoint metadata: not an object")
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"incompatible checkpoint format {meta.get('format')!r} (expected {FORMAT_VERSION})"
        )
    payload = data[start + n :]
    if len(payload) != meta.get("payload_bytes"):
        raise CheckpointError("truncated checkpoint: payload size mismatch")
    return meta, payload


def checkpoint_meta(data: bytes) -> dict[str, Any]:
    """A checkpoint's metadata, read without unpickling the model.

    Raises
    ------
    CheckpointError
        When the bytes are not a checkpoint of this format (the payload is not verified).

    Examples
    --------
    >>> meta = checkpoint_meta(OnlineModel("churn").to_checkpoint(version=1, now_ms=0))
    >>> meta["target"], meta["pipeline"], meta["version"], meta["examples_seen"]
    ('churn', 'logreg', 1, 0)
    """
    meta, _ = _split(data)
    return meta


#: Packages whose globals a checkpoint may reference (any name).
_ALLOWED_ROOTS: Final = frozenset({"river", "models"})
#: Other globals a checkpoint may reference: containers, generators, NumPy reconstruction.
_ALLOWED_GLOBALS: Final = frozenset(
    {
        ("array", "_array_reconstructor"),
        ("array", "array"),
        ("collections", "Counter"),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("collections", "deque"),
        ("copyreg", "_reconstructor"),
        ("functools", "partial"),
        ("random", "Random"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        *(
            ("builtins", name)
            for name in (
                "bool",
                "bytearray",
                "bytes",
                "complex",
                "dict",
                "float",
                "frozenset",
                "int",
                "list",
                "object",
                "range",
                "set",
                "slice",
                "str",
                "tuple",
            )
        ),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only the globals of River, this package and :data:`_ALLOWED_GLOBALS`.

    This limits what a tampered checkpoint can call; it does not make untrusted bytes safe
    (the checkpoint store must be trusted, like the code that reads it).
    """

    def find_class(self, module: str, name: str) -> Any:
        if module.partition(".")[0] in _ALLOWED_ROOTS or (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointError(f"checkpoint references a disallowed global {module}.{name}")
