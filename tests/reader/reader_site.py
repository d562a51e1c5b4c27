"""A simulated site under a real Supervisor on a real etcd: two EVSE-DIN chargers (s1, s2, auth token) on a
ser2net-style RS485 tunnel, the grid meter, control, and one reader/r1 whose simulator is a pty or a TCP tunnel."""
from __future__ import annotations

from twisted.internet import defer

from evc.sim.rfid import SimLineReader, SimPn532, SimQuio, SimRdm6300
from evc.sim.site import SimSite
from evc.state import StateWriter
from evc.store.etcd import EtcdStore
from evc.supervisor import Supervisor
from evc.testing import wait_for

SIMS = {"RDM6300": SimRdm6300, "PN532": SimPn532, "line": SimLineReader}
# The card each simulator presents, and its id tag with uid_format hex.
CARDS = {"RDM6300": ("6F007B3972", "6F007B3972"), "PN532": ("1C78F2BF", "1C78F2BF"),
         "line": ("04C43BC21C2680", "04C43BC21C2680"), "QUIO": ("1C78F2BF", "1C78F2BF")}


class ReaderSite:
    def __init__(self, etcd_url: str, root: str, reader_type: str, path: str = "remote", **reader_config):
        from twisted.internet import reactor
        self.reactor = reactor
        self.root = root
        self.type = reader_type
        self.path = path
        self.reader_config = {"chargers": '["s1","s2"]', "hold_s": "30"}
        self.reader_config.update({k: str(v) for k, v in reader_config.items()})
        self.store = EtcdStore(etcd_url, reactor)
        self.sim = SimSite(reactor, base_load_A=(2, 2, 2), tick_s=0.1)
        self.sim.add_bus("b1", tcp_port=0)
        self.sim.add_evse("s1", bus="b1", unit=1, default_current_A=0)
        self.sim.add_evse("s2", bus="b1", unit=2, default_current_A=0)
        self.car = self.sim.add_car("car1", max_current_A=16, capacity_Wh=60000, soc=0.2)
        if reader_type == "QUIO":
            self.card_sim = SimQuio(unit=9)
            self.sim.buses["b1"].add(self.card_sim)
        else:
            self.card_sim = SIMS[reader_type](reactor)
        self.card, self.tag = CARDS[reader_type]
        self.state = self.sup = None

    def config(self) -> dict[str, str]:
        ep = self.sim.endpoints()
        c = {
            "conn/s123/type": "rs485",
            "conn/s123/config/remote": ep["buses"]["b1"]["tcp"],
            "conn/s123/config/gap_ms": "5",
            "conn/s123/config/timeout_ms": "200",
            "meter/grid/type": "SDM630",
            "meter/grid/config/bus": f"127.0.0.1:{ep['meter']['port']}",
            "meter/grid/config/interval_s": "0.2",
            "control/master/type": "builtin",
            "control/master/config/meter": "grid",
            "control/master/config/A_max": "32",
            "control/master/config/interval_s": "0.3",
            "control/master/config/min_on_s": "0",
            "control/master/config/min_off_s": "0",
            f"token/{self.tag}/config/owner": "Ann",
            "token/BADCARD/config/status": "Blocked",
            "reader/r1/type": self.type,
        }
        for name, port in (("s1", 1), ("s2", 2)):
            c.update({f"charger/{name}/type": "EVCC_manual", f"charger/{name}/config/conn": "s123",
                      f"charger/{name}/config/conn_port": str(port), f"charger/{name}/config/mode": "ON",
                      f"charger/{name}/config/A_max": "16", f"charger/{name}/config/interval_s": "0.1",
                      f"charger/{name}/config/auth": "token"})
        if self.type == "QUIO":
            c.update({"reader/r1/config/conn": "s123", "reader/r1/config/bus_addr": "9",
                      "reader/r1/config/interval_s": "0.1"})
        elif self.path == "local":
            c["reader/r1/config/local"] = self.card_sim.line.open_pty()
        else:
            c["reader/r1/config/remote"] = f"127.0.0.1:{self.card_sim.line.listen(0)}"
        for key, value in self.reader_config.items():
            c[f"reader/r1/config/{key}"] = value
        return c

    async def put(self, key: str, value: str) -> None:
        await self.store.put(f"{self.root}/{key}", value.encode())

    async def get(self, key: str) -> str | None:
        r = await self.store.range(f"{self.root}/{key}")
        return r.kvs[0].value.decode() if r.kvs else None

    async def start(self) -> None:
        self.sim.start(meter_port=0)
        for key, value in self.config().items():
            await self.put(key, value)
        self.state = StateWriter(self.store, self.root, self.reactor, tick_s=0.05, ttl_s=10)
        self.sup = Supervisor(self.store, self.root, self.state, self.reactor, self.reactor)
        self.state.startService()
        self.sup.startService()
        await self.sup.ready
        await self.until(lambda: self.instance("reader", "r1") is not None, "reader/r1 running")

    async def leaf_is(self, key: str, value: str | None) -> bool:
        return await self.get(key) == value

    def instance(self, kind, name):
        r = self.sup.instances.get((kind, name)) if self.sup else None
        return r.service if r else None

    @property
    def reader(self):
        return self.instance("reader", "r1")

    def session(self, charger):
        ch = self.instance("charger", charger)
        return ch.sessions.session if ch is not None else None

    async def until(self, condition, what, timeout_s=10.0):
        return await wait_for(condition, timeout_s, what, poll_s=0.01)

    async def plug(self, evse: str) -> None:
        self.sim.plug("car1", evse)
        await self.until(lambda: (self.session(evse) or None) and self.session(evse).state == "plugged",
                         f"a session waiting for authorization at {evse}")

    async def tap(self, card: str | None = None) -> None:
        """Present the card until the reader has taken it, then take it away."""
        cards = self.reader.cards
        self.card_sim.present(card or self.card)
        await self.until(lambda: self.reader.cards > cards, "the reader took the card")
        await self.until(lambda: not any(d for d in self.reader.handled if not d.called) , "the card handled")
        self.card_sim.remove()

    async def stop(self) -> None:
        if self.sup is not None:
            await self.sup.stopService()
            await defer.maybeDeferred(self.state.stopService)
        if self.type != "QUIO":
            await self.card_sim.close()
        await self.sim.stop()
        await self.store.close()
