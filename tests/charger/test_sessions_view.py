"""One session view for every charger type: charger/EVCC_manual and charger/ocpp write the same state/session/*
leaves for the same visit, and `evc status` shows them the same way."""
import dataclasses

from zope.interface import implementer

import cs_fakes
import evse_rig
from evc import cli
from evc.meter.base import IMeter, Reading
from evc.sim.car import SimCar


@implementer(IMeter)
class Meter:
    """The EVSE's own energy meter, set by the test."""

    def __init__(self):
        self.reading = Reading()
        self.callbacks = []

    def subscribe(self, callback):
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def set(self, energy_Wh):
        self.reading = dataclasses.replace(self.reading, energy_Wh=energy_Wh, stale=False, updated=1.0)
        for cb in list(self.callbacks):
            cb(self.reading)


def session_leaves(values: dict) -> dict:
    return {k: v for k, v in values.items() if k.startswith("session/")}


def evcc_manual_visit():
    """Plug at 1000 Wh, charge to 1500 Wh, unplug: the session leaves while charging and after it ended."""
    meter = Meter()
    meter.set(1000)
    rig = evse_rig.Rig(meter_instance=meter, meter="m1").start()
    car = SimCar("car", max_current_A=32)
    car.plug(rig.evse)
    rig.apply(16)
    rig.run_until(lambda: rig.state.get("session/state") == "charging", what="charging")
    meter.set(1500)
    rig.run(1)
    during = session_leaves(rig.state)
    car.unplug()
    rig.run_until(lambda: rig.state.get("session/state") == "ended", what="the session ended")
    return during, session_leaves(rig.state)


def ocpp_visit():
    rig = cs_fakes.Rig(tokens={"TAG1": cs_fakes.token()})
    rig.connect().answer("SetChargingProfile", {"status": "Accepted"})

    def status(value):
        rig.handle("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": value})
    status("Preparing")
    tx = rig.handle("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 1000,
                                         "timestamp": "2026-01-01T10:00:00Z"})["transactionId"]
    status("Charging")
    rig.handle("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
        {"timestamp": "2026-01-01T10:30:00Z", "sampledValue": [{"value": "1500"}]}]})
    during = session_leaves(rig.state.values)
    rig.handle("StopTransaction", {"transactionId": tx, "meterStop": 1500, "timestamp": "2026-01-01T11:00:00Z",
                                   "reason": "EVDisconnected"})
    status("Available")
    return during, session_leaves(rig.state.values)


def shape(leaves: dict) -> dict:
    return {k: type(v).__name__ for k, v in leaves.items()}


def test_both_charger_types_write_the_same_session_leaves():
    evse_during, evse_ended = evcc_manual_visit()
    ocpp_during, ocpp_ended = ocpp_visit()
    assert shape(evse_during) == shape(ocpp_during)
    assert shape(evse_ended) == shape(ocpp_ended)
    assert set(evse_ended) == {"session/id", "session/state", "session/start_time", "session/energy_Wh",
                               "session/stop_time", "session/reason"}
    for leaves in (evse_during, ocpp_during):
        assert (leaves["session/state"], leaves["session/energy_Wh"]) == ("charging", 500)
    for leaves in (evse_ended, ocpp_ended):
        assert (leaves["session/state"], leaves["session/energy_Wh"], leaves["session/reason"]) == \
            ("ended", 500, "EVDisconnected")


def test_evc_status_shows_both_sessions_the_same_way():
    lines = []
    for during, ended in (evcc_manual_visit(), ocpp_visit()):
        lines.append([cli.live_summary(cli.InstanceStatus("charger", "x", state=leaves)) for leaves in (during, ended)])
    assert lines[0] == lines[1] == ["session charging 500 Wh", "session ended 500 Wh (EVDisconnected)"]


def test_evc_status_says_when_a_sessions_meter_went_backwards():
    inst = cli.InstanceStatus("charger", "x", state={"session/state": "ended", "session/energy_Wh": 0,
                                                     "session/reason": "PowerLoss", "session/meter_reset": True})
    assert cli.live_summary(inst) == "session ended 0 Wh (PowerLoss), METER RESET: energy incomplete"
