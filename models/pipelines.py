"""The selectable River pipelines of the online models (``NEXTBEST_MODEL``)."""

from __future__ import annotations

from typing import Any, Final

from river import compose, forest, linear_model, optim, preprocessing, tree

#: Selectable pipelines (settings value -> description).
PIPELINES: Final = {
    "logreg": "StandardScaler | LogisticRegression (SGD 0.02, L2 1e-4)",
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


# Checkpoints and snapshots pickle ``clip_z`` by the module path it always had.
clip_z.__module__ = "models.online"
