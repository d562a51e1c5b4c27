"""The asyncio <-> Deferred bridge on the running asyncio reactor."""
import asyncio

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from evc.ocpp.bridge import from_deferred, loop, to_deferred


@pytest_twisted.ensureDeferred
async def test_a_coroutine_result_arrives_as_a_deferred():
    async def work():
        await asyncio.sleep(0)
        return 42
    assert await to_deferred(work()) == 42


@pytest_twisted.ensureDeferred
async def test_an_asyncio_exception_arrives_as_a_failure():
    async def boom():
        raise ValueError("bad frame")
    with pytest.raises(ValueError, match="bad frame"):
        await to_deferred(boom())


@pytest_twisted.ensureDeferred
async def test_asyncio_code_can_wait_for_a_deferred():
    d = task.deferLater(reactor, 0, lambda: "from twisted")

    async def waiter():
        return await from_deferred(d)
    assert await to_deferred(waiter()) == "from twisted"


@pytest_twisted.ensureDeferred
async def test_cancelling_the_deferred_cancels_the_task():
    started, cancelled = asyncio.Event(), []

    async def forever():
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
    d = to_deferred(forever())
    await to_deferred(started.wait())
    d.cancel()
    with pytest.raises(defer.CancelledError):
        await d
    await to_deferred(asyncio.sleep(0))
    assert cancelled == [True]


def test_the_loop_is_the_reactors_own():
    assert loop(reactor) is reactor._asyncioEventloop
