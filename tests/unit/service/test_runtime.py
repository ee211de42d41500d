import asyncio

import numpy as np
import pytest
import torch

from service.serving.adapters import ImageAdapter
from service.serving.runtime import Active, Overloaded, Reservoir, Runtime

pytestmark = pytest.mark.unit


class Scale(torch.nn.Module):
    """Multiplies by a constant: which variant answered is visible in the output."""

    def __init__(self, k: float, delay: float = 0.0) -> None:
        super().__init__()
        self.k, self.delay, self.calls = k, delay, []

    def forward(self, x):
        self.calls.append(len(x))
        if self.delay:
            import time

            time.sleep(self.delay)
        return x.flatten(1)[:, :10] * self.k


def _runtime(module, **kw) -> Runtime:
    rt = Runtime(**kw)
    rt.add("m", ImageAdapter("m"), Active("v1", "cpu", module))
    return rt


def _rows(n, value=1.0):
    return np.full((n, 1, 8, 8), value, dtype=np.float32)


def test_requests_are_micro_batched_and_answered_in_order():
    module = Scale(2.0, delay=0.02)
    rt = _runtime(module, max_batch_size=8, max_wait_ms=20)

    async def run():
        results = await asyncio.gather(*(rt.infer("m", _rows(1, float(i))) for i in range(16)))
        await rt.close()
        return results

    results = asyncio.run(run())
    for i, (out, active) in enumerate(results):
        assert out.shape == (1, 10) and out[0, 0] == 2.0 * i and active.variant == "v1"
    assert sum(module.calls) == 16
    assert max(module.calls) == 8 and len(module.calls) <= 4, module.calls


def test_swap_lets_in_flight_batches_finish_on_their_variant():
    slow = Scale(1.0, delay=0.2)
    rt = _runtime(slow, max_batch_size=4, max_wait_ms=1)

    async def run():
        first = asyncio.ensure_future(rt.infer("m", _rows(1)))
        while not slow.calls:  # wait until the first batch is inside its forward
            await asyncio.sleep(0.005)
        old = rt.swap("m", Active("v2", "cpu", Scale(10.0)))
        second = await rt.infer("m", _rows(1))
        out = await first, second, old
        await rt.close()
        return out

    (out1, a1), (out2, a2), old = asyncio.run(run())
    assert (a1.variant, out1[0, 0]) == ("v1", 1.0)
    assert (a2.variant, out2[0, 0]) == ("v2", 10.0)
    assert old.variant == "v1" and rt.models["m"].history == ["v1"]


def test_full_queue_is_overloaded_not_an_error():
    rt = _runtime(Scale(1.0, delay=0.2), max_batch_size=1, max_wait_ms=0, queue_size=2)

    async def run():
        tasks = [asyncio.ensure_future(rt.infer("m", _rows(1))) for _ in range(6)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await rt.close()
        return results

    results = asyncio.run(run())
    overloaded = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, tuple)]
    assert len(overloaded) >= 1 and len(served) >= 2
    assert "requests already queued" in str(overloaded[0])


def test_a_failing_forward_fails_its_batch_and_the_worker_lives_on():
    class Flaky(torch.nn.Module):
        def forward(self, x):
            if float(x.flatten()[0]) < 0:
                raise RuntimeError("boom")
            return x.flatten(1)[:, :10]

    rt = _runtime(Flaky(), max_batch_size=1, max_wait_ms=0)

    async def run():
        with pytest.raises(RuntimeError, match="boom"):
            await rt.infer("m", _rows(1, -1.0))
        out, _ = await rt.infer("m", _rows(1, 3.0))
        await rt.close()
        return out

    assert asyncio.run(run())[0, 0] == 3.0


def test_reservoir_keeps_a_bounded_uniform_sample():
    r = Reservoir(100, seed=1)
    for i in range(10_000):
        r.add(np.array([[i]]))
    sample = np.array([int(x[0]) for x in r.snapshot()])
    assert len(sample) == 100 and r.seen == 10_000
    assert 3_000 < sample.mean() < 7_000  # drawn from the whole stream, not its start


def test_a_lone_request_never_waits_for_a_batch_to_fill():
    """The bounded wait applies only under load: with a 10 s wait, one request still returns."""
    module = Scale(2.0)
    rt = _runtime(module, max_batch_size=8, max_wait_ms=10_000)

    async def run():
        outs = [await asyncio.wait_for(rt.infer("m", _rows(1)), timeout=5) for _ in range(3)]
        await rt.close()
        return outs

    outs = asyncio.run(run())
    assert [o[0].shape for o in outs] == [(1, 10)] * 3 and module.calls == [1, 1, 1]


def test_under_load_a_batch_waits_for_company():
    """After a batch of several requests, the next batch waits (bounded) and fills up."""
    module = Scale(2.0, delay=0.05)
    rt = _runtime(module, max_batch_size=4, max_wait_ms=300)

    async def run():
        first = [asyncio.ensure_future(rt.infer("m", _rows(1))) for _ in range(2)]
        await asyncio.gather(*first)  # a batch of 2: the model is under load
        later = []
        for _ in range(4):  # arrive one by one, 20 ms apart: the wait gathers them
            later.append(asyncio.ensure_future(rt.infer("m", _rows(1))))
            await asyncio.sleep(0.02)
        await asyncio.gather(*later)
        await rt.close()

    asyncio.run(run())
    assert module.calls == [2, 4], module.calls


def test_each_model_forward_runs_with_its_own_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        Runtime._forward(ImageAdapter("m"), Active("v", "cpu", Scale(1.0)), [_rows(1)], threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ---- issue 15 item 2: bounded cost per request, one lane per model -------------------------------


class Gate(torch.nn.Module):
    """A forward that blocks until ``release`` is set (a model stuck on a huge request)."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x):
        self.entered.set()
        assert self.release.wait(30), "never released"
        return x.flatten(1)[:, :10]


def test_a_stuck_model_does_not_block_another_models_forwards():
    gate = Gate()
    rt = Runtime(max_batch_size=8, max_wait_ms=0)
    rt.add("slow", ImageAdapter("slow"), Active("v", "cpu", gate))
    rt.add("fast", ImageAdapter("fast"), Active("v", "cpu", Scale(3.0)))

    async def run():
        stuck = asyncio.ensure_future(rt.infer("slow", _rows(1)))
        while not gate.entered.is_set():
            await asyncio.sleep(0.005)
        # With one forward thread for all models this would wait for the gate (30 s, then fail).
        out, _ = await asyncio.wait_for(rt.infer("fast", _rows(2, 1.0)), 10)
        gate.release.set()
        await stuck
        await rt.close()
        return out

    out = asyncio.run(run())
    assert out.shape == (2, 10) and float(out[0, 0]) == 3.0


def test_rows_over_the_cap_are_413_and_large_requests_split_into_batches():
    from service.serving.errors import PayloadTooLarge

    module = Scale(2.0)
    rt = _runtime(module, max_batch_size=8, max_wait_ms=0, max_rows=50)

    async def run():
        with pytest.raises(PayloadTooLarge, match="at most 50 rows .* this one has 51"):
            await rt.infer("m", _rows(51))
        rows = np.arange(45, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 8, 8))
        out, active = await rt.infer("m", rows.astype(np.float32))
        await rt.close()
        return out, active

    out, active = asyncio.run(run())
    assert module.calls == [8, 8, 8, 8, 8, 5], module.calls  # no forward above max_batch_size
    assert out.shape == (45, 10) and np.array_equal(out[:, 0], 2.0 * np.arange(45))
    assert active.variant == "v1"


def test_a_split_request_runs_entirely_on_the_variant_it_arrived_on():
    slow = Scale(1.0, delay=0.05)
    rt = _runtime(slow, max_batch_size=4, max_wait_ms=0)

    async def run():
        request = asyncio.ensure_future(rt.infer("m", _rows(16)))
        while not slow.calls:  # the first chunk is in its forward: swap now
            await asyncio.sleep(0.001)
        rt.swap("m", Active("v2", "cpu", Scale(10.0)))
        after, a2 = await rt.infer("m", _rows(1))
        out, a1 = await request
        await rt.close()
        return out, a1, after, a2

    out, a1, after, a2 = asyncio.run(run())
    assert a1.variant == "v1" and np.all(out[:, 0] == 1.0), out[:, 0]  # all 16 rows on v1
    assert a2.variant == "v2" and after[0, 0] == 10.0


def test_an_empty_request_answers_an_empty_output_without_a_forward():
    module = Scale(1.0)
    rt = _runtime(module)

    async def run():
        out = await rt.infer("m", np.zeros((0, 1, 8, 8), dtype=np.float32))
        await rt.close()
        return out

    out, active = asyncio.run(run())
    assert out.shape == (0, 10) and module.calls == [] and active.variant == "v1"
