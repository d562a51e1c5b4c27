"""front/ocpi on a real etcd with fake chargers (real SessionTrackers), facing the fake eMSP over real TCP."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer

from evc.etcdserver import free_port
from evc.front.ocpi import OcpiCpoFront
from evc.front.plugsurfing import PlugsurfingFront
from evc.schema import Catalog
from evc.store.etcd import EtcdStore
from evc.testing import RecordingState, wait_for
from front_helpers import Site

from evc.sim.emsp import FakeEmsp

CATALOG = Catalog()
LOCATION = {"id": "SITE1", "name": "Test site", "address": "Main St 1", "city": "Berlin", "postal_code": "10115",
            "country": "DEU", "coordinates": {"latitude": "52.52", "longitude": "13.405"}}


class Rig:
    def __init__(self, etcd_url: str, root: str, versions=("2.2.1", "2.1.1")):
        from twisted.internet import reactor
        self.reactor = reactor
        self.root = root
        self.store = EtcdStore(etcd_url, reactor)
        self.site = Site(self.store, reactor, root=root)
        self.emsp = FakeEmsp(reactor, versions).start()
        self.front = None
        self.state = RecordingState()
        self.port = free_port()     # fixed, so that a restarted front is where the eMSP knows it

    def config(self, **overrides) -> dict:
        doc = {"country_code": "DE", "party_id": "EVC", "public_url": f"http://127.0.0.1:{self.port}",
               "listen": f"127.0.0.1:{self.port}",
               "location": LOCATION, "versions_url": self.emsp.versions_url, "token_a": self.emsp.token_a,
               "retry_min_s": 0.05, "retry_max_s": 0.2, "session_update_s": 1, "authorize_timeout_s": 1,
               "request_timeout_s": 5}
        doc.update(overrides)
        return {k: v for k, v in doc.items() if v is not None}

    async def start_front(self, type_name="ocpi", name="roaming", **overrides):
        doc = CATALOG.validate("front", type_name, self.config(**overrides))
        cls = OcpiCpoFront if type_name == "ocpi" else PlugsurfingFront
        self.state = RecordingState()
        front = cls(self.site.ctx("front", name, self.state), cls.build_config(doc))
        self.site.fronts[name] = front
        front.startService()
        self.front = front
        await front.ready
        return front

    async def stop_front(self, name="roaming"):
        front = self.site.fronts.pop(name, None)
        if front is not None:
            await front.stopService()

    async def registered(self, timeout_s=10):
        await wait_for(lambda: self.front.registrar.creds is not None, timeout_s, "EVC registered")
        return self.front.registrar.creds

    @property
    def evc(self) -> str:
        return f"http://{self.front.listening}/ocpi"

    async def data(self, path: str) -> Any:
        import json
        r = await self.store.range(f"{self.root}/front/roaming/data/{path}")
        return json.loads(r.kvs[0].value) if r.kvs else None

    async def data_keys(self, prefix: str) -> list[str]:
        r = await self.store.range(f"{self.root}/front/roaming/data/{prefix}", prefix=True)
        return [kv.key for kv in r.kvs]

    async def located(self, timeout_s=10):
        """The Location PUT has reached the eMSP (it is queued a moment after the registration)."""
        await wait_for(lambda: any("/locations/" in r.path for r in self.emsp.requests("PUT")), timeout_s,
                       "the Location PUT")

    async def delivered(self, timeout_s=10):
        await wait_for(lambda: self.front.pusher is not None and len(self.front.pusher) == 0
                       and not self.front.pusher._sending and self.front.pusher.outbox.unwritten == 0, timeout_s,
                       "the queue empty, in the store too")

    async def stop(self):
        for name in list(self.site.fronts):
            await self.stop_front(name)
        for c in self.site.chargers.values():
            await c.stop()
        await self.emsp.stop()
        await self.store.close()


async def make(etcd_session, etcd_root, **kw) -> Rig:
    return Rig(etcd_session.url, etcd_root, **kw)


__all__ = ["Rig", "make", "LOCATION", "wait_for", "defer"]
