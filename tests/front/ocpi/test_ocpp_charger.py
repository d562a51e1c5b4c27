"""A roaming card presented at an OCPP charger: the charge point's Authorize and StartTransaction go through the
site's one authorization path to the eMSP (real-time), the transaction is the eMSP's roaming session, and its CDR
has the transaction's own energy (meterStop - meterStart). Real etcd, real websockets, a charge point written with
the ocpp library, the fake eMSP on real TCP."""
from __future__ import annotations

import pytest
import pytest_twisted
from ocpp.v16 import call
from twisted.internet import defer

from cs_rig import Site as CsSite, asyncio_test, close_cp, connect_cp, until, wait
from evc.sim.emsp import FakeEmsp
from evc.etcdserver import free_port
from evc.front.ocpi.objects import errors_of
from evc.ocpp.bridge import to_deferred
from evc.store.etcd import EtcdStore
from test_tokens import info


@pytest.fixture
def site(etcd_session, etcd_root):
    from twisted.internet import reactor
    s = CsSite(store=EtcdStore(etcd_session.url, reactor), root=etcd_root)
    s.emsp = FakeEmsp(reactor).start()
    yield s
    pytest_twisted.blockon(to_deferred(s.stop()))
    pytest_twisted.blockon(defer.ensureDeferred(s.emsp.stop()))
    pytest_twisted.blockon(defer.maybeDeferred(s.store.close))


def _front_config(site, port):
    loc = {"id": "SITE1", "address": "Main St 1", "city": "Berlin", "country": "DEU"}
    cfg = {"versions_url": site.emsp.versions_url, "token_a": site.emsp.token_a, "country_code": "DE",
           "party_id": "EVC", "listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}",
           "chargers": '["cp1"]', "retry_min_s": "0.1", "retry_max_s": "0.5", "session_update_s": "1",
           "location/coordinates/latitude": "52.52", "location/coordinates/longitude": "13.405"}
    cfg.update({f"location/{k}": v for k, v in loc.items()})
    return cfg


@asyncio_test
async def test_a_roaming_card_at_an_ocpp_charger_is_authorized_by_the_emsp_and_billed(site):
    emsp = site.emsp
    emsp.authorize_answers["ROAMCARD1"] = info("ROAMCARD1", ref="REF-OCPP")
    site.server()
    site.charger("cp1", connector=1)
    port = free_port()
    for d in site.configure("front", "roaming", "ocpi", **_front_config(site, port)):
        await wait(d)
    await site.start()
    front = await until(lambda: site.instance("front", "roaming"), "front/roaming running")
    await until(lambda: front.registrar.creds is not None, "registered", 10)
    charger = site.instance("charger", "cp1")
    cp = await connect_cp(site.url("cp1"), "cp1")
    try:
        await cp.boot()
        await cp.status("Preparing", connector=1)
        await until(lambda: charger.sessions.session is not None, "the session opened by the plug")
        answer = await cp.call(call.Authorize(id_tag="ROAMCARD1"))
        assert answer.id_tag_info["status"] == "Accepted"
        assert emsp.requests("POST", "/ocpi/2.2.1/tokens/ROAMCARD1/authorize")
        started = await cp.call(call.StartTransaction(connector_id=1, id_tag="ROAMCARD1", meter_start=1000,
                                                      timestamp="2026-01-01T00:00:00Z"))
        assert started.id_tag_info["status"] == "Accepted"
        sid = charger.sessions.session.id
        await until(lambda: sid in emsp.sessions, "the Session at the eMSP", 10)
        assert emsp.sessions[sid]["authorization_reference"] == "REF-OCPP"
        await cp.call(call.StopTransaction(meter_stop=4500, timestamp="2026-01-01T01:00:00Z",
                                           transaction_id=started.transaction_id, reason="EVDisconnected"))
        await until(lambda: emsp.cdr_posts, "the CDR", 10)
        cdr = emsp.cdr_posts[0]
        assert errors_of("CDR", cdr, "2.2.1") == []
        assert cdr["id"] == sid and cdr["total_energy"] == 3.5
        assert cdr["cdr_token"]["uid"] == "ROAMCARD1"
    finally:
        await close_cp(cp)


@asyncio_test
async def test_a_card_the_emsp_refuses_is_refused_at_the_ocpp_charger(site):
    emsp = site.emsp
    emsp.authorize_answers["STOLEN01"] = info("STOLEN01", allowed="BLOCKED")
    site.server()
    site.charger("cp1", connector=1)
    for d in site.configure("front", "roaming", "ocpi", **_front_config(site, free_port())):
        await wait(d)
    await site.start()
    front = await until(lambda: site.instance("front", "roaming"), "front/roaming running")
    await until(lambda: front.registrar.creds is not None, "registered", 10)
    cp = await connect_cp(site.url("cp1"), "cp1")
    try:
        await cp.boot()
        answer = await cp.call(call.Authorize(id_tag="STOLEN01"))
        assert answer.id_tag_info["status"] == "Blocked"
        answer = await cp.call(call.Authorize(id_tag="NOBODY01"))        # unknown to the eMSP and the site
        assert answer.id_tag_info["status"] == "Invalid"
    finally:
        await close_cp(cp)
