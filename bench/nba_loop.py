"""Bench section (g): next best action in a closed loop (``nextbest evaluate-nba``).

Simulated customers respond to offers through latent traits (:mod:`nextbest.nba_sim`); every visit
is decided by the real decision code against a temporary Redis kept by the real dataflow, and the
outcomes go back through the dataflow, so the action models learn as the run goes on. Reported:
the reward per decision of the engine, uniform random and the oracle over the last half, the lift
capture (engine - random) / (oracle - random) against the aim, and how many propensities came
from an action model. A measurement, never asserted.
"""

from __future__ import annotations

from typing import Any, Final

#: The issue's aim for the lift capture over the last half of the run.
AIM_LIFT_CAPTURE: Final = 0.6


def measure_nba_loop(customers: int, days: int, seed: int = 42) -> dict[str, Any]:
    """Run the closed loop once (value reward, the shipped catalogue)."""
    from nextbest.commands.evaluate_nba import run_closed_loop

    rep = run_closed_loop(customers=customers, days=days, seed=seed)
    half = rep["last_half"]
    capture = rep["lift_capture"]
    return {
        "customers": customers,
        "days": days,
        "seed": seed,
        "decisions": rep["decisions"],
        "last_half": half,
        "lift_capture": capture,
        "model_share_last_half": half.get("model_share"),
        "action_models": rep["action_models"],
        "seconds": rep["seconds"],
        "meets_aim": capture is not None and capture >= AIM_LIFT_CAPTURE,
    }


def render_nba_loop(r: dict[str, Any]) -> list[str]:
    """The report's lines."""
    if "error" in r:
        return [f"(g) nba loop   ERROR: {r['error']}"]
    h = r["last_half"]
    share = r["model_share_last_half"]
    return [
        f"(g) nba loop   {r['customers']:,} customers x {r['days']} days, seed {r['seed']}, "
        f"{r['decisions']:,} decisions in {r['seconds']:.0f} s",
        f"    last half: reward per decision engine {h['engine']:.2f}, random {h['random']:.2f}, "
        f"oracle {h['oracle']:.2f}; propensities from an action model "
        f"{'-' if share is None else f'{share:.0%}'}",
        f"    lift capture {r['lift_capture']}   aim >= {AIM_LIFT_CAPTURE}: "
        f"{'met' if r['meets_aim'] else 'NOT met'}",
    ]
