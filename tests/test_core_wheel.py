"""The Rust timer wheel through its Python binding, against a model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stead._core import TimerWheel

NOW = 1_780_000_000_000

operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 20), st.integers(-5_000, 10**9)),
        st.tuples(st.just("cancel"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("advance"), st.just(0), st.integers(0, 10**8)),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_wheel_matches_a_model_and_never_fires_early(ops: list[tuple[str, int, int]]) -> None:
    wheel = TimerWheel(NOW)
    model: dict[int, int] = {}
    clock = NOW
    for op, token, value in ops:
        if op == "set":
            wheel.set(token, NOW + value)
            model[token] = NOW + value
        elif op == "cancel":
            assert wheel.cancel(token) == (model.pop(token, None) is not None)
        else:
            clock += value
            due = wheel.advance(clock)
            expected = sorted((when, t) for t, when in model.items() if when <= clock)
            assert sorted(due) == sorted(t for _, t in expected)
            assert [model[t] for t in due] == sorted(model[t] for t in due)  # earliest first
            for t in due:
                del model[t]
        assert len(wheel) == len(model)
        if model:
            deadline = wheel.next_deadline()
            assert deadline is not None and deadline <= max(min(model.values()), clock)
        assert all(wheel.get(t) == when for t, when in model.items())


def test_next_deadline_converges_on_the_exact_time() -> None:
    wheel = TimerWheel(NOW)
    wheel.set(1, NOW + 123_456)
    clock = NOW
    for _ in range(10):
        deadline = wheel.next_deadline()
        assert deadline is not None and deadline <= NOW + 123_456
        clock = max(clock, deadline)
        if wheel.advance(clock) == [1]:
            break
    assert clock == NOW + 123_456


def test_set_many_and_memory_accounting() -> None:
    wheel = TimerWheel(NOW)
    wheel.set_many([(t, NOW + t * 10) for t in range(1000)])
    assert len(wheel) == 1000
    assert 0 < wheel.memory_bytes() < 1000 * 200
    assert wheel.advance(NOW + 5_000) == list(range(501))
