"""front/ocpp against an upstream backend that is not ours (tests/front/ocpp/upstream.py, a separate process)."""
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


def _actions(upstream, cp="s1", skip=("Heartbeat", "StatusNotification", "BootNotification")):
    return [c["action"] for c in upstream.calls(cp=cp) if c["action"] not in skip]


def _transaction_calls(upstream, cp="s1"):
    return [c for c in upstream.calls(cp=cp, answer="result")
            if c["action"] in ("StartTransaction", "MeterValues", "StopTransaction")]


@pytest_twisted.ensureDeferred
async def test_an_upstream_that_is_down_at_start_gets_everything_once_it_is_up(upstream):
    site = Site(MemoryStore(), _reactor())
    s1 = await site.charger("s1")
    front = site.front(url=upstream.url)
    try:
        await wait_for(lambda: "cannot connect" in site.state.values.get("s1/connection_error", ""), 5,
                       "the connection error in state")
        s1.plug()
        s1.authorize("TAG1")
        s1.charge(16.0, energy_Wh=100)
        s1.unplug()
        assert site.state.values["s1/outbox"] == 2
        await upstream.start()
        await wait_for(lambda: len(_transaction_calls(upstream)) == 2, 10, "the queued transaction")
        assert _actions(upstream) == ["StartTransaction", "StopTransaction"]
        calls = upstream.calls(cp="s1")
        assert calls[0]["action"] == "BootNotification"       # nothing before the boot
        start, stop = _transaction_calls(upstream)
        assert stop["payload"]["transaction_id"] == start["payload"]["transaction_id"]
    finally:
        await site.stop_front()


@pytest_twisted.ensureDeferred
async def test_a_backend_killed_mid_session_gets_every_message_once_in_order_after_it_is_back(
        upstream, etcd_session, etcd_root):
    from evc.store.etcd import EtcdStore
    store = EtcdStore(etcd_session.url, _reactor())
    site = Site(store, _reactor(), root=etcd_root)
    await upstream.start()
    s1 = await site.charger("s1")
    front = site.front(url=upstream.url, meter_value_sample_interval_s=1)
    try:
        b = await booted(front)
        s1.plug()
        s1.authorize("TAG1")
        s1.charge(16.0, energy_Wh=100)
        await wait_for(lambda: upstream.calls("MeterValues") and not len(b.outbox) and not b._sending, 10,
                       "a first meter value delivered")
        upstream.kill()                   # right after a delivery: nothing is in flight
        before = len(_transaction_calls(upstream))
        await wait_for(lambda: not b.link.accepted, 5, "the front seeing the backend gone")
        s1.charge(16.0, energy_Wh=200)
        await wait_for(lambda: len(b.outbox) >= 2, 5, "meter values queued during the outage")
        s1.unplug()
        queued = len(b.outbox)
        assert [e.action for e in b.outbox.entries][-1] == "StopTransaction"
        await upstream.start()
        await wait_for(lambda: len(_transaction_calls(upstream)) >= before + queued, 15, "the backlog delivered")
        await wait_for(lambda: not len(b.outbox), 5, "the outbox empty")
        calls = _transaction_calls(upstream)
        assert [c["action"] for c in calls[before:]] == ["MeterValues"] * (queued - 1) + ["StopTransaction"]
        tx = calls[0]["payload"]["transaction_id"]
        assert tx == 1000 and all(c["payload"]["transaction_id"] == tx for c in calls[1:])
        stamps = [c["payload"]["meter_value"][0]["timestamp"] for c in calls if c["action"] == "MeterValues"]
        assert len(stamps) == len(set(stamps)) and stamps == sorted(stamps)     # each once, in order
        assert calls[-1]["payload"]["meter_stop"] == 1300
    finally:
        await site.stop_front()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_evc_restarted_during_an_outage_delivers_the_persisted_outbox(upstream, etcd_session, etcd_root):
    from evc.store.etcd import EtcdStore
    store = EtcdStore(etcd_session.url, _reactor())
    site = Site(store, _reactor(), root=etcd_root)
    s1 = await site.charger("s1")
    front = site.front(url=upstream.url, meter_value_sample_interval_s=1)
    try:
        b = front.bridged["s1"]
        await b.ready
        s1.plug()
        s1.authorize("TAG1")
        s1.charge(16.0, energy_Wh=100)
        await wait_for(lambda: len(b.outbox) >= 3 and not b.outbox.unwritten, 5, "messages queued and written")
        queued = [e.action for e in b.outbox.entries]
        # EVC stops (front and charger) and starts again on the same etcd; the car is still plugged.
        await site.stop_front()
        await s1.stop()
        site.chargers.clear()
        s1 = await site.charger("s1", meter_Wh=s1.meter_Wh)
        assert s1.sessions.session is not None
        front = site.front(url=upstream.url, meter_value_sample_interval_s=0)
        b = front.bridged["s1"]
        await b.ready
        assert [e.action for e in b.outbox.entries] == queued
        s1.set(vehicle="charging")            # the first report after the restart: the session continues
        s1.charge(16.0, energy_Wh=50)
        s1.unplug()
        await upstream.start()
        await wait_for(lambda: len(_transaction_calls(upstream)) == len(queued) + 1, 15, "the backlog delivered")
        assert _actions(upstream) == queued + ["StopTransaction"]
        calls = _transaction_calls(upstream)
        assert calls[-1]["payload"]["transaction_id"] == calls[0]["payload"]["transaction_id"]
        await wait_for(lambda: not len(b.outbox) and not b.outbox.unwritten, 5, "the outbox empty, in etcd too")
        left = await store.range(f"{etcd_root}/front/up/data/", prefix=True)
        assert [kv.key for kv in left.kvs if "/outbox/" in kv.key or "/transactions/" in kv.key] == []
    finally:
        if "up" in site.fronts:
            await site.stop_front()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_transaction_message_the_backend_refuses_is_retried_then_given_up_and_logged(upstream, log_events):
    await upstream.start(callerror={"StartTransaction": 3})
    site = Site(MemoryStore(), _reactor())
    s1 = await site.charger("s1")
    front = site.front(url=upstream.url, transaction_message_attempts=3, transaction_message_retry_interval_s=0)
    try:
        b = await booted(front)
        s1.plug()
        s1.authorize("TAG1")
        await wait_for(lambda: b.given_up == 1, 10, "the StartTransaction given up")
        assert len(upstream.calls("StartTransaction", answer="error")) == 3
        assert not upstream.calls("StartTransaction", answer="result")
        assert "InternalError" in site.state.values["s1/last_given_up"]
        assert any(e.get("log_level").name == "error" and "gave up" in e.get("log_format", "") for e in log_events)
        s1.unplug()                           # its Stop cannot name a transaction: given up without sending
        await wait_for(lambda: b.given_up == 2 and not len(b.outbox), 5, "the Stop given up")
        assert not upstream.calls("StopTransaction")
        s1.plug()                             # the next session goes through
        s1.authorize("TAG2")
        await wait_for(lambda: upstream.calls("StartTransaction", answer="result"), 5, "the next start")
        assert b.link.connects == 1           # CALLERRORs never cost the connection
    finally:
        await site.stop_front()


@pytest_twisted.ensureDeferred
async def test_malformed_frames_and_unknown_actions_get_a_callerror_and_the_connection_lives(upstream):
    await upstream.start()
    site = Site(MemoryStore(), _reactor())
    await site.charger("s1")
    front = site.front(url=upstream.url)
    try:
        b = await booted(front)
        frames = ['not json', '{"an": "object"}', '[2, "m1", "FooBar", {}]', '[2, "m2", "GetLocalListVersion", {}]',
                  '[2, "m3", "Reset", {"type": "Bogus"}]', '[2, "m4", "ChangeAvailability", {}]', '[9, "m5"]',
                  '[2, 17, "Reset", {"type": "Soft"}]']
        for frame in frames:
            upstream.send(cmd="raw", cp="s1", frame=frame)

        def replies():
            return [r["frame"] for r in upstream.lines() if r.get("kind") == "reply" and r["frame"][0] == 4]

        await wait_for(lambda: len(replies()) == len(frames), 5, "a CALLERROR for every bad frame")
        codes = {r[1]: r[2] for r in replies()}
        assert codes["m1"] == "NotImplemented"             # unknown action
        assert codes["m2"] == "NotSupported"               # known, not done by EVC
        assert codes["m3"] in ("PropertyConstraintViolation", "FormatViolation")
        assert codes["m4"] in ("OccurenceConstraintViolation", "ProtocolError")
        assert codes["m5"] == "PropertyConstraintViolation"   # no such message type
        # Without a usable message id the answer carries "-1": not JSON, not an array, a number as id.
        assert sorted(r[2] for r in replies() if r[1] == "-1") == ["FormatViolation", "FormatViolation",
                                                                    "ProtocolError"]
        assert all(r[0] == 4 and isinstance(r[3], str) and isinstance(r[4], dict) for r in replies())
        result = await upstream.call("s1", "GetConfiguration", key=["HeartbeatInterval"])
        assert result["result"]["configuration_key"][0]["value"] == "300"
        assert b.link.connects == 1 and b.link.accepted
        assert site.state.values["s1/last_action"] == "GetConfiguration: answered"
    finally:
        await site.stop_front()


@pytest_twisted.ensureDeferred
async def test_a_slow_backend_never_keeps_a_token_waiting_beyond_the_bound(upstream):
    from evc.auth import authorize
    await upstream.start(authorize_delay_s=30)
    site = Site(MemoryStore(), _reactor())
    await site.charger("s1")
    site.tokens["LOCAL1"] = type("Tok", (), {"config": type("C", (), {"status": "Accepted"})()})()
    front = site.front(url=upstream.url, authorize_timeout_s=0.5, response_timeout_s=2)
    try:
        await booted(front)
        reactor = _reactor()
        t0 = reactor.seconds()
        result = await authorize(site.ctx("reader", "r1"), "LOCAL1", "s1")
        elapsed = reactor.seconds() - t0
        assert result.status == "Accepted" and result.source == "local"      # offline_auth local: the token list
        assert 0.4 < elapsed < 1.5
        assert upstream.calls("Authorize")                                    # it was asked, just too slowly
        unknown = await authorize(site.ctx("reader", "r1"), "NOBODY", "s1")
        assert unknown.status == "Invalid"
    finally:
        await site.stop_front()


@pytest_twisted.ensureDeferred
async def test_boot_pending_and_rejected_are_honoured_until_accepted(upstream):
    await upstream.start(boot="Pending", boot_interval=1)
    site = Site(MemoryStore(), _reactor())
    s1 = await site.charger("s1")
    front = site.front(url=upstream.url)
    try:
        await wait_for(lambda: len(upstream.calls("BootNotification")) >= 2, 5, "a second boot after the interval")
        assert site.state.values["s1/connection"] == "pending"
        result = await upstream.call("s1", "RemoteStartTransaction", id_tag="X")
        assert result["result"]["status"] == "Rejected"                      # no remote start while Pending
        upstream.send(cmd="behave", set={"boot": "Rejected"})
        await wait_for(lambda: site.state.values["s1/connection"] == "rejected", 5, "rejected")
        s1.plug()                                                             # nothing may be sent meanwhile
        upstream.send(cmd="behave", set={"boot": "Accepted"})
        await booted(front)
        await wait_for(lambda: upstream.calls("StatusNotification"), 5, "the status after the boot")
        actions = [c["action"] for c in upstream.calls(cp="s1")]
        first_other = next(i for i, a in enumerate(actions) if a != "BootNotification")
        assert all(a == "BootNotification" for a in actions[:first_other]) and first_other >= 3
        assert upstream.calls("BootNotification")[-1]["answer"] == "result"
    finally:
        await site.stop_front()


@pytest_twisted.ensureDeferred
async def test_tls_with_a_wrong_ca_is_refused_and_the_right_ca_and_password_connect(tmp_path):
    from tls_pki import make_pki
    pki = make_pki(str(tmp_path))
    upstream = Upstream(tmp_path, tls=(pki.server_cert, pki.server_key), password="0123456789abcdef")
    await upstream.start()
    site = Site(MemoryStore(), _reactor())
    await site.charger("s1")
    await site.charger("s2")
    try:
        site.front("wrong-ca", url=upstream.url, chargers=["s1"], ca_file=pki.other_ca,
                   password="0123456789abcdef")
        await wait_for(lambda: "TLS" in site.state.values.get("s1/connection_error", ""), 5, "a TLS refusal")
        assert "certificate" in site.state.values["s1/connection_error"]
        await site.stop_front("wrong-ca")
        site.front("bad-password", url=upstream.url, chargers=["s2"], ca_file=pki.ca, password="not the key")
        await wait_for(lambda: "401" in site.state.values.get("s2/connection_error", ""), 5, "an HTTP 401")
        await site.stop_front("bad-password")
        assert not [r for r in upstream.lines() if r.get("kind") == "connected"]
        front = site.front("right", url=upstream.url, chargers=["s1"], ca_file=pki.ca, password="0123456789abcdef")
        await booted(front)
        connected = [r for r in upstream.lines() if r.get("kind") == "connected"]
        assert connected[0]["auth"].startswith("Basic ")
        await site.stop_front("right")
    finally:
        upstream.kill()


@pytest_twisted.ensureDeferred
async def test_commands_over_the_wire_remote_start_profiles_and_composite_schedule(upstream):
    await upstream.start()
    site = Site(MemoryStore(), _reactor())
    caps = []
    site.events.subscribe(("cap",), lambda topic, event: caps.append((topic[1], event)))
    s1 = await site.charger("s1")
    front = site.front(url=upstream.url)
    try:
        b = await booted(front)
        s1.plug()
        result = await upstream.call("s1", "RemoteStartTransaction", id_tag="REMOTE1", connector_id=1)
        assert result["result"]["status"] == "Accepted"
        await wait_for(lambda: upstream.calls("StartTransaction", answer="result"), 5, "the remote start's start")
        assert upstream.calls("StartTransaction")[0]["payload"]["id_tag"] == "REMOTE1"
        profile = {"chargingProfileId": 3, "stackLevel": 2, "chargingProfilePurpose": "ChargePointMaxProfile",
                   "chargingProfileKind": "Absolute",
                   "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": "2020-01-01T00:00:00Z",
                                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.5}]}}
        result = await upstream.call("s1", "SetChargingProfile", connector_id=0, cs_charging_profiles=profile)
        assert result["result"]["status"] == "Accepted"
        assert caps[-1] == ("s1", ("front/up", 10.5))
        result = await upstream.call("s1", "GetCompositeSchedule", connector_id=1, duration=3600,
                                     charging_rate_unit="A")
        schedule = result["result"]["charging_schedule"]
        assert result["result"]["status"] == "Accepted"
        # (the backend's library parses the schedule as Decimal; its record writes that as text)
        assert [(p["start_period"], float(p["limit"])) for p in schedule["charging_schedule_period"]] == [(0, 10.5)]
        result = await upstream.call("s1", "ChangeConfiguration", key="MeterValueSampleInterval", value="1")
        assert result["result"]["status"] == "Accepted"
        await wait_for(lambda: upstream.calls("MeterValues", answer="result"), 5, "meter values at the new interval")
        result = await upstream.call("s1", "TriggerMessage", requested_message="StatusNotification")
        assert result["result"]["status"] == "Accepted"
        stop = await upstream.call("s1", "RemoteStopTransaction",
                                   transaction_id=upstream.calls("StartTransaction")[0]["payload"]["transaction_id"])
        assert stop["result"]["status"] == "Accepted"
        await wait_for(lambda: upstream.calls("StopTransaction"), 5, "the remote stop's stop")
        assert upstream.calls("StopTransaction")[0]["payload"]["reason"] == "Remote"
        await wait_for(lambda: upstream.calls("StatusNotification")[-1]["payload"]["status"] == "Finishing", 5,
                       "Finishing while the car stays plugged")
        assert site.state.values["s1/last_action"] == "RemoteStopTransaction: Accepted"
        assert b.link.connects == 1
    finally:
        await site.stop_front()


@pytest_twisted.ensureDeferred
async def test_star_follows_chargers_added_later_and_a_restarted_charger_keeps_its_link(upstream):
    await upstream.start()
    site = Site(MemoryStore(), _reactor())
    s1 = await site.charger("s1")
    front = site.front(url=upstream.url, identity="SITE-{name}")
    try:
        await booted(front)
        assert upstream.calls("BootNotification")[0]["cp"] == "SITE-s1"
        await site.charger("s2")
        b2 = await booted(front, "s2")
        assert b2.link.settings.identity == "SITE-s2"
        # The charger's instance restarts (a config change): the same front keeps the same websocket.
        site.events.publish(("instance", "charger", "s1"), ("stopped", s1))
        await s1.stop()
        s1 = await site.charger("s1")
        b1 = front.bridged["s1"]
        assert b1.charger is s1 and b1.link.connects == 1
        s1.plug()
        await wait_for(lambda: any(c["payload"]["status"] == "Preparing"
                                   for c in upstream.calls("StatusNotification", cp="SITE-s1")), 5, "Preparing")
        result = await upstream.call("SITE-s1", "Reset", type="Soft")
        assert result["result"]["status"] == "Accepted"
        await wait_for(lambda: b1.link.connects == 2 and b1.link.accepted, 5, "a new connection after Reset")
    finally:
        await site.stop_front()


@pytest_twisted.ensureDeferred
async def test_a_backend_that_stops_answering_pings_is_left_and_reconnected(upstream):
    import signal
    await upstream.start()
    site = Site(MemoryStore(), _reactor())
    await site.charger("s1")
    front = site.front(url=upstream.url, ping_interval_s=0.3)
    try:
        b = await booted(front)
        upstream.proc.send_signal(signal.SIGSTOP)       # frozen: the TCP connection stays, nothing answers
        try:
            await wait_for(lambda: not b.link.accepted, 5, "the half-open connection noticed")
        finally:
            upstream.proc.send_signal(signal.SIGCONT)
        await wait_for(lambda: b.link.accepted and b.link.connects == 2, 10, "connected again")
    finally:
        await site.stop_front()


@pytest_twisted.ensureDeferred
async def test_a_start_whose_answer_was_lost_is_sent_again_unchanged_and_the_backend_keeps_one_transaction(upstream):
    await upstream.start(lose_answer={"StartTransaction": 1})
    site = Site(MemoryStore(), _reactor())
    s1 = await site.charger("s1")
    front = site.front(url=upstream.url)
    try:
        b = await booted(front)
        s1.plug()
        s1.authorize("TAG1")
        s1.unplug()
        await wait_for(lambda: upstream.calls("StopTransaction"), 10, "the stop after the resent start")
        starts = upstream.calls("StartTransaction")
        assert [c["answer"] for c in starts] == ["lost", "result"]
        assert starts[0]["payload"] == starts[1]["payload"]                  # byte for byte the same message
        assert upstream.calls("StopTransaction")[0]["payload"]["transaction_id"] == starts[0]["payload"][
            "transaction_id"]
        assert b.link.connects == 2 and b.given_up == 0                       # a lost answer is not an attempt
    finally:
        await site.stop_front()
