"""Versioned recovery snapshots: every keyed step resumes from a snapshot written by the code
before versioned snapshots (``tests/golden/snapshots-v0.pickle``) and from its own, and goes on
with the same state."""

from __future__ import annotations

import pickle
from pathlib import Path

from dataflows import snapshots as sn
from dataflows.steps.clock import ClockLogic
from dataflows.steps.identity import DeviceLogic
from dataflows.steps.models import ModelLogic
from dataflows.steps.profile import ProfileLogic
from dataflows.steps.rfm import RfmLogic
from features import profile as pf
from models.labels import DAY_MS
from tests.conftest import flow_config

T0 = 1_767_225_600_000
V0: dict[str, bytes] = pickle.loads(
    (Path(__file__).parent / "golden" / "snapshots-v0.pickle").read_bytes()
)
CFG = flow_config(recovery=True, write_interval_ms=0)


def test_profile_step_resumes_from_format_0_and_round_trips() -> None:
    snap = sn.load_profile(V0["profile"])
    assert snap.state is not None and snap.labels is not None
    assert snap.state.key == "c:c1" and snap.state.purchases_total == 1
    logic = ProfileLogic(snap, CFG)
    again = sn.load_profile(logic.snapshot())
    assert again.v == 2 and again.state == snap.state and again.dirty == snap.dirty
    assert pf.to_fields(again.state) == pf.to_fields(snap.state)


def test_identity_step_resumes_from_format_0() -> None:
    snap = sn.load_device(V0["identity"])
    assert snap.state is not None and snap.state.anonymous_id == "d1"
    assert snap.state.anon is not None and pf.view(snap.state.anon).events_total == 1
    logic = DeviceLogic(snap, CFG)
    assert sn.load_device(logic.snapshot()).state == snap.state


def test_clock_resumes_from_format_0() -> None:
    snap = sn.load_clock(V0["customer_clock"], 0)
    assert snap.pending == T0 + DAY_MS and snap.queue == []
    assert snap.clock.deadline("c:c1", "retention") == T0 + 400 * DAY_MS
    logic = ClockLogic(snap.clock, True, "customer_clock", CFG.horizons, 7, snap.pending)
    assert sn.load_clock(logic.snapshot(), 0) == sn.ClockSnapshot(snap.clock, snap.pending, [])


def test_model_owner_resumes_from_format_0_with_its_held_examples() -> None:
    snap = sn.load_model(V0["models"])
    assert snap.model is not None and snap.held and snap.checkpoint_version == 0
    logic = ModelLogic(snap, CFG)
    before = len(logic.held)
    out, _ = logic.on_eof()  # learns what was held, publishes a checkpoint
    assert logic.held == [] and logic.model is not None
    assert logic.model.examples_seen >= before
    assert [o.version for o in out] == [1]  # type: ignore[union-attr]
    assert sn.load_model(logic.snapshot()).checkpoint_version == 1


def test_rfm_owner_resumes_from_format_0() -> None:
    snap = sn.load_rfm(V0["rfm"])
    assert snap.pending == 20
    logic = RfmLogic(snap, CFG)
    again = sn.load_rfm(logic.snapshot())
    assert (again.pending, again.newest, again.v) == (20, snap.newest, 1)
    assert again.population.boundaries(0) == snap.population.boundaries(0)


def test_no_snapshot_gives_empty_state() -> None:
    assert sn.load_profile(None).state is None and sn.load_device(None).state is None
    assert sn.load_model(None).model is None and sn.load_rfm(None).pending == 0
    assert len(sn.load_clock(None, 5).clock) == 0
