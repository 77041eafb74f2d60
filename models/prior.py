"""The cold-start prior: a recency/frequency heuristic used until a model has learned enough.

Until an :class:`models.online.OnlineModel` has seen ``min_examples`` labelled examples, its
scores come from here and are marked ``"source": "prior"``. Both priors are the logistic function
of hand-set coefficients on three inputs of :mod:`models.features`:

* ``r`` = ``log_days_since_last_seen`` (visit recency),
* ``q`` = ``log_days_since_last_purchase``, or ``log1p(365)`` for a customer who never purchased
  (purchase recency: "never" counts as a year ago),
* ``n`` = ``log_purchases_total`` (purchase frequency).

====================  ========================================================================
prior                 formula
====================  ========================================================================
``prior_propensity``  ``sigmoid(-0.5 - 0.7 q + 0.9 n - 0.3 r)``
``prior_churn``       ``sigmoid(-1.5 + 0.8 q - 0.8 n + 0.3 r)``
====================  ========================================================================

so a more recent or more frequent customer gets a higher purchase propensity and a lower churn
probability. Values are clipped to ``[0.001, 0.999]``: always inside (0, 1), monotone
(non-strictly at the clip) in each input. A few reference points: a customer who bought 3
times, last 3 days ago, seen yesterday: propensity 0.39, churn 0.22; bought once 60 days ago,
last seen 30 days ago: propensity 0.02, churn 0.91; never bought, seen today: propensity 0.01,
churn 0.96.

Examples
--------
>>> import math
>>> f = {"log_days_since_last_seen": math.log1p(1), "log_days_since_last_purchase": math.log1p(3),
...      "log_purchases_total": math.log1p(3), "never_purchased": 0.0}
>>> round(prior_propensity(f), 2), round(prior_churn(f), 2)
(0.39, 0.22)
>>> never = {"never_purchased": 1.0}
>>> round(prior_propensity(never), 2), round(prior_churn(never), 2)
(0.01, 0.96)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

__all__ = ["constant_prior", "prior_churn", "prior_propensity"]

#: Purchase recency assumed for a customer who never purchased (``log1p`` of days).
NEVER_PURCHASED_LOG_DAYS: Final = math.log1p(365)
#: Priors are clipped to ``[P_MIN, 1 - P_MIN]``.
P_MIN: Final = 0.001


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _clip(p: float) -> float:
    return min(1.0 - P_MIN, max(P_MIN, p))


def _inputs(f: Mapping[str, float]) -> tuple[float, float, float]:
    r = float(f.get("log_days_since_last_seen", 0.0))
    n = float(f.get("log_purchases_total", 0.0))
    if f.get("never_purchased", 0.0) >= 0.5 or n <= 0.0:
        q = NEVER_PURCHASED_LOG_DAYS
    else:
        q = float(f.get("log_days_since_last_purchase", 0.0))
    return r, q, n


def prior_propensity(features: Mapping[str, float]) -> float:
    """Prior probability of at least one purchase within the propensity horizon.

    Parameters
    ----------
    features
        A feature vector of :mod:`models.features` (missing keys count as 0).

    Returns
    -------
    float
        In ``[0.001, 0.999]``; higher for more recent and more frequent customers.

    Examples
    --------
    >>> more, fewer = {"log_purchases_total": 2.0}, {"log_purchases_total": 1.0}
    >>> prior_propensity(more) > prior_propensity(fewer)
    True
    """
    r, q, n = _inputs(features)
    return _clip(_sigmoid(-0.5 - 0.7 * q + 0.9 * n - 0.3 * r))


def prior_churn(features: Mapping[str, float]) -> float:
    """Prior probability of no purchase within the churn horizon.

    Parameters
    ----------
    features
        A feature vector of :mod:`models.features` (missing keys count as 0).

    Returns
    -------
    float
        In ``[0.001, 0.999]``; lower for more recent and more frequent customers.

    Examples
    --------
    >>> longer, shorter = {"log_days_since_last_seen": 3.0}, {"log_days_since_last_seen": 1.0}
    >>> prior_churn(longer) > prior_churn(shorter)
    True
    """
    r, q, n = _inputs(features)
    return _clip(_sigmoid(-1.5 + 0.8 * q - 0.8 * n + 0.3 * r))


def constant_prior(features: Mapping[str, float]) -> float:
    """0.5 whatever the features: the prior of a target without a heuristic.

    >>> constant_prior({})
    0.5
    """
    return 0.5
