"""The selectable River pipelines of the online models (``NEXTBEST_MODEL``)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final

from river import compose, forest, linear_model, optim, preprocessing, tree

#: Selectable pipelines (settings value -> description).
PIPELINES: Final = {
    "logreg": "StandardScaler | LogisticRegression (SGD 0.01, L2 1e-4), monotone in recency and "
    "purchases",
    "hat": "HoeffdingAdaptiveTreeClassifier",
    "arf": "ARFClassifier (10 trees)",
}
#: Magic prefix of a checkpoint.


#: Bound of a standardised feature value in the ``logreg`` pipeline.
Z_CLIP: Final = 5.0


def clip_z(x: dict[str, float]) -> dict[str, float]:
    """Standardised features clipped to ``[-Z_CLIP, Z_CLIP]`` (a pipeline step; picklable).

    >>> clip_z({"a": 7.5, "b": -0.5, "c": -12.0})
    {'a': 5.0, 'b': -0.5, 'c': -5.0}
    """
    return {k: Z_CLIP if v > Z_CLIP else -Z_CLIP if v < -Z_CLIP else v for k, v in x.items()}


#: The signs a target's ``logreg`` weights are held to (+1: never negative, -1: never positive),
#: so that, all else equal, more days since the last purchase or visit never lowers churn and more
#: purchases (at the same average order value, so also more revenue) never raise it (and the
#: reverse for propensity). StandardScaler and :func:`clip_z`
#: are non-decreasing in each input, so the sign of a weight is the sign of the score's slope.
MONOTONE: Final[dict[str, dict[str, int]]] = {
    "churn": {
        "log_days_since_last_purchase": 1,
        "log_days_since_last_seen": 1,
        "log_purchases_total": -1,
        "log_revenue_total": -1,
    },
    "propensity": {
        "log_days_since_last_purchase": -1,
        "log_days_since_last_seen": -1,
        "log_purchases_total": 1,
        "log_revenue_total": 1,
    },
}


class MonotoneLogisticRegression(linear_model.LogisticRegression):  # type: ignore[misc]
    """River's logistic regression with sign-constrained weights: after every step, a weight of
    the wrong sign is set to 0 (projected SGD). A constrained input can then only move the score
    the allowed way, however the examples are correlated.

    >>> m = MonotoneLogisticRegression(signs={"x": 1}, optimizer=optim.SGD(0.5))
    >>> for _ in range(50):                       # x and the label anti-correlated
    ...     m.learn_one({"x": 1.0}, False)
    ...     m.learn_one({"x": -1.0}, True)
    >>> m.weights["x"]
    0.0
    """

    def __init__(self, signs: dict[str, int] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.signs = dict(signs or {})

    def learn_one(self, x: dict[Hashable, Any], y: bool | str | int, w: float = 1.0) -> None:
        super().learn_one(x, y, w)
        weights = self._weights
        for name, sign in self.signs.items():
            if name in weights and weights[name] * sign < 0:
                weights[name] = 0.0


def make_pipeline(name: str, seed: int = 42, target: str | None = None) -> Any:
    """A fresh River estimator for a pipeline name.

    Parameters
    ----------
    name
        ``logreg``, ``hat`` or ``arf`` (see the module docstring).
    seed
        Seed of the randomised pipelines (``hat``, ``arf``); ``logreg`` is deterministic.
    target
        With ``logreg``, hold the weights of :data:`MONOTONE` ``[target]`` to their signs.

    Raises
    ------
    ValueError
        For an unknown name (the message names it and the known ones).

    Examples
    --------
    >>> [type(step).__name__ for step in make_pipeline("logreg").steps.values()]
    ['StandardScaler', 'FuncTransformer', 'MonotoneLogisticRegression']
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
            MonotoneLogisticRegression(
                signs=MONOTONE.get(target or "", {}),
                optimizer=optim.SGD(0.01),
                l2=1e-4,
                intercept_lr=0.01,
            ),
        )
    if name == "hat":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
    if name == "arf":
        return forest.ARFClassifier(n_models=10, seed=seed)
    raise ValueError(f"unknown model pipeline {name!r}; expected one of: {', '.join(PIPELINES)}")


# Checkpoints and snapshots pickle ``clip_z`` by the module path it always had.
clip_z.__module__ = "models.online"


def contributions(
    estimator: Any, features: dict[str, float], k: int = 3
) -> tuple[tuple[str, float], ...]:
    """The ``k`` largest contributions to the logit of a ``logreg`` pipeline's score: weight x
    standardised (clipped) value per feature, largest magnitude first; ``()`` for the other
    pipelines (trees and forests have no additive contributions).

    >>> m = make_pipeline("logreg")
    >>> for i in range(200):
    ...     m.learn_one({"a": float(i % 2), "b": 1.0}, bool(i % 2))
    >>> c = contributions(m, {"a": 1.0, "b": 1.0})   # b never varied: standardised to 0
    >>> [name for name, _ in c], c[0][1] > 0
    (['a'], True)
    >>> contributions(make_pipeline("hat"), {"a": 1.0})
    ()
    """
    if not isinstance(estimator, compose.Pipeline):
        return ()
    steps = list(estimator.steps.values())
    if len(steps) != 3 or not isinstance(steps[2], linear_model.LogisticRegression):
        return ()
    z = clip_z(steps[0].transform_one(dict(features)))
    weights = steps[2].weights
    terms = [(name, float(weights.get(name, 0.0)) * v) for name, v in z.items()]
    terms = [t for t in terms if t[1] != 0.0]
    terms.sort(key=lambda t: (-abs(t[1]), t[0]))
    return tuple(terms[:k])
