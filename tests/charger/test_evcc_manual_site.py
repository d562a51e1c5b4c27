"""charger/EVCC_manual on conn/rs485 under the Supervisor, over a real pty and a real TCP tunnel to the simulator."""
import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from evc.conn.rs485 import Rs485Conn
from evc.sim.car import SimCar
from evc.sim.evse import SimEvse
from evc.sim.rs485 import SimRs485Bus
from evc.sim.sdm import SimSdm630
from evc.state import StateWriter
from evc.store.memory import MemoryStore
from evc.supervisor import Supervisor
from evc.testing import wait_for

ROOT = "/evc/t"


async def until(condition, what, timeout_s=5.0):
    return await wait_for(condition, timeout_s, what, poll_s=0.005)


class Site:
    """A Supervisor with an in-memory store on the running reactor, and the simulated bus with one EVSE."""

    def __init__(self, path: str):
        self.evse = SimEvse("s1", unit=1, default_current_A=0)
        self.sim = SimRs485Bus(reactor, [self.evse], name="bus1", baud=19200)
        self.store = MemoryStore(clock=reactor)
        self.state = StateWriter(self.store, ROOT, reactor, tick_s=0.02)
        self.sup = Supervisor(self.store, ROOT, self.state, reactor, reactor=reactor)
        self.put("conn/s123/type", "rs485")
        if path == "local":
            self.put("conn/s123/config/local", self.sim.open_pty())
        else:
            self.put("conn/s123/config/remote", f"127.0.0.1:{self.sim.listen(0)}")
        for key, value in (("baud", 19200), ("gap_ms", 5), ("timeout_ms", 100)):
            self.put(f"conn/s123/config/{key}", value)

    def put(self, key, value):
        self.store.put(f"{ROOT}/{key}", str(value).encode())

    def delete(self, key):
        self.store.delete(f"{ROOT}/{key}")

    def add_meter(self, name, unit, bus_addr=None, **config):
        """An SDM630 simulator at `unit` on the bus, and meter/<name> configured on conn s123 at `bus_addr`
        (default: `unit`; another value is a configuration mistake)."""
        sdm = SimSdm630(unit=unit)
        self.sim.add(sdm)
        self.put(f"meter/{name}/type", "SDM630")
        settings = {"conn": "s123", "bus_addr": bus_addr or unit, "interval_s": 0.1, "gap_ms": 0}
        settings.update(config)
        for key, value in settings.items():
            self.put(f"meter/{name}/config/{key}", value)
        return sdm

    def add_charger(self, name, conn_port=1, **config):
        self.put(f"charger/{name}/type", "EVCC_manual")
        settings = {"conn": "s123", "conn_port": conn_port, "mode": "ON", "A_max": 32, "interval_s": 0.1}
        settings.update(config)
        for key, value in settings.items():
            self.put(f"charger/{name}/config/{key}", value)

    async def start(self):
        self.state.startService()
        self.sup.startService()
        await self.sup.ready

    def instance(self, kind, name):
        running = self.sup.instances.get((kind, name))
        return running.service if running else None

    def leaf(self, key):
        kvs = self.store.range(f"{ROOT}/{key}").result.kvs
        return kvs[0].value.decode() if kvs else None

    def session(self, sid):
        raw = self.leaf(f"charger/s1/data/sessions/{sid}")
        return json.loads(raw) if raw is not None else None

    async def restart_evc(self):
        """What an EVC restart does to the site: every instance stops, a new supervisor starts on the same store."""
        await self.sup.stopService()
        await defer.maybeDeferred(self.state.stopService)
        self.state = StateWriter(self.store, ROOT, reactor, tick_s=0.02)
        self.sup = Supervisor(self.store, ROOT, self.state, reactor, reactor=reactor)
        await self.start()

    async def stop(self):
        await self.sup.stopService()
        await defer.maybeDeferred(self.state.stopService)
        await self.sim.close()


@pytest.fixture
def fast_reopen(monkeypatch):
    monkeypatch.setattr(Rs485Conn, "reopen_min_s", 0.05)
    monkeypatch.setattr(Rs485Conn, "reopen_max_s", 0.2)
    monkeypatch.setattr(Rs485Conn, "state_interval_s", 0.05)


@pytest.fixture
def sites(fast_reopen):
    made = []
    yield lambda path: made.append(Site(path)) or made[-1]
    for site in made:
        pytest_twisted.blockon(defer.ensureDeferred(site.stop()))


@pytest.mark.parametrize("path", ["local", "remote"])
@pytest_twisted.ensureDeferred
async def test_the_charger_sees_the_car_and_sets_the_evse(sites, path):
    site = sites(path)
    site.add_charger("s1")
    await site.start()
    charger = site.instance("charger", "s1")
    await until(lambda: charger.status.online, "the charger online")
    assert charger.status.vehicle == "none"
    car = SimCar("car1", max_current_A=32)
    car.plug(site.evse)
    await until(lambda: charger.status.vehicle == "plugged", "the car seen")
    assert charger.wants_current()
    assert await charger.apply(16) == 16
    assert site.evse.set_current_A == 16
    await until(lambda: charger.status.vehicle == "charging" and charger.status.setpoint_A == 16, "charging at 16 A")
    await until(lambda: site.leaf("charger/s1/state/setpoint_A") == "16.0"
                and site.leaf("charger/s1/state/vehicle") == "charging", "setpoint_A and vehicle in the store")
    assert site.leaf("charger/s1/state/online") == "true"
    assert await charger.apply(0) == 0                     # pause
    assert site.evse.set_current_A == 0
    await until(lambda: charger.status.vehicle == "plugged" and charger.status.offered_A == 0, "paused")
    assert site.leaf("conn/s123/state/link") == "up"
    assert site.leaf("conn/s123/state/units/1/user") == "charger/s1"
    assert site.leaf("charger/s1/state/error") is None


@pytest_twisted.ensureDeferred
async def test_two_chargers_at_one_address_on_one_conn_are_refused_clearly(sites):
    site = sites("local")
    site.add_charger("s1", conn_port=1)
    site.add_charger("s2", conn_port=1)
    await site.start()
    await until(lambda: site.leaf("charger/s2/state/error") is not None, "the error in state")
    assert site.leaf("charger/s2/state/error") == (
        "type: EVCC_manual failed to start: config/conn_port: address 1 on conn s123 is already used by charger/s1")
    assert site.leaf("charger/s2/state/status") == "error" and site.instance("charger", "s2") is None
    assert site.leaf("charger/s1/state/status") == "running"
    generation = site.sup.generation
    site.put("charger/s2/config/conn_port", 2)             # the fix: its own address
    await site.sup.settled(generation)
    await until(lambda: site.leaf("charger/s2/state/error") is None, "the error cleared")
    assert site.instance("charger", "s2") is not None
    assert site.instance("conn", "s123").claims == {1: "charger/s1", 2: "charger/s2"}


@pytest_twisted.ensureDeferred
async def test_polling_resumes_after_the_tty_vanished_and_came_back(sites):
    site = sites("local")
    site.add_charger("s1")
    await site.start()
    charger = site.instance("charger", "s1")
    await until(lambda: charger.status.online, "the charger online")
    site.sim.vanish()
    await until(lambda: not charger.status.online, "the charger offline")
    await until(lambda: site.leaf("charger/s1/state/online") == "false", "online false in the store")
    assert site.leaf("conn/s123/state/link") == "down"
    polls = site.evse.requests
    site.sim.reappear()
    await until(lambda: charger.status.online, "the charger online again")
    await until(lambda: site.evse.requests >= polls + 3, "polls going on")
    await until(lambda: site.leaf("charger/s1/state/online") == "true", "online true in the store")


@pytest_twisted.ensureDeferred
async def test_polling_resumes_after_the_tunnel_dropped(sites):
    site = sites("remote")
    site.add_charger("s1")
    await site.start()
    charger = site.instance("charger", "s1")
    conn = site.instance("conn", "s123")
    await until(lambda: charger.status.online, "the charger online")
    site.sim.drop_tunnel()
    await until(lambda: conn.link_state != "up", "the tunnel down")
    polls = site.evse.requests
    await until(lambda: conn.link_state == "up", "the tunnel reconnected")
    await until(lambda: site.evse.requests >= polls + 3, "polls going on")
    assert charger.status.online


@pytest_twisted.ensureDeferred
async def test_a_meter_on_the_same_bus_gives_the_charger_its_current(sites):
    """One conn, two devices (an EVSE at 1, an SDM630 at 2): both polled, the meter's L2 is the charger's draw."""
    site = sites("local")
    sdm = SimSdm630(unit=2)
    sdm.set(V=230, A=(1.0, 12.5, 3.0))
    site.sim.add(sdm)
    site.put("meter/m2/type", "SDM630")
    for key, value in (("conn", "s123"), ("bus_addr", 2), ("interval_s", 0.1), ("gap_ms", 0)):
        site.put(f"meter/m2/config/{key}", value)
    site.add_charger("s1", meter="m2", phases=1, phase_map='["L2"]')
    await site.start()
    charger = site.instance("charger", "s1")
    await until(lambda: charger.status.online and charger.status.actual_A == (12.5,), "the metered draw")
    assert site.instance("conn", "s123").claims[1] == "charger/s1"
    sdm.set(A=(1.0, 7.25, 3.0))
    await until(lambda: charger.status.actual_A == (7.25,), "a new metered draw")
    await until(lambda: site.leaf("charger/s1/state/actual_A/L2") == "7.25", "actual_A/L2 in the store")


@pytest_twisted.ensureDeferred
async def test_a_session_is_recorded_from_plug_through_charging_to_unplug(sites):
    """Free charging (auth none): plugged -> authorized at once -> charging -> ended EVDisconnected, with the energy
    of the charger's meter, in data/sessions/<id>; data/sessions/current exists exactly while it is open."""
    site = sites("local")
    sdm = site.add_meter("m2", unit=2)
    sdm.set(V=230, A=(0, 0, 0), energy_Wh=1_000)
    site.add_charger("s1", meter="m2")
    await site.start()
    charger = site.instance("charger", "s1")
    published = []
    site.sup.events.subscribe(("session", "s1"), lambda topic, s: published.append(s.state))
    await until(lambda: charger.status.online and charger.meter.reading.energy_Wh == 1_000, "online and metered")
    assert not charger.wants_current() and site.leaf("charger/s1/data/sessions/current") is None

    car = SimCar("car1", max_current_A=32)
    car.plug(site.evse)
    await until(lambda: site.leaf("charger/s1/data/sessions/current") is not None, "a session stored as current")
    sid = site.leaf("charger/s1/data/sessions/current")
    await until(lambda: (site.session(sid) or {}).get("state") == "authorized", "the session authorized")
    stored = site.session(sid)
    assert stored["charger"] == "s1" and stored["id_tag"] is None and stored["meter_start_Wh"] == 1_000
    assert charger.wants_current()

    assert await charger.apply(16) == 16
    sdm.set(A=(16, 16, 16))
    await until(lambda: (site.session(sid) or {}).get("state") == "charging", "the session charging")
    sdm.set(A=(0, 0, 0), energy_Wh=1_750)
    await until(lambda: charger.sessions.session.meter_last_Wh == 1_750, "the new counter seen")

    car.unplug()
    await until(lambda: (site.session(sid) or {}).get("state") == "ended", "the session ended")
    ended = site.session(sid)
    assert ended["reason"] == "EVDisconnected" and ended["energy_Wh"] == 750 and ended["meter_stop_Wh"] == 1_750
    assert ended["stop_time"] is not None
    await until(lambda: site.leaf("charger/s1/data/sessions/current") is None, "current removed")
    assert published[0] == "authorized" and "charging" in published and published[-1] == "ended"
    await until(lambda: site.leaf("charger/s1/state/session/state") == "ended", "the session in state/")
    assert site.leaf("charger/s1/state/session/id") == sid and site.leaf("charger/s1/state/session/energy_Wh") == "750"
    assert not charger.wants_current()


@pytest_twisted.ensureDeferred
async def test_an_evc_restart_with_the_car_still_plugged_continues_the_same_session(sites):
    site = sites("local")
    site.add_charger("s1")
    await site.start()
    car = SimCar("car1", max_current_A=32)
    car.plug(site.evse)
    await until(lambda: site.leaf("charger/s1/data/sessions/current") is not None, "a session stored as current")
    sid = site.leaf("charger/s1/data/sessions/current")
    await until(lambda: (site.session(sid) or {}).get("state") == "authorized", "the session authorized")
    old = site.instance("charger", "s1")

    await site.restart_evc()
    charger = site.instance("charger", "s1")
    assert charger is not old
    await until(lambda: charger.status.online and charger.status.vehicle == "plugged", "the car seen again")
    await until(lambda: charger.sessions.loaded and charger.sessions.session is not None, "the session picked up")
    assert charger.sessions.session.id == sid and charger.sessions.session.authorized
    assert charger.wants_current()                         # the continued session may charge
    assert site.leaf("charger/s1/data/sessions/current") == sid
    stored = site.store.range(f"{ROOT}/charger/s1/data/sessions/", prefix=True).result.kvs
    assert [kv.key for kv in stored if not kv.key.endswith("/current")] == [
        f"{ROOT}/charger/s1/data/sessions/{sid}"]          # no second session

    car.unplug()
    await until(lambda: (site.session(sid) or {}).get("state") == "ended", "the continued session ended")
    assert site.session(sid)["reason"] == "EVDisconnected"


@pytest_twisted.ensureDeferred
async def test_deauthorize_ends_the_session_and_the_charger_stops_asking(sites):
    site = sites("local")
    site.add_charger("s1", auth="token")
    await site.start()
    charger = site.instance("charger", "s1")
    car = SimCar("car1", max_current_A=32)
    car.plug(site.evse)
    await until(lambda: charger.status.vehicle == "plugged" and charger.sessions.session is not None, "plugged")
    assert charger.sessions.session.state == "plugged" and not charger.wants_current()
    charger.authorize("04A1B2C3")
    assert charger.sessions.session.id_tag == "04A1B2C3" and charger.wants_current()
    sid = charger.sessions.session.id
    charger.deauthorize()
    assert charger.sessions.session is None and not charger.wants_current()
    await until(lambda: (site.session(sid) or {}).get("reason") == "DeAuthorized", "ended as DeAuthorized")


@pytest_twisted.ensureDeferred
async def test_an_evse_and_a_meter_at_one_address_on_one_conn_are_refused_clearly(sites):
    """Whichever of the two starts second is refused, naming its own leaf and the holder; fixing it clears it."""
    site = sites("local")
    site.add_charger("s1", conn_port=1)
    await site.start()
    await until(lambda: site.leaf("charger/s1/state/status") == "running", "the charger running")
    generation = site.sup.generation
    site.add_meter("m2", unit=2, bus_addr=1)        # its menu says 2, its config says 1: the EVSE's address
    await site.sup.settled(generation)
    await until(lambda: site.leaf("meter/m2/state/error") is not None, "the meter's error in state")
    assert site.leaf("meter/m2/state/error") == (
        "type: SDM630 failed to start: config/bus_addr: address 1 on conn s123 is already used by charger/s1")
    assert site.instance("meter", "m2") is None and site.instance("conn", "s123").claims == {1: "charger/s1"}
    generation = site.sup.generation
    site.put("meter/m2/config/bus_addr", 2)
    await site.sup.settled(generation)
    await until(lambda: site.leaf("meter/m2/state/error") is None, "the error cleared")
    assert site.instance("conn", "s123").claims == {1: "charger/s1", 2: "meter/m2"}
    generation = site.sup.generation
    for key in ("type", "config/conn", "config/bus_addr", "config/interval_s", "config/gap_ms"):
        site.delete(f"meter/m2/{key}")
    await site.sup.settled(generation)
    await until(lambda: site.instance("conn", "s123").claims == {1: "charger/s1"}, "the meter's address released")
