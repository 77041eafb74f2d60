"""The prediction targets, declared as data: one entry per target.

A target is a yes/no question about a customer's next ``H`` days after a training snapshot:
its label when a purchase falls in that window, its label when the window passes without one,
its default horizon (the setting ``NEXTBEST_<NAME>_HORIZON_DAYS`` overrides it) and the
documented prior that answers until its model has learned enough. Labels, the model owners,
serving, evaluate and the metrics iterate this registry; a new target (an action's conversion,
for the next-best-action models) is one more entry (and, for its horizon, one setting).

>>> [t.name for t in REGISTRY], NAMES
(['churn', 'propensity'], ('churn', 'propensity'))
>>> BY_NAME["churn"].on_purchase, BY_NAME["churn"].on_horizon
(0, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from models.prior import constant_prior, prior_churn, prior_propensity

Prior = Callable[[Mapping[str, float]], float]


@dataclass(frozen=True)
class Target:
    """One target (see the module docstring)."""

    name: str
    #: the label when a purchase falls in the window after the snapshot
    on_purchase: int
    #: the label when the window passes without a purchase
    on_horizon: int
    default_horizon_days: int
    prior: Prior
    question: str

    @property
    def horizon_setting(self) -> str:
        """The attribute of :class:`nextbest.settings.Settings` holding the horizon in days."""
        return f"{self.name}_horizon_days"


#: Every target, in the order their examples are emitted.
REGISTRY: Final = (
    Target("churn", 0, 1, 90, prior_churn, "no purchase in the next H days"),
    Target("propensity", 1, 0, 7, prior_propensity, "at least one purchase in the next H days"),
)
BY_NAME: Final = {t.name: t for t in REGISTRY}
NAMES: Final = tuple(t.name for t in REGISTRY)


def prior_of(name: str) -> Prior:
    """The prior of a target (:func:`~models.prior.constant_prior` for an unknown one)."""
    target = BY_NAME.get(name)
    return target.prior if target is not None else constant_prior
