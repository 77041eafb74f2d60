"""The event clock against a naive model: the same timers fire at the same watermarks, and the
heap holds at most one entry per timer (plus cancelled ones) however often deadlines move."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from features.clock import EventClock

KEYS = st.sampled_from([f"k{i}" for i in range(6)])
KINDS = st.sampled_from(["retention", "idle"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, KINDS, st.integers(0, 2000)),
        st.tuples(st.just("cancel"), KEYS, KINDS, st.just(0)),
        st.tuples(st.just("advance"), st.just(""), st.just(""), st.integers(0, 2200)),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(ops=OPS)
def test_clock_fires_like_a_naive_model_with_a_bounded_heap(
    ops: list[tuple[str, str, str, int]],
) -> None:
    clock = EventClock(lateness_ms=0)
    naive: dict[tuple[str, str], int] = {}
    watermark = -1
    cancels = 0
    for op, key, kind, t in ops:
        if op == "set":
            clock.set_timer(key, kind, t)
            naive[(key, kind)] = max(naive.get((key, kind), -1), t)
        elif op == "cancel":
            clock.cancel(key, kind)
            cancels += naive.pop((key, kind), None) is not None
        else:
            got = clock.advance(t)
            if t <= watermark:
                assert got == []
                continue
            watermark = t
            due = sorted((d, k, kd) for (k, kd), d in naive.items() if d <= watermark)
            for _, k, kd in due:
                del naive[(k, kd)]
            assert got == [(k, kd, d) for d, k, kd in due]
        assert len(clock._heap) <= len(naive) + cancels + 1
