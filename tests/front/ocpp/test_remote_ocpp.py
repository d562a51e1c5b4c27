"""front/ocpp bridging a real charger/ocpp (task.Clock, an in-memory charge point connection): a backend's remote
start and stop reach the charge point as RemoteStartTransaction / RemoteStopTransaction."""
from __future__ import annotations

import dataclasses

from twisted.internet import defer, task

from evc.charger.ocpp import OcppCharger, OcppChargerConfig
from evc.instance import Context
from evc.front.ocpp import OcppFront, OcppFrontConfig
from evc.front.ocpp.charger import BridgedCharger
from evc.store.memory import MemoryStore
from front_helpers import ROOT, FakeLink, Site, State

ACCEPTED = {"status": "Accepted"}


class ChargePointConn:
    """The charge point's side of a CentralConnection: records what EVC sends and accepts it."""

    close_reason = ""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def call(self, action, payload, priority=False):
        self.calls.append((action, payload))
        return defer.succeed(ACCEPTED)

    def sent(self, action):
        return [p for a, p in self.calls if a == action]


@dataclasses.dataclass
class ServerConfig:
    heartbeat_interval_s: int = 300
    security_profile: int = 0


class Server:
    config = ServerConfig()

    def __init__(self):
        self.next_id = 0

    def register(self, cp_id, charger):
        return lambda: None

    def allocate_transaction_id(self):
        self.next_id += 1
        return defer.succeed(self.next_id)


def fired(d: defer.Deferred):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_remote_start_and_stop_from_the_backend_reach_an_ocpp_charge_point():
    clock = task.Clock()
    clock.advance(1_795_000_000)
    site = Site(MemoryStore(clock=clock), clock)
    server = Server()
    ctx = Context(kind="charger", name="s1", clock=clock, state=State(), store=site.store, root=ROOT,
                  events=site.events, find=site.find,
                  resolve=lambda kind, name: server if kind == "server" else site.resolve(kind, name))
    charger = OcppCharger(ctx, OcppChargerConfig(server="cs", A_max=16, mode="ON", meter_interval_s=0,
                                                 local_list=False))
    charger.startService()
    site.chargers["s1"] = charger
    front = OcppFront(site.ctx("front", "up", site.state), OcppFrontConfig(url="ws://backend.invalid/ocpp",
                                                                           meter_value_sample_interval_s=0))
    site.fronts["up"] = front                # the charge point's StartTransaction is authorized upstream
    b = BridgedCharger(front, "s1", charger)
    b.link = link = FakeLink()
    front.bridged["s1"] = b
    b.start()

    def from_cp(action, payload):
        return charger.ocpp_call(action, payload)

    cp = ChargePointConn()
    charger.ocpp_connected(cp)
    fired(from_cp("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}))
    charger.ocpp_after("BootNotification", {}, {})
    fired(from_cp("StatusNotification", {"connectorId": 1, "status": "Preparing", "errorCode": "NoError"}))
    assert b.current_status()[0] == "Preparing" and charger.status.online

    assert b.handle("RemoteStartTransaction", id_tag="REMOTE1").status == "Accepted"
    b.after("RemoteStartTransaction", id_tag="REMOTE1")
    assert cp.sent("RemoteStartTransaction") == [{"idTag": "REMOTE1", "connectorId": 1}]
    assert not charger.sessions.may_charge            # until the charge point starts its transaction

    started = from_cp("StartTransaction", {"connectorId": 1, "idTag": "REMOTE1", "meterStart": 100,
                                           "timestamp": "2026-01-01T00:00:00Z"})
    assert link.answer("Authorize", {"idTagInfo": ACCEPTED}) == {"idTag": "REMOTE1"}
    local_tx = fired(started)["transactionId"]
    assert charger.sessions.may_charge
    upstream = link.answer("StartTransaction", {"transactionId": 21, "idTagInfo": ACCEPTED})
    assert upstream["idTag"] == "REMOTE1"

    assert b.handle("RemoteStopTransaction", transaction_id=21).status == "Accepted"
    b.after("RemoteStopTransaction", transaction_id=21)
    # The charge point gets its own transaction id, not the backend's.
    assert cp.sent("RemoteStopTransaction") == [{"transactionId": local_tx}]
    stop = link.answer("StopTransaction")
    assert stop["transactionId"] == 21 and stop["reason"] == "Remote"

    fired(from_cp("StopTransaction", {"transactionId": local_tx, "meterStop": 1100, "reason": "Remote",
                                      "timestamp": "2026-01-01T01:00:00Z"}))
    fired(from_cp("StatusNotification", {"connectorId": 1, "status": "Finishing", "errorCode": "NoError"}))
    assert charger.sessions.session is None           # the car is still plugged, but no new session began
    assert not link.pending("StartTransaction")
    fired(charger.stopService())
