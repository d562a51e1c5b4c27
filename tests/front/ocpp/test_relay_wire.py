"""Over the wire, on a real etcd: a charge point written with the ocpp library (not EVC's simulator) charges at EVC's
server/ocpp; front/ocpp bridges its charger to a backend that is not EVC's (upstream.py, its own process). The backend
receives the charge point's own MeterValues, signed data included, with its transactionId, and StopTransaction's
transactionData; the MeterValueSampleInterval it sets reaches the charge point."""
from __future__ import annotations

import pytest
from ocpp.v16 import call

from cs_rig import asyncio_test, close_cp, connect_cp, until, wait
from evc.ocpp.bridge import to_deferred
from front_helpers import Upstream
from test_ocpp_end_to_end import etcd_site  # noqa: F401 (the fixture: cs_rig's Site on the real etcd)


@pytest.fixture
def upstream(tmp_path):
    up = Upstream(tmp_path).start_blocking()
    yield up
    up.kill()


def sampled(n, energy_Wh):
    return [{"timestamp": f"2026-03-01T10:0{n}:00Z", "sampledValue": [
        {"value": str(energy_Wh), "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
         "unit": "Wh", "location": "Outlet"},
        {"value": "7.3", "context": "Sample.Periodic", "measurand": "Power.Active.Import", "unit": "kW"},
        {"value": "15.8", "context": "Sample.Periodic", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
        {"value": f"OCMF|{{\"RD\":[{{\"RV\":{energy_Wh}}}]}}|{{\"SD\":\"30450221{n}\"}}", "context": "Sample.Periodic",
         "format": "SignedData", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]


def snake(mv_list):
    """upstream.py records payloads as the ocpp library hands them over: keys in snake_case."""
    out = []
    for mv in mv_list:
        out.append({"timestamp": mv["timestamp"], "sampled_value": [dict(sv) for sv in mv["sampledValue"]]})
    return out


@asyncio_test
async def test_the_backend_gets_the_charge_points_own_meter_values_and_sets_its_sample_interval(etcd_site,
                                                                                               upstream):
    site = etcd_site
    await wait(site.put("token/TAG1/config/status", "Accepted"))
    for d in site.server() + site.charger("s1", meter_interval_s=10, local_list=False) + site.configure(
            "front", "up", "ocpp", url=upstream.url, chargers=["s1"], meter_value_sample_interval_s=60,
            reconnect_min_s=0.05, reconnect_max_s=0.3):
        await wait(d)
    await site.start()
    await until(lambda: site.instance("server", "cs") and site.instance("server", "cs").port, "the server listening")
    cp = await connect_cp(site.url("s1"), "s1")
    try:
        await cp.boot()
        await cp.status("Preparing")
        await until(lambda: upstream.calls("BootNotification", cp="s1", answer="result"), "s1 booted upstream")
        started = await cp.call(call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=5000,
                                                      timestamp="2026-03-01T10:00:00Z"))
        tx = started.transaction_id
        await cp.status("Charging")
        await until(lambda: upstream.calls("StartTransaction", answer="result"), "StartTransaction upstream")
        sent = [sampled(1, 5400), sampled(2, 5800)]
        for mv in sent:
            await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=mv))
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=sent[-1]))   # sent again
        end = sampled(3, 6100)
        await cp.call(call.StopTransaction(transaction_id=tx, meter_stop=6100, timestamp="2026-03-01T10:04:00Z",
                                           reason="Local", transaction_data=end))
        await until(lambda: upstream.calls("StopTransaction", answer="result"), "StopTransaction upstream",
                    timeout_s=10)
        start_up = upstream.calls("StartTransaction")[0]
        mvs = [c["payload"] for c in upstream.calls("MeterValues", cp="s1")]
        assert [m["meter_value"] for m in mvs] == [snake(mv) for mv in sent]     # each once, in order, as sent
        stop = upstream.calls("StopTransaction")[0]["payload"]
        up_tx = stop["transaction_id"]
        assert up_tx != tx and all(m["transaction_id"] == up_tx for m in mvs)   # the backend's id, not EVC's
        assert stop["meter_stop"] == 6100 and stop["transaction_data"] == snake(end)
        assert start_up["payload"]["meter_start"] == 5000
        order = [c["action"] for c in upstream.calls(cp="s1")
                 if c["action"] in ("StartTransaction", "MeterValues", "StopTransaction")]
        assert order == ["StartTransaction", "MeterValues", "MeterValues", "StopTransaction"]

        # The backend sets the interval: it reaches the charge point.
        result = await wait(to_deferred(_call(upstream, "s1", "ChangeConfiguration",
                                              key="MeterValueSampleInterval", value="30")))
        assert result["result"]["status"] == "Accepted"
        await until(lambda: ("MeterValueSampleInterval", "30") in cp.configuration,
                    "the backend's interval at the charge point")
    finally:
        await close_cp(cp)


async def _call(upstream, cp, action, **payload):
    import asyncio
    before = len(upstream.results(action))
    upstream.send(cmd="call", cp=cp, action=action, payload=payload)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(upstream.results(action)) <= before:
        if loop.time() > deadline:
            raise AssertionError(f"no answer to {action} from {cp}")
        await asyncio.sleep(0.02)
    return upstream.results(action)[before]
