"""The profile dataflow: wiring only; each step's Logic is in ``dataflows/steps/``, the logic
in ``features/`` and ``models/``.

Step ids are stable names: Bytewax recovery state is keyed by them.

    read -> decode -> split_rejected -(rejects)-------------------------------> dead_letter
                        |
                        +-> split_identity -(anonymous-only events, login/signup links)
                        |     -> key_by_device -> identity (per a:<anonymous_id>, + device_clock)
                        |          anonymous profiles, links, hand-overs, routing to customers
                        +-> key_by_customer ----+
                                    (+ routed) -+-> profile (per c:<customer_id>, + customer_clock)
                                                       -> rfm (one owner)
    identity, profile, rfm -> write_redis (one command per changed key, pipelined per batch)

The two clocks are :class:`features.clock.EventClock` instances fed by the events themselves: they
keep the event-time watermark (newest event time minus the allowed lateness) and send a
:class:`~dataflows.records.Tick` to a key whose timer the watermark passed (retention; for
customers also label maturity and idle snapshots). Each clock is 16 keyed shards, a key's timers
in its own shard, every shard told every batch's newest event time (see
:mod:`dataflows.steps.clock`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from dataflows.config import FlowConfig
from dataflows.effects import Examples, RfmChange, Route, rejected, segment_event, sink_op
from dataflows.erasure import Ack, EraseIn, fan_out
from dataflows.records import (
    DecisionIn,
    In,
    RawRecord,
    Rejected,
    Reproject,
    SegmentEvent,
    SinkOp,
)
from dataflows.sinks import RedisSink
from dataflows.snapshots import (
    load_any,
    load_device,
    load_feedback,
    load_model,
    load_profile,
    load_rfm,
)
from dataflows.stats import FlowStats, count_dead_letter
from dataflows.steps import Keyed
from dataflows.steps.clock import MODEL_TIME, add_clock, newest_ts
from dataflows.steps.decode import (
    decisions_off,
    is_decision,
    is_device_item,
    is_erasure,
    is_event,
    key_events,
    make_decoder,
)
from dataflows.steps.erasure import ErasureLogic
from dataflows.steps.feedback import (
    FEEDBACK_SHARDS,
    FeedbackLogic,
    broadcast_time,
    is_outcome,
    key_feedback,
)
from dataflows.steps.identity import DeviceLogic
from dataflows.steps.models import ModelLogic
from dataflows.steps.products import SHARDS as BASKET_SHARDS
from dataflows.steps.products import (
    BasketLogic,
    BoardLogic,
    ProductLogic,
    board_reproject,
    broadcast_reproject,
    key_product_event,
    to_board,
)
from dataflows.steps.profile import ProfileLogic
from dataflows.steps.rfm import RfmLogic
from dataflows.steps.stream_time import StreamTimeLogic, partition_of
from models import labels as lb
from models.action_labels import ACTION_TARGET

__all__ = ["FlowConfig", "FlowStats", "build_flow"]


def is_reproject(kv: Keyed) -> bool:
    """A re-projection request of the clock (for the model and RFM owners)."""
    return isinstance(kv[1][1], Reproject)


def model_targets(cfg: FlowConfig) -> tuple[str, ...]:
    """Every model owner's target: churn, propensity, and one per catalogue action."""
    actions = cfg.actions.ids if cfg.actions is not None else ()
    return (*lb.TARGETS, *(ACTION_TARGET + a for a in actions))


def erasure_owners(cfg: FlowConfig) -> tuple[str, ...]:
    """The owner steps' keys an erasure request must reach (see :mod:`dataflows.erasure`)."""
    owners = [f"model:{t}" for t in model_targets(cfg)]
    if cfg.actions is not None:
        owners += [f"feedback:{i}" for i in range(FEEDBACK_SHARDS)]
    if cfg.products:
        owners += [f"basket:{i}" for i in range(BASKET_SHARDS)]
    return tuple(owners)


def _owned_by(prefix: str) -> Callable[[tuple[str, Any]], tuple[str, Any] | None]:
    return lambda kv: kv if kv[0].startswith(prefix) else None


def to_model_owners(
    targets: tuple[str, ...],
) -> Callable[[Keyed], list[tuple[str, tuple[str, Any]]]]:
    """What the customer clock tells every model owner: the watermark, or a re-projection."""

    def told(kv: Keyed) -> list[tuple[str, tuple[str, Any]]]:
        item = kv[1][1]
        if isinstance(item, Reproject):
            return [("model:" + t, ("reproject", None)) for t in targets]
        return [("model:" + t, ("time", (item.shard, item.watermark))) for t in targets]

    return told


def build_flow(
    source: Source[Any],
    redis_sink: Sink[SinkOp],
    dead_letter_sink: Sink[Rejected],
    to_record: Callable[[Any], RawRecord] | None = None,
    source_label: str = "file",
    *,
    config: FlowConfig,
    segment_sink: Sink[SegmentEvent] | None = None,
) -> Dataflow:
    """Build the profile dataflow over any source of :class:`RawRecord` (or ``to_record`` input).

    With a :class:`~dataflows.sinks.RedisSink`, the clocks answer its re-projection requests.
    With segments in ``config``, their transitions go to ``segment_sink`` (required then).
    """
    if config.segments is not None and segment_sink is None:
        raise ValueError("segments are on: give the flow a segment_sink for their transitions")
    cfg = config
    reprojection = redis_sink.reprojection if isinstance(redis_sink, RedisSink) else None
    flow = Dataflow("nextbest-profiles")
    raw = op.input("read", flow, source)
    if to_record is not None:
        raw = op.map("to_record", raw, to_record)
    decoded = op.flat_map_batch(
        "decode", raw, make_decoder(source_label, cfg.max_future_ms, cfg.ids)
    )
    by_erasure = op.branch("split_erasures", decoded, is_erasure)
    erasures: Stream[EraseIn] = by_erasure.trues  # type: ignore[assignment]
    erase = op.flat_map("erasure_fan_out", erasures, fan_out(erasure_owners(cfg)))
    by_kind = op.branch("split_decisions", by_erasure.falses, is_decision)
    decisions: Stream[DecisionIn] = by_kind.trues  # type: ignore[assignment]
    split = op.branch("split_rejected", by_kind.falses, is_event)
    decoded_events: Stream[In] = split.trues  # type: ignore[assignment]

    def build_stream_time(resume: Any) -> StreamTimeLogic:
        return StreamTimeLogic(resume, cfg.lateness_ms)

    by_partition = op.key_on("key_by_partition", decoded_events, partition_of)
    stamped = op.stateful_batch("stream_time", by_partition, build_stream_time)
    events: Stream[In] = op.map("stream_time_unwrap", stamped, lambda kv: kv[1])

    observed = op.flat_map_batch("observe_time", events, newest_ts)
    keyed = op.flat_map_batch("key_events", events, key_events)
    by_device = op.branch("split_identity", keyed, is_device_item)
    device_in: Stream[Keyed] = op.merge(
        "device_erasures", by_device.trues, op.filter_map("erase_devices", erase, _owned_by("a:"))
    )
    device_ticks = add_clock("device_clock", device_in, observed, cfg, None, reprojection)

    def build_device(resume: Any) -> DeviceLogic:
        return DeviceLogic(load_device(resume), cfg)

    device_out = op.stateful_batch(
        "identity", op.merge("device_items", device_in, device_ticks), build_device
    )
    device_flat = op.map("identity_unwrap", device_out, lambda kv: kv[1])
    routed = op.filter_map(
        "routed_to_customer", device_flat, lambda o: (o.key, o) if isinstance(o, Route) else None
    )
    customer_in = op.merge("customer_items", by_device.falses, routed,
                           op.filter_map("erase_customers", erase, _owned_by("c:")))  # fmt: skip
    # (label and idle timers only when the models learn)
    horizons = cfg.horizons if cfg.models else None
    clock_out = add_clock(
        "customer_clock", customer_in, observed, cfg, horizons, reprojection, owners=True
    )
    to_models = op.branch("split_model_time", clock_out, lambda kv: kv[0] == MODEL_TIME)
    customer_ticks: Stream[Keyed] = to_models.falses

    def build_profile(resume: Any) -> ProfileLogic:
        return ProfileLogic(load_profile(resume), cfg)

    profile_out = op.stateful_batch(
        "profile", op.merge("profile_items", customer_in, customer_ticks), build_profile
    )
    profile_flat = op.map("profile_unwrap", profile_out, lambda kv: kv[1])
    if segment_sink is not None:
        transitions = op.filter_map("segment_transitions", profile_flat, segment_event)
        op.output("segment_events", transitions, segment_sink)

    rfm_changes = op.filter_map(
        "rfm_changes", profile_flat, lambda o: o if isinstance(o, RfmChange) else None
    )
    rfm_reproject = op.filter_map(
        "rfm_reproject", to_models.trues, lambda kv: kv[1][1] if is_reproject(kv) else None
    )
    rfm_changes = op.merge("rfm_inputs", rfm_changes, rfm_reproject)

    def build_rfm(resume: Any) -> RfmLogic:
        return RfmLogic(load_rfm(resume), cfg)

    rfm_out = op.stateful_batch("rfm", op.key_on("rfm_owner", rfm_changes, lambda _: "rfm"),
                                build_rfm)  # fmt: skip
    rfm_flat = op.map("rfm_unwrap", rfm_out, lambda kv: kv[1])

    examples = op.filter_map(
        "examples", profile_flat, lambda o: o if isinstance(o, Examples) else None
    )
    feedback_flat, rejected_decisions = _feedback(flow, cfg, decisions, events, observed, erase)
    if feedback_flat is not None:
        action_examples = op.filter_map(
            "action_examples", feedback_flat, lambda o: o if isinstance(o, Examples) else None
        )
        examples = op.merge("all_examples", examples, action_examples)

    def build_model(resume: Any) -> ModelLogic:
        return ModelLogic(load_model(resume), cfg)

    # every model owner hears the clock's event time too (to learn in a canonical order)
    model_time = op.flat_map("model_time", to_models.trues, to_model_owners(model_targets(cfg)))
    model_examples = op.map(
        "model_owner", examples, lambda ex: ("model:" + ex.target, ("ex", ex.examples))
    )
    model_erase = op.filter_map("erase_models", erase, _owned_by("model:"))
    models_out = op.stateful_batch(
        "models", op.merge("model_inputs", model_examples, model_time, model_erase), build_model
    )
    models_flat = op.map("models_unwrap", models_out, lambda kv: kv[1])

    flats = [device_flat, profile_flat, rfm_flat, models_flat]
    if feedback_flat is not None:
        flats.append(feedback_flat)
    if cfg.products:
        flats.append(_products(cfg, events, to_models.trues, erase))
    flats.append(_erasure_status(erase, flats))
    outputs = op.merge("outputs", *flats)
    sink_ops: Stream[SinkOp] = op.filter_map("sink_ops", outputs, sink_op)
    late_events = op.filter_map("late_events", outputs, rejected)

    def count_late(rej: Rejected) -> Rejected:
        count_dead_letter(rej.error.reason)
        return rej

    op.output(
        "dead_letter",
        op.merge(
            "dead_letters",
            split.falses,
            op.map("count_late", late_events, count_late),
            *([] if rejected_decisions is None else [rejected_decisions]),
        ),
        dead_letter_sink,
    )
    op.output("write_redis", sink_ops, redis_sink)
    return flow


def _products(
    cfg: FlowConfig, events: Stream[In], clock: Stream[Keyed], erase: Stream[Any]
) -> Stream[Any]:
    """Product knowledge (:mod:`dataflows.steps.products`): baskets -> products -> the board."""
    requests = op.filter("product_reproject_requests", clock, is_reproject)
    reproject = op.flat_map("product_reproject", requests, broadcast_reproject)
    to_baskets = op.merge("basket_items", op.flat_map("product_events", events, key_product_event),
                          op.filter_map("erase_baskets", erase, _owned_by("basket:")))  # fmt: skip

    def build_baskets(resume: Any) -> BasketLogic:
        return BasketLogic(load_any(resume), cfg)

    def build_products(resume: Any) -> ProductLogic:
        return ProductLogic(load_any(resume), cfg)

    def build_board(resume: Any) -> BoardLogic:
        return BoardLogic(load_any(resume), cfg)

    baskets = op.map("basket_unwrap", op.stateful_batch("baskets", to_baskets, build_baskets),
                     lambda kv: kv[1])  # fmt: skip
    basket_acks = op.branch("basket_acks", baskets, lambda kv: isinstance(kv, Ack))
    items = op.merge("product_items", basket_acks.falses, reproject)
    products = op.map("products_unwrap", op.stateful_batch("products", items, build_products),
                      lambda kv: kv[1])  # fmt: skip
    notes = op.merge("board_items", op.filter_map("board_notes", products, to_board),
                     op.map("board_reproject", requests, board_reproject))  # fmt: skip
    board = op.map("popularity_unwrap", op.stateful_batch("popularity", notes, build_board),
                   lambda kv: kv[1])  # fmt: skip
    return op.merge("product_outputs", products, board, basket_acks.trues)


def _feedback(
    flow: Dataflow,
    cfg: FlowConfig,
    decisions: Stream[DecisionIn],
    events: Stream[In],
    observed: Stream[Any],
    erase: Stream[Any],
) -> tuple[Stream[Any] | None, Stream[Rejected] | None]:
    """The feedback join (with an action catalogue): decision records and outcome events, keyed
    by their decision's shard, every shard told the stream's newest event time. Without a
    catalogue, decision records are dead letters (``decisions_off``)."""
    if cfg.actions is None:
        return None, op.map("decisions_off", decisions, decisions_off)
    outcomes = op.filter("outcomes", events, is_outcome)
    items = op.merge(
        "feedback_items",
        op.map("key_decisions", decisions, key_feedback),
        op.map("key_outcomes", outcomes, key_feedback),
        op.flat_map("feedback_time", observed, broadcast_time),
        op.filter_map("erase_feedback", erase, _owned_by("feedback:")),
    )

    def build(resume: Any) -> FeedbackLogic:
        return FeedbackLogic(load_feedback(resume), cfg)

    out = op.stateful_batch("feedback", items, build)
    return op.map("feedback_unwrap", out, lambda kv: kv[1]), None


def _keyed_ack(o: Any) -> tuple[str, Ack] | None:
    return ("erasure:" + o.request_id, o) if isinstance(o, Ack) else None


def _erasure_status(erase: Stream[Any], flats: list[Stream[Any]]) -> Stream[Any]:
    """Each request's own step (:mod:`dataflows.steps.erasure`): what it expects, the steps'
    acknowledgements, then its ``done`` status."""
    expects = op.filter_map("erasure_expects", erase, _owned_by("erasure:"))
    acks = op.filter_map("erasure_acks", op.merge("erasure_outputs", *flats), _keyed_ack)
    items = op.map("erasure_items", op.merge("erasure_inputs", expects, acks),
                   lambda kv: (kv[0], kv[1][1] if isinstance(kv[1], tuple) else kv[1]))  # fmt: skip
    done = op.stateful_batch("erasure", items, lambda resume: ErasureLogic(resume))
    return op.map("erasure_unwrap", done, lambda kv: kv[1])
