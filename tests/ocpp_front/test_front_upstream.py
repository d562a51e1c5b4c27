"""front/ocpp against an upstream backend that is not ours (tests/ocpp_front/upstream.py, a separate process)."""
from __future__ import annotations

import pytest
import pytest_twisted

from evc.store.memory import MemoryStore
from evc.testing import wait_for
from front_helpers import Site, Upstream, booted


def _reactor():
    from twisted.internet import reactor
    return reactor


@pytest.fixture
def upstream(tmp_path):
    up = Upstream(tmp_path)
    yield up
    up.kill()


@pytest_twisted.ensureDeferred
async def test_a_session_becomes_a_transaction_upstream_with_status_and_meter_values(upstream):
    await upstream.start()
    site = Site(MemoryStore(), _reactor())
    s1 = await site.charger("s1")
    front = site.front(url=upstream.url, meter_value_sample_interval_s=1)
    try:
        b = await booted(front)
        boot = upstream.calls("BootNotification", cp="s1")[0]["payload"]
        assert boot["charge_point_vendor"] == "EVC" and boot["charge_point_serial_number"] == "s1"
        await wait_for(lambda: any(c["payload"].get("status") == "Available"
                                   for c in upstream.calls("StatusNotification")), 5, "Available")
        s1.plug()
        s1.authorize("TAG1")
        s1.charge(16.0, energy_Wh=10)
        await wait_for(lambda: upstream.calls("StartTransaction", answer="result"), 5, "StartTransaction")
        start = upstream.calls("StartTransaction")[0]["payload"]
        assert start["id_tag"] == "TAG1" and start["connector_id"] == 1 and start["meter_start"] == 1000
        await wait_for(lambda: any(c["payload"].get("status") == "Charging"
                                   for c in upstream.calls("StatusNotification")), 5, "Charging")
        await wait_for(lambda: upstream.calls("MeterValues"), 5, "MeterValues")
        mv = upstream.calls("MeterValues")[0]["payload"]
        assert mv["transaction_id"] == start["transaction_id"]
        s1.charge(16.0, energy_Wh=500)
        s1.unplug()
        await wait_for(lambda: upstream.calls("StopTransaction"), 5, "StopTransaction")
        stop = upstream.calls("StopTransaction")[0]["payload"]
        assert stop["transaction_id"] == start["transaction_id"]
        assert stop["meter_stop"] == 1510 and stop["reason"] == "EVDisconnected"
        await wait_for(lambda: len(b.outbox) == 0 and not b.records, 5, "the outbox drained")
        assert site.state.values["s1/connection"] == "accepted"
        assert site.state.values["s1/outbox"] == 0
    finally:
        await site.stop_front()
