"""The Rust timer wheel through its Python binding (``stead._core.TimerWheel``)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from stead._core import TimerWheel

NOW = 1_780_000_000_000
YEAR_MS = 365 * 86_400_000

# Offsets at every scale the wheel distinguishes: past, first level, middle
# levels, beyond the top level (overflow) and years ahead.
offsets = st.one_of(
    st.integers(-5_000, 100),
    st.integers(0, 10**6),
    st.integers(0, 10**9),
    st.integers(0, 2**37),
    st.integers(0, 6 * YEAR_MS),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 20), offsets),
        st.tuples(st.just("cancel"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("advance"), st.just(0), st.one_of(st.integers(0, 100), offsets)),
    ),
    max_size=200,
)


def _due(model: dict[int, int], clock: int) -> list[int]:
    return [t for when, t in sorted((when, t) for t, when in model.items() if when <= clock)]


@settings(max_examples=300, deadline=None)
@given(operations)
def test_wheel_matches_a_model_and_never_fires_early(ops: list[tuple[str, int, int]]) -> None:
    wheel, clock = TimerWheel(NOW), NOW
    model: dict[int, int] = {}
    for op, token, value in ops:
        if op == "set":
            wheel.set(token, clock + value)
            model[token] = clock + value
        elif op == "cancel":
            assert wheel.cancel(token) == (model.pop(token, None) is not None)
        else:
            clock += max(value, 0)
            due = wheel.advance(clock)
            assert due == _due(model, clock)  # exactly the due ones, earliest first
            for t in due:
                del model[t]
        assert len(wheel) == len(model)
        assert all(wheel.get(t) == when for t, when in model.items())
        deadline = wheel.next_deadline()
        assert (deadline is None) == (not model)
        assert deadline is None or deadline <= min(model.values())  # never after the earliest


def test_following_next_deadline_fires_each_token_exactly_on_time() -> None:
    rng = random.Random(7)
    wheel = TimerWheel(NOW)
    scales = (100, 10_000, 10**7, 2**37, 3 * YEAR_MS)
    wanted = {t: NOW + rng.randrange(1, rng.choice(scales)) for t in range(2_000)}
    wheel.set_many(list(wanted.items()))
    clock, fired = NOW, 0
    while (deadline := wheel.next_deadline()) is not None:
        assert deadline >= clock
        clock = deadline
        for token in wheel.advance(clock):
            assert wanted[token] == clock
            fired += 1
    assert fired == len(wanted)


def test_past_deadlines_fire_at_once() -> None:
    wheel = TimerWheel(NOW)
    wheel.set(1, NOW - 60_000)
    wheel.set(2, 0)
    assert wheel.next_deadline() == 0  # the earliest overdue deadline: call advance now
    assert wheel.advance(NOW) == [2, 1]


def test_a_clock_that_went_back_still_fires_on_its_own_time() -> None:
    wheel = TimerWheel(NOW)
    wheel.advance(NOW + 3_600_000)  # then the wall clock steps back an hour
    wheel.set(1, NOW + 1_000)
    assert wheel.next_deadline() == NOW + 1_000
    assert wheel.advance(NOW + 999) == []
    assert wheel.advance(NOW + 1_000) == [1]


def test_set_replaces_and_cancel_removes() -> None:
    wheel = TimerWheel(NOW)
    wheel.set_many([(1, NOW + 500), (2, NOW + 100), (1, NOW + 50)])
    assert (len(wheel), wheel.get(1), wheel.get(2)) == (2, NOW + 50, NOW + 100)
    assert wheel.cancel(2) is True and wheel.cancel(2) is False
    assert wheel.get(2) is None
    assert wheel.advance(NOW + 49) == []
    assert wheel.advance(NOW + 10_000) == [1]
    assert wheel.next_deadline() is None


def test_memory_per_alarm_is_counted_and_small() -> None:
    wheel = TimerWheel(NOW)
    wheel.set_many([(t, NOW + t * 10) for t in range(100_000)])
    assert len(wheel) == 100_000
    assert 24 * 100_000 <= wheel.memory_bytes() <= 64 * 100_000  # at least the 24 B records
    assert wheel.advance(NOW + 5_000) == list(range(501))
