"""charger/ocpp's authorize()/deauthorize() (what front/ocpp calls on a backend's RemoteStart/RemoteStop) over real
websockets, with a charge point written with the ocpp library: what it receives, and how failures come back."""
import pytest
import pytest_twisted
from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from twisted.logger import globalLogPublisher

from cs_rig import LibChargePoint, Site, asyncio_test, close_cp, connect_cp, until, wait
from evc.charger.ocpp import RemoteCommandRejected
from evc.ocpp.bridge import to_deferred
from evc.ocpp.central import NotConnected


@pytest.fixture
def site():
    s = Site()
    yield s
    pytest_twisted.blockon(to_deferred(s.stop()))


@pytest.fixture
def warnings():
    """Warnings logged by charger/ocpp during the test."""
    seen: list[dict] = []

    def observe(event):
        if event.get("log_namespace") == "evc.charger.ocpp" and event["log_level"].name in ("warn", "error"):
            seen.append(event)
    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


class RefusingChargePoint(LibChargePoint):
    """Answers every remote start and stop with Rejected."""

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag, connector_id=None, charging_profile=None):
        self._record("RemoteStartTransaction", id_tag=id_tag, connector_id=connector_id)
        return call_result.RemoteStartTransaction(status="Rejected")

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id):
        self._record("RemoteStopTransaction", transaction_id=transaction_id)
        return call_result.RemoteStopTransaction(status="Rejected")


async def plugged_in(site, cls=LibChargePoint, connector=2):
    """cp1 on `connector`, booted, set up, a car plugged in (its session open, not authorized)."""
    site.server()
    site.charger("cp1", connector=connector)
    site.token("REMOTE1")
    await site.start()
    charger = site.instance("charger", "cp1")
    cp = await connect_cp(site.url("cp1"), "cp1", cls=cls)
    await cp.boot()
    await until(lambda: charger.smart == "ok", "set up")
    await cp.status("Preparing", connector=connector)
    await until(lambda: charger.sessions.session is not None, "the session opened by the plug")
    return charger, cp


def remote(cp, action):
    return [payload for a, payload in cp.received if a == action]


@asyncio_test
async def test_authorize_sends_remote_start_and_deauthorize_stops_the_transaction_it_began(site):
    charger, cp = await plugged_in(site, connector=2)

    assert await wait(charger.authorize("REMOTE1")) == {"status": "Accepted"}
    assert remote(cp, "RemoteStartTransaction") == [{"id_tag": "REMOTE1", "connector_id": 2}]
    assert not charger.sessions.session.authorized       # the charge point has not started anything yet

    started = await cp.call(call.StartTransaction(connector_id=2, id_tag="REMOTE1", meter_start=100,
                                                  timestamp="2026-01-01T00:00:00Z"))
    assert started.id_tag_info["status"] == "Accepted"
    session = charger.sessions.session
    assert session.authorized and session.id_tag == "REMOTE1"

    assert await wait(charger.deauthorize()) == {"status": "Accepted"}
    assert remote(cp, "RemoteStopTransaction") == [{"transaction_id": started.transaction_id}]
    assert charger.sessions.session.id == session.id     # it ends with the charge point's StopTransaction

    await cp.call(call.StopTransaction(transaction_id=started.transaction_id, meter_stop=1100,
                                       timestamp="2026-01-01T01:00:00Z", reason="Remote"))
    assert charger.sessions.session is None
    assert charger.sessions.last.id == session.id and charger.sessions.last.reason == "Remote"
    await close_cp(cp)


@asyncio_test
async def test_deauthorize_without_an_open_transaction_sends_nothing(site):
    charger, cp = await plugged_in(site)
    assert await wait(charger.deauthorize()) is None
    # Calls to the charge point go out one at a time, in order: had a RemoteStop been sent, it would be here first.
    await wait(charger.authorize("REMOTE1"))
    assert [a for a, _ in cp.received] == ["RemoteStartTransaction"]
    await close_cp(cp)


@asyncio_test
async def test_a_charge_point_that_rejects_remote_start_and_stop_fails_both_and_the_warning_names_it(site, warnings):
    charger, cp = await plugged_in(site, cls=RefusingChargePoint)

    with pytest.raises(RemoteCommandRejected, match="cp1 answered Rejected to RemoteStartTransaction"):
        await wait(charger.authorize("REMOTE1"))
    assert remote(cp, "RemoteStartTransaction") == [{"id_tag": "REMOTE1", "connector_id": 2}]

    started = await cp.call(call.StartTransaction(connector_id=2, id_tag="REMOTE1", meter_start=0,
                                                  timestamp="2026-01-01T00:00:00Z"))
    with pytest.raises(RemoteCommandRejected, match="RemoteStopTransaction"):
        await wait(charger.deauthorize())
    assert remote(cp, "RemoteStopTransaction") == [{"transaction_id": started.transaction_id}]
    assert charger.sessions.session.authorized           # the charge point goes on: so does the session

    failed = [(e["charger"], e["action"]) for e in warnings if "action" in e]
    assert failed == [("charger/cp1", "RemoteStartTransaction"), ("charger/cp1", "RemoteStopTransaction")]
    assert not any("REMOTE1" in str(e.get("error")) for e in warnings)    # never the tag
    await close_cp(cp)


@asyncio_test
async def test_authorize_while_the_charge_point_is_not_connected_fails_with_not_connected(site, warnings):
    site.server()
    site.charger("cp1")
    await site.start()
    charger = site.instance("charger", "cp1")
    with pytest.raises(NotConnected, match="charge point cp1 is not connected"):
        await wait(charger.authorize("REMOTE1"))
    assert [(e["charger"], e.get("action")) for e in warnings] == [("charger/cp1", "RemoteStartTransaction")]


@asyncio_test
async def test_an_id_tag_ocpp_16_cannot_carry_is_refused_before_anything_is_sent(site):
    charger, cp = await plugged_in(site)
    with pytest.raises(ValueError, match="21 characters"):
        await wait(charger.authorize("X" * 21))
    await wait(charger.authorize("REMOTE1"))
    assert remote(cp, "RemoteStartTransaction") == [{"id_tag": "REMOTE1", "connector_id": 2}]
    await close_cp(cp)
