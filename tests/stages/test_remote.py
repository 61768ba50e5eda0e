"""Circuit breaker state machine and tenacity retries (workzone/stages/_remote.py)."""

from __future__ import annotations

import asyncio

import pytest

from workzone.errors import BackendUnavailable, DeadlineExceeded, StageError
from workzone.stages._remote import BreakerState, CircuitBreaker, Resilience, ResilienceParams, retry_async


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Backend:
    """An async callable that fails while ``down`` is true and counts its calls."""

    def __init__(self, down: bool = False, exc: type[Exception] = BackendUnavailable) -> None:
        self.down = down
        self.exc = exc
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise self.exc("svc", "down")
        return "ok"


def run(coro):
    return asyncio.run(coro)


def test_breaker_opens_after_threshold_and_fails_fast():
    clock, backend = Clock(), Backend(down=True)
    b = CircuitBreaker("svc", failure_threshold=3, cooldown_s=10, clock=clock)

    async def go():
        for i in range(3):
            assert b.state is BreakerState.CLOSED
            with pytest.raises(BackendUnavailable, match="down"):
                await b.call(backend)
            assert b.failures == i + 1
        assert b.state is BreakerState.OPEN and b.opened_at == 100.0
        with pytest.raises(BackendUnavailable, match="circuit breaker open after 3"):
            await b.call(backend)

    run(go())
    assert backend.calls == 3  # the 4th call never reached the backend
    assert b.rejected == 1
    assert b.snapshot()["state"] == "open"


def test_half_open_trial_success_closes_and_failure_reopens():
    clock, backend = Clock(), Backend(down=True)
    b = CircuitBreaker("svc", failure_threshold=1, cooldown_s=5, clock=clock)

    async def go():
        with pytest.raises(BackendUnavailable):
            await b.call(backend)
        assert b.state is BreakerState.OPEN
        clock.t += 4.9
        assert b.state is BreakerState.OPEN
        clock.t += 0.2
        assert b.state is BreakerState.HALF_OPEN
        with pytest.raises(BackendUnavailable, match="down"):  # failed trial: open again, new cool-down
            await b.call(backend)
        assert b.state is BreakerState.OPEN and b.opened_at == clock.t
        clock.t += 5
        backend.down = False
        assert await b.call(backend) == "ok"
        assert b.state is BreakerState.CLOSED and b.failures == 0 and b.opened_at is None

    run(go())


def test_half_open_lets_one_trial_through_at_a_time():
    clock = Clock()
    b = CircuitBreaker("svc", failure_threshold=1, cooldown_s=1, clock=clock)
    calls = []

    async def go():
        release = asyncio.Event()

        async def slow_ok():
            calls.append(1)
            await release.wait()
            return "ok"

        with pytest.raises(BackendUnavailable):
            await b.call(Backend(down=True))
        clock.t += 2
        first = asyncio.create_task(b.call(slow_ok))
        await asyncio.sleep(0)
        with pytest.raises(BackendUnavailable, match="circuit breaker open"):
            await b.call(slow_ok)  # a second caller while the trial is in flight
        release.set()
        assert await first == "ok"
        assert b.state is BreakerState.CLOSED

    run(go())
    assert len(calls) == 1


def test_uncounted_errors_do_not_trip_the_breaker():
    b = CircuitBreaker("svc", failure_threshold=1, counted=(BackendUnavailable,))

    async def go():
        for _ in range(3):
            with pytest.raises(StageError):
                await b.call(Backend(down=True, exc=StageError))

    run(go())
    assert b.state is BreakerState.CLOSED and b.failures == 0


def test_success_resets_consecutive_count():
    b = CircuitBreaker("svc", failure_threshold=2)
    backend = Backend(down=True)

    async def go():
        with pytest.raises(BackendUnavailable):
            await b.call(backend)
        backend.down = False
        await b.call(backend)
        backend.down = True
        with pytest.raises(BackendUnavailable):
            await b.call(backend)

    run(go())
    assert b.state is BreakerState.CLOSED and b.failures == 1


@pytest.mark.parametrize("exc, attempts, expected_calls", [
    (BackendUnavailable, 3, 3),   # retried until the tries run out
    (DeadlineExceeded, 3, 1),     # not in retry_on: raised at once
])
def test_retry_async_retries_only_listed_errors(exc, attempts, expected_calls):
    backend = Backend(down=True, exc=exc)
    with pytest.raises(exc):  # the original error, not tenacity.RetryError
        run(retry_async(backend, attempts=attempts, backoff_s=0.001, retry_on=(BackendUnavailable,)))
    assert backend.calls == expected_calls


def test_retry_async_recovers_from_a_transient_failure():
    state = {"n": 0}

    async def flaky():
        state["n"] += 1
        if state["n"] < 2:
            raise BackendUnavailable("svc", "blip")
        return 42

    assert run(retry_async(flaky, attempts=3, backoff_s=0.001)) == 42
    assert state["n"] == 2


def test_resilience_counts_one_failure_per_logical_call_and_never_retries_open():
    params = ResilienceParams(retries=2, retry_backoff_s=0.001, breaker_failures=2, breaker_cooldown_s=60)
    r = Resilience("svc", params)
    backend = Backend(down=True)

    async def go():
        for _ in range(2):
            with pytest.raises(BackendUnavailable, match="down"):
                await r.call(backend)
        with pytest.raises(BackendUnavailable, match="circuit breaker open"):
            await r.call(backend)

    run(go())
    assert backend.calls == 6  # 2 logical calls x 3 tries; none once open
    assert r.breaker.state is BreakerState.OPEN and r.breaker.failures == 2


def test_breakers_are_per_instance():
    a = Resilience("a", ResilienceParams(breaker_failures=1, retries=0))
    b = Resilience("b", ResilienceParams(breaker_failures=1, retries=0))
    with pytest.raises(BackendUnavailable):
        run(a.call(Backend(down=True)))
    assert a.breaker.state is BreakerState.OPEN
    assert b.breaker.state is BreakerState.CLOSED


def test_cancelled_trial_reopens_the_circuit():
    clock = Clock()
    b = CircuitBreaker("svc", failure_threshold=1, cooldown_s=1, clock=clock)

    async def hang():
        await asyncio.sleep(10)

    async def go():
        with pytest.raises(BackendUnavailable):
            await b.call(Backend(down=True))
        clock.t += 2
        t = asyncio.create_task(b.call(hang))
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert b.state is BreakerState.OPEN  # a trial that never answered is a failure: cool down again
        clock.t += 2
        assert await b.call(Backend()) == "ok"

    run(go())
    assert b.state is BreakerState.CLOSED


@pytest.mark.parametrize("kwargs, match", [
    ({"failure_threshold": 0}, "failure_threshold"),
    ({"cooldown_s": -1}, "cooldown_s"),
])
def test_invalid_breaker_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CircuitBreaker("svc", **kwargs)


def test_cancelled_calls_count_as_failures_and_open_the_circuit():
    # A frozen backend never raises: the caller's deadline cancels the call. Three such calls open it.
    b = CircuitBreaker("svc", failure_threshold=3, cooldown_s=30, clock=Clock())

    async def hang():
        await asyncio.sleep(10)

    async def go():
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(b.call(hang), timeout=0.01)
        with pytest.raises(BackendUnavailable):
            await b.call(hang)

    run(go())
    assert b.state is BreakerState.OPEN and b.failures == 3
