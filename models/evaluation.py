"""Exact batch metrics for binary scores: ROC AUC, log loss and Brier score.

Used by ``nextbest evaluate`` to score a model against the simulator's truth, and by
:class:`models.online.OnlineModel` for its rolling window. Labels are 0/1 (or booleans).

Examples
--------
>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5])           # ties count one half
0.5
>>> round(log_loss([1, 0], [0.9, 0.2]), 4), round(brier([1, 0], [0.9, 0.2]), 4)
(0.1643, 0.025)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["brier", "log_loss", "roc_auc"]

#: Probabilities are clipped to ``[EPS, 1 - EPS]`` by :func:`log_loss`.
EPS: Final = 1e-15


def _arrays(
    labels: Sequence[int | bool] | npt.ArrayLike, values: Sequence[float] | npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(values, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} != {s.size}")
    if y.size == 0:
        raise ValueError("no examples")
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("labels must be 0 or 1")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return y, s


def roc_auc(
    labels: Sequence[int | bool] | npt.ArrayLike, scores: Sequence[float] | npt.ArrayLike
) -> float:
    """Exact area under the ROC curve (the Mann-Whitney statistic; ties count one half).

    Parameters
    ----------
    labels
        0/1 labels.
    scores
        Scores of any scale, higher meaning more likely positive.

    Returns
    -------
    float
        The probability that a random positive scores above a random negative.

    Raises
    ------
    ValueError
        When the lengths differ, there is no example, a label is not 0/1, a score is not
        finite, or only one class is present (the AUC is undefined).

    Examples
    --------
    >>> roc_auc([1, 1, 0], [3.0, 2.0, 1.0]), roc_auc([1, 0], [0.0, 1.0])
    (1.0, 0.0)
    """
    y, s = _arrays(labels, scores)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC is undefined with only one class present")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average ranks (1-based) of tied blocks
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks = np.empty_like(s)
    ranks[order] = np.repeat(avg, counts)
    rank_sum = float(ranks[y == 1.0].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(
    labels: Sequence[int | bool] | npt.ArrayLike,
    probs: Sequence[float] | npt.ArrayLike,
    eps: float = EPS,
) -> float:
    """Mean negative log-likelihood of 0/1 labels under probabilities of the positive class.

    Parameters
    ----------
    labels
        0/1 labels.
    probs
        Predicted probabilities of label 1, clipped to ``[eps, 1 - eps]``.
    eps
        Clipping, so a confident mistake costs a large but finite amount.

    Examples
    --------
    >>> round(log_loss([1, 0, 1], [0.5, 0.5, 0.5]), 6)
    0.693147
    >>> round(log_loss([1], [0.0]), 2)
    34.54
    """
    y, p = _arrays(labels, probs)
    if np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("probabilities must be in [0, 1]")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def brier(
    labels: Sequence[int | bool] | npt.ArrayLike, probs: Sequence[float] | npt.ArrayLike
) -> float:
    """Brier score: mean squared difference between probability and label.

    Examples
    --------
    >>> brier([1, 0], [1.0, 0.5])
    0.125
    """
    y, p = _arrays(labels, probs)
    if np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("probabilities must be in [0, 1]")
    return float(np.mean((p - y) ** 2))
