"""What one CALL costs the reactor's loop: no thread hand-offs on the way (a thousand chargers stalled the loop)."""
import asyncio
import concurrent.futures

import pytest
import pytest_twisted

from cs_rig import RawClient, Site, asyncio_test, until
from evc.charger.ocpp import OcppCharger
from evc.ocpp.bridge import to_deferred


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self):
        super().__init__(max_workers=2)
        self.submitted = []

    def submit(self, fn, *args, **kwargs):
        self.submitted.append(getattr(fn, "__name__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def site(monkeypatch):
    monkeypatch.setattr(OcppCharger, "boot_wait_s", 60.0)     # no set-up CALLs of EVC's mixed in
    s = Site()
    yield s
    pytest_twisted.blockon(to_deferred(s.stop()))


@asyncio_test
async def test_calls_in_and_their_replies_are_validated_without_a_thread_hand_off(site):
    """Payload validation (jsonschema, pure Python under the GIL) runs inline: a thread gains nothing and each
    hand-off made every CALL wait for the GIL; the replies are still checked (a bad payload gets its CALLERROR)."""
    site.server()
    site.charger("cp1")
    await site.start()
    raw = await RawClient.open(site.url("cp1"), "cp1")
    await until(lambda: site.instance("charger", "cp1").conn is not None, "connected")
    loop = asyncio.get_running_loop()
    counting = CountingExecutor()
    loop.set_default_executor(counting)
    try:
        boot = await raw.call("BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"})
        assert boot[0] == 3 and boot[2]["status"] == "Accepted"
        for _ in range(5):
            assert (await raw.call("Heartbeat", {}))[0] == 3
        bad = await raw.call("BootNotification", {"chargePointVendor": 7, "chargePointModel": "m"})
        assert bad[0] == 4 and bad[2] == "TypeConstraintViolation"
        assert counting.submitted == []
    finally:
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor())
        counting.shutdown(wait=False)
        await raw.close()
