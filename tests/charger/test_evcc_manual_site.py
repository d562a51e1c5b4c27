"""charger/EVCC_manual on conn/rs485 under the Supervisor, over a real pty and a real TCP tunnel to the simulator."""
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
