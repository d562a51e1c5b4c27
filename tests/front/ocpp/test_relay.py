"""front/ocpp relays a charge point's own meter values (charger/ocpp): every sampled value of its MeterValues and of
StopTransaction's transactionData, with the backend's transactionId, through the outbox, in order, exactly once;
the backend's MeterValueSampleInterval reaches the charge point. task.Clock, an in-memory charge point connection."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer, task

from evc.charger.ocpp import OcppCharger, OcppChargerConfig
from evc.front.ocpp import OcppFront, OcppFrontConfig
from evc.front.ocpp.charger import BridgedCharger
from evc.instance import Context
from evc.store.memory import MemoryStore
from front_helpers import ROOT, FakeLink, Site, State
from cs_fakes import token
from test_remote_ocpp import ACCEPTED, ChargePointConn, Server, fired

T0 = 1_795_000_000


def signed(n: int) -> dict:
    return {"value": f"AQIDBAUG{n:04d}", "context": "Sample.Periodic", "format": "SignedData",
            "measurand": "Energy.Active.Import.Register", "unit": "Wh", "location": "Outlet"}


def meter_value(n: int, energy_Wh: int, *, with_signed=False) -> dict:
    values = [{"value": str(energy_Wh), "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
               "unit": "Wh", "location": "Outlet"},
              {"value": "15.9", "context": "Sample.Periodic", "measurand": "Current.Import", "phase": "L2",
               "unit": "A"},
              {"value": "11.2", "context": "Sample.Periodic", "measurand": "Power.Active.Import", "unit": "kW"}]
    if with_signed:
        values.append(signed(n))
    return {"timestamp": f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}Z", "sampledValue": values}


class Bridge:
    """A charger/ocpp and the front/ocpp that bridges it, on one task.Clock."""

    def __init__(self, front_interval_s=1, **charger_config):
        self.clock = clock = task.Clock()
        clock.advance(T0)
        self.site = site = Site(MemoryStore(clock=clock), clock)
        site.tokens["TAG1"] = token()
        server = Server()
        ctx = Context(kind="charger", name="s1", clock=clock, state=State(), store=site.store, root=ROOT,
                      events=site.events, find=site.find,
                      resolve=lambda kind, name: server if kind == "server" else site.resolve(kind, name))
        settings = dict(server="cs", A_max=16, mode="ON", meter_interval_s=0, local_list=False)
        settings.update(charger_config)
        self.charger = charger = OcppCharger(ctx, OcppChargerConfig(**settings))
        charger.startService()
        site.chargers["s1"] = charger
        self.front = front = OcppFront(site.ctx("front", "up", site.state), OcppFrontConfig(
            url="ws://backend.invalid/ocpp", meter_value_sample_interval_s=front_interval_s,
            transaction_message_retry_interval_s=1))
        self.b = b = BridgedCharger(front, "s1", charger)
        b.link = self.link = FakeLink()
        front.bridged["s1"] = b
        b.start()
        self.cp = None
        self.tx = None
        self.connect()

    def from_cp(self, action, payload):
        return fired(self.charger.ocpp_call(action, payload))

    def connect(self):
        self.cp = ChargePointConn()
        self.charger.ocpp_connected(self.cp)
        self.from_cp("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        self.charger.ocpp_after("BootNotification", {}, {})
        self.from_cp("StatusNotification", {"connectorId": 1, "status": "Preparing", "errorCode": "NoError"})

    def start(self, id_tag="TAG1", meter_start=1000, backend_tx=21):
        self.tx = self.from_cp("StartTransaction", {"connectorId": 1, "idTag": id_tag, "meterStart": meter_start,
                                                    "timestamp": "2026-01-01T00:00:00Z"})["transactionId"]
        self.from_cp("StatusNotification", {"connectorId": 1, "status": "Charging", "errorCode": "NoError"})
        if backend_tx is not None:
            self.link.answer("StartTransaction", {"transactionId": backend_tx, "idTagInfo": ACCEPTED})
        return self.tx

    def meter_values(self, mv: dict, tx="open"):
        payload = {"connectorId": 1, "meterValue": [mv]}
        if tx is not None:
            payload["transactionId"] = self.tx if tx == "open" else tx
        return self.from_cp("MeterValues", payload)

    def stop(self, meter_stop, transaction_data=None):
        payload = {"transactionId": self.tx, "meterStop": meter_stop, "timestamp": "2026-01-01T01:00:00Z",
                   "reason": "Local"}
        if transaction_data:
            payload["transactionData"] = transaction_data
        return self.from_cp("StopTransaction", payload)

    def upstream(self, action):
        return [p for a, p, _ in self.link.calls if a == action]


def test_the_charge_points_meter_values_reach_the_backend_as_they_came_with_its_transaction_id():
    r = Bridge(front_interval_s=1)
    r.start(backend_tx=21)
    sent = [meter_value(n, 1000 + 100 * n, with_signed=True) for n in range(1, 4)]
    for mv in sent:
        r.meter_values(mv)
        r.link.answer("MeterValues")
    relayed = r.upstream("MeterValues")
    assert [p["meterValue"] for p in relayed] == [[mv] for mv in sent]     # every field, signed data included
    assert all(p["transactionId"] == 21 and p["connectorId"] == 1 for p in relayed)
    # EVC's own sampling is off for a charger that reports its own: nothing else in ten sample intervals.
    r.clock.advance(10)
    assert len(r.upstream("MeterValues")) == 3
    end = [meter_value(99, 1400), {"timestamp": "2026-01-01T01:00:00Z", "sampledValue": [signed(99)]}]
    r.stop(1400, transaction_data=end)
    stop = r.link.answer("StopTransaction")
    assert stop["transactionId"] == 21 and stop["meterStop"] == 1400 and stop["transactionData"] == end
    assert len(r.b.outbox) == 0 and not r.b.records


def test_meter_values_queued_while_the_backend_is_away_go_out_in_order_after_the_start_it_answers_late():
    r = Bridge()
    r.start(backend_tx=None)                          # StartTransaction sent, not answered yet
    for n in range(1, 6):
        r.meter_values(meter_value(n, 1000 + n))
    r.stop(1005)
    assert [a for a, _, _ in r.link.calls if a != "StatusNotification"] == ["StartTransaction"]
    r.link.answer("StartTransaction", {"transactionId": 77, "idTagInfo": ACCEPTED})
    for _ in range(5):
        r.link.answer("MeterValues")
    r.link.answer("StopTransaction")
    order = [(a, p.get("transactionId")) for a, p, _ in r.link.calls if a != "StatusNotification"]
    assert order == [("StartTransaction", None)] + [("MeterValues", 77)] * 5 + [("StopTransaction", 77)]
    assert [p["meterValue"][0]["timestamp"] for p in r.upstream("MeterValues")] == \
        [meter_value(n, 0)["timestamp"] for n in range(1, 6)]


def test_a_meter_values_the_charge_point_sends_again_is_relayed_once():
    r = Bridge()
    r.start()
    mv = meter_value(1, 1100)
    r.meter_values(mv)
    r.meter_values(mv)                                 # its CALLRESULT was lost: the charge point sends it again
    r.meter_values(meter_value(2, 1200))
    assert [p["meterValue"][0]["timestamp"] for p in r.upstream("MeterValues")] == [mv["timestamp"]]
    r.link.answer("MeterValues")
    r.link.answer("MeterValues")
    assert len(r.upstream("MeterValues")) == 2 and r.b.relayed == 2 and r.b.relayed_again == 1


def test_meter_values_of_another_transaction_or_of_an_unauthorized_one_are_not_relayed():
    r = Bridge()
    r.start()
    r.meter_values(meter_value(1, 1100), tx=9999)     # not the open transaction
    assert r.upstream("MeterValues") == []


def test_meter_values_outside_a_transaction_go_out_without_a_transaction_id_and_are_not_queued():
    r = Bridge()
    r.meter_values(meter_value(1, 900), tx=None)
    (payload,) = r.upstream("MeterValues")
    assert "transactionId" not in payload and payload["meterValue"] == [meter_value(1, 900)]
    assert len(r.b.outbox) == 0


def test_a_charger_without_meter_values_of_its_own_is_still_sampled_by_evc():
    # The counter-check of the first test: EVC's sampler runs for chargers that report none (front_helpers'
    # FakeCharger, like EVCC_manual, has no own_meter_values).
    clock = task.Clock()
    clock.advance(T0)
    site = Site(MemoryStore(clock=clock), clock)
    c = fired(defer.ensureDeferred(site.charger("s1")))
    front = OcppFront(site.ctx("front", "up", site.state), OcppFrontConfig(url="ws://backend.invalid/ocpp",
                                                                           meter_value_sample_interval_s=1))
    b = BridgedCharger(front, "s1", c)
    b.link = link = FakeLink()
    b.start()
    c.plug()
    c.authorize("TAG1")
    link.answer("StartTransaction", {"transactionId": 5, "idTagInfo": ACCEPTED})
    c.charge(16.0, energy_Wh=10)
    clock.advance(1.5)
    (mv,) = [p for a, p, _ in link.calls if a == "MeterValues"]
    assert mv["transactionId"] == 5 and mv["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Periodic"


def test_the_backends_meter_value_sample_interval_reaches_the_charge_point_now_and_after_a_reconnect():
    r = Bridge(meter_interval_s=10)
    assert ("MeterValueSampleInterval", "10") in [(p["key"], p["value"]) for p in r.cp.sent("ChangeConfiguration")]
    assert r.b.handle("ChangeConfiguration", key="MeterValueSampleInterval", value="30").status == "Accepted"
    assert r.cp.sent("ChangeConfiguration")[-1] == {"key": "MeterValueSampleInterval", "value": "30"}
    r.charger.ocpp_disconnected(r.cp)
    r.connect()
    intervals = [p["value"] for p in r.cp.sent("ChangeConfiguration") if p["key"] == "MeterValueSampleInterval"]
    assert intervals == ["30"]                         # the backend's value, not config's 10
    assert r.b.configuration()[1] == {"key": "MeterValueSampleInterval", "readonly": False, "value": "30"}


def test_the_backends_interval_is_kept_and_set_again_on_the_charger_after_the_front_restarts():
    r = Bridge()
    r.b.handle("ChangeConfiguration", key="MeterValueSampleInterval", value="45")
    r.charger.upstream_meter_interval_s = None
    fired(r.b.stop())
    b2 = BridgedCharger(r.front, "s1", r.charger)
    b2.link = FakeLink()
    b2.start()
    r.clock.advance(1)
    assert r.charger.upstream_meter_interval_s == 45
    assert r.cp.sent("ChangeConfiguration")[-1] == {"key": "MeterValueSampleInterval", "value": "45"}


# --- a property: messy sequences, every value once, in order ---

STEPS = st.lists(st.one_of(
    st.just(("mv",)),                   # a new MeterValues from the charge point
    st.just(("resend",)),               # the charge point sends its last MeterValues again
    st.just(("answer",)),               # the backend answers the oldest pending CALL
    st.just(("refuse",)),               # the backend answers it with a CALLERROR (retried after 1 s)
    st.just(("drop",)),                 # the link drops (what is in flight is resent after the next boot)
    st.just(("up",)),                   # the link is back and booted
    st.just(("tick",)),                 # 1 s passes
), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_whatever_the_link_and_the_charge_point_do_each_value_is_accepted_once_in_order(steps):
    r = Bridge()
    r.start(backend_tx=None)
    cp_sent: list[dict] = []
    accepted: list[tuple[str, dict]] = []

    def answer(ok=True):
        pending = [(a, p, d) for a, p, d in r.link.pending() if a != "StatusNotification"]
        for a, p, d in r.link.pending("StatusNotification"):
            d.callback({})
        if not pending:
            return
        a, p, d = pending[0]
        if ok:
            accepted.append((a, p))
            d.callback({"transactionId": 300, "idTagInfo": ACCEPTED} if a == "StartTransaction" else {})
        else:
            from evc.front.ocpp.link import CallFailed
            d.errback(CallFailed(a, "InternalError"))

    def drop():
        r.link.state = "down"
        from evc.front.ocpp.link import LinkDown
        for a, p, d in r.link.pending():
            d.errback(LinkDown("dropped"))
        r.b.link_state("down")

    def up():
        if r.link.state != "accepted":
            r.link.state = "accepted"
            r.b.link_state("accepted")
            r.b.booted()

    n = 0
    for (step,) in steps:
        if step == "mv":
            n += 1
            mv = meter_value(n, 1000 + n, with_signed=n % 3 == 0)
            cp_sent.append(mv)
            r.meter_values(mv)
        elif step == "resend" and cp_sent:
            r.meter_values(cp_sent[-1])
        elif step == "answer":
            answer()
        elif step == "refuse":
            answer(ok=False)
        elif step == "drop":
            drop()
        elif step == "up":
            up()
        elif step == "tick":
            r.clock.advance(1)
    r.stop(1000 + n, transaction_data=[meter_value(n + 1, 1000 + n)])
    up()
    for _ in range(4 * len(cp_sent) + 10):             # then the backend answers everything
        r.clock.advance(1)
        answer()
    actions = [a for a, _ in accepted]
    assert actions == ["StartTransaction"] + ["MeterValues"] * len(cp_sent) + ["StopTransaction"]
    relayed = [p for a, p in accepted if a == "MeterValues"]
    assert [p["meterValue"] for p in relayed] == [[mv] for mv in cp_sent]
    assert all(p["transactionId"] == 300 for a, p in accepted if a != "StartTransaction")
    assert accepted[-1][1]["transactionData"] == [meter_value(n + 1, 1000 + n)]
    assert len(r.b.outbox) == 0
