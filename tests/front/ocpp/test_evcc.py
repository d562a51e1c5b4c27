"""front/ocpp bridging a real charger/EVCC_manual (on a simulated EVSE, task.Clock): remote start and stop work."""
from __future__ import annotations

from evc.front.ocpp import OcppFront, OcppFrontConfig
from evc.front.ocpp.charger import BridgedCharger
from evc.sim.evse import SimEvse
from evc.store.memory import MemoryStore
from evse_rig import Rig as EvseRig
from front_helpers import FakeLink, Site


def test_remote_start_and_stop_drive_an_evcc_manual_charger_with_token_auth():
    evse_rig = EvseRig(auth="token", evse=SimEvse("s1", unit=1, default_current_A=0)).start()
    evse_rig.clock.advance(1_795_000_000)
    site = Site(MemoryStore(), evse_rig.clock)
    site.events = evse_rig.events                        # the charger's sessions arrive on the front's bus
    site.chargers["s1"] = evse_rig.charger
    front = OcppFront(site.ctx("front", "up", site.state), OcppFrontConfig(url="ws://backend.invalid/ocpp",
                                                                           meter_value_sample_interval_s=0))
    b = BridgedCharger(front, "s1", evse_rig.charger)
    b.link = link = FakeLink()
    front.bridged["s1"] = b
    b.start()

    evse_rig.car.plug(evse_rig.evse)
    evse_rig.run(2)
    assert b.current_status()[0] == "Preparing" and not evse_rig.charger.wants_current()
    assert b.handle("RemoteStartTransaction", id_tag="REMOTE1").status == "Accepted"
    b.after("RemoteStartTransaction", id_tag="REMOTE1")
    evse_rig.run(1)
    assert evse_rig.charger.authorized and evse_rig.charger.wants_current()
    start = link.answer("StartTransaction", {"transactionId": 21, "idTagInfo": {"status": "Accepted"}})
    assert start["idTag"] == "REMOTE1"

    assert b.handle("RemoteStopTransaction", transaction_id=21).status == "Accepted"
    b.after("RemoteStopTransaction", transaction_id=21)
    evse_rig.run(1)
    assert not evse_rig.charger.authorized and not evse_rig.charger.wants_current()
    stop = link.answer("StopTransaction")
    assert stop["transactionId"] == 21 and stop["reason"] == "Remote"
    assert b.current_status()[0] == "Finishing"          # the car is still plugged
    evse_rig.charger.stopService()
