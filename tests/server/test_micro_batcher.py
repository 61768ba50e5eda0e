"""workzone.micro_batcher: batches form under load, a lone job does not wait, the queue is bounded,
shutdown drains."""

from __future__ import annotations

import asyncio
import time

import pytest

from workzone.micro_batcher import BatchPolicy, MicroBatcher
from workzone.errors import Overloaded, ShuttingDown


def run(coro):
    return asyncio.run(coro)


class Recorder:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.delay = delay
        self.fail = fail

    async def __call__(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ValueError("boom")
        return [x * 10 for x in items]


def test_concurrent_jobs_share_batches_and_keep_order() -> None:
    rec = Recorder(delay=0.05)

    async def main() -> list[int]:
        async with MicroBatcher(rec, BatchPolicy(max_batch_size=8, max_wait_s=0.01)) as b:
            first = b.submit(0)
            await asyncio.sleep(0.01)  # the first batch is running: the rest queue behind it
            rest = [b.submit(i) for i in range(1, 12)]
            return list(await asyncio.gather(first, *rest))

    assert run(main()) == [i * 10 for i in range(12)]
    assert rec.sizes[0] == 1
    assert max(rec.sizes) == 8  # the queued jobs ran as full batches
    assert sum(rec.sizes) == 12


def test_lone_job_does_not_wait_for_a_batch() -> None:
    rec = Recorder()

    async def main() -> float:
        async with MicroBatcher(rec, BatchPolicy(max_batch_size=64, max_wait_s=0.5)) as b:
            t = time.perf_counter()
            await b.submit(1)
            return time.perf_counter() - t

    assert run(main()) < 0.25  # far below max_wait_s: no arrival history means no waiting


def test_wait_adapts_to_arrival_rate() -> None:
    async def main() -> tuple[float, float]:
        b: MicroBatcher[int, int] = MicroBatcher(Recorder(), BatchPolicy(max_batch_size=16, max_wait_s=0.02))
        b.start()
        b._workers[0].cancel()  # keep jobs queued: only the arrival statistics matter here
        for _ in range(20):  # a burst: arrivals microseconds apart
            b.submit_many([0])
        busy = b.current_wait_s(1)
        b._gap_ewma = 1.0  # one arrival a second: nobody else is coming within max_wait
        idle = b.current_wait_s(1)
        return busy, idle

    busy, idle = run(main())
    assert 0 < busy <= 0.02
    assert idle == 0.0


def test_full_queue_refuses_with_retry_after_and_all_or_nothing() -> None:
    rec = Recorder(delay=0.2)

    async def main() -> None:
        policy = BatchPolicy(max_batch_size=1, max_queue=2, retry_after_s=3)
        async with MicroBatcher(rec, policy) as b:
            running = b.submit(0)
            await asyncio.sleep(0.02)  # job 0 is running, the queue is empty
            queued = b.submit_many([1, 2])
            with pytest.raises(Overloaded) as info:
                b.submit(3)
            assert info.value.retry_after_s == 3
            assert b.depth == 2
            await asyncio.gather(running, *queued)
            with pytest.raises(Overloaded):
                b.submit_many([4, 5, 6])  # more than the whole queue: refused without queuing any
            assert b.depth == 0

    run(main())


def test_shutdown_drains_queued_work_then_refuses() -> None:
    rec = Recorder(delay=0.05)

    async def main() -> None:
        b: MicroBatcher[int, int] = MicroBatcher(rec, BatchPolicy(max_batch_size=2))
        b.start()
        futures = b.submit_many(list(range(6)))
        await b.aclose(timeout=5)
        assert [f.result() for f in futures] == [i * 10 for i in range(6)]
        with pytest.raises(ShuttingDown):
            b.submit(7)

    run(main())


def test_batch_failure_reaches_every_caller() -> None:
    async def main() -> None:
        async with MicroBatcher(Recorder(fail=True), BatchPolicy()) as b:
            results = await asyncio.gather(*b.submit_many([1, 2]), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)

    run(main())


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_wait_s": -1}, {"max_queue": 0}, {"workers": 0}])
def test_policy_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BatchPolicy(**kwargs)
