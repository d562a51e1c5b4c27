"""A simulated site under a real Supervisor on a real etcd, with front/manual on a free port, and an HTTP client that
checks every response it gets against the front's OpenAPI document."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import treq
from jsonschema import Draft202012Validator
from twisted.internet import defer

from evc.events import EventBus
from evc.front.manual.api import openapi_bytes
from evc.ocpp.cs_auth import hash_password
from evc.sim.site import SimSite
from evc.state import StateWriter
from evc.store.etcd import EtcdStore
from evc.supervisor import Supervisor
from evc.testing import wait_for

PASSWORDS = {"alice": "alice-secret-pw", "bob": "bob-secret-pw"}


class OpenApi:
    """Response checks against evc/front/manual/openapi.json: the operation for (method, path), then the schema of
    the status's response for its content type. Every response the tests get goes through `check`."""

    def __init__(self):
        self.doc = json.loads(openapi_bytes())
        self.routes = []
        for template, item in self.doc["paths"].items():
            rx = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            self.routes.append((re.compile(rx), item))
        self.checked: list[tuple[str, str, int]] = []

    def operation(self, method: str, path: str) -> dict | None:
        for rx, item in self.routes:
            if rx.match(path):
                return item.get(method.lower())
        return None

    def _resolve(self, node: dict) -> dict:
        while "$ref" in node and node["$ref"].startswith("#/components/responses/"):
            node = self.doc["components"]["responses"][node["$ref"].rsplit("/", 1)[1]]
        return node

    def check(self, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        path = path.split("?", 1)[0]
        if not path.startswith("/api/"):
            return              # the page's own files
        op = self.operation("get" if method == "HEAD" else method, path)
        if op is None:
            if status in (404, 405):
                return self._check_error(status, content_type, body, path)
            raise AssertionError(f"{method} {path}: not in the OpenAPI document (got {status})")
        response = op["responses"].get(str(status))
        if response is None:
            raise AssertionError(f"{method} {path}: status {status} is not documented ({body[:200]!r})")
        response = self._resolve(response)
        self.checked.append((method, path, status))
        if "content" not in response:
            assert not body, f"{method} {path} {status}: a body where the document says none"
            return
        ctype = content_type.split(";")[0].strip()
        assert ctype in response["content"], f"{method} {path} {status}: content type {ctype} is not documented"
        schema = response["content"][ctype].get("schema")
        if ctype == "application/json" and schema is not None:
            self.validate(schema, json.loads(body), f"{method} {path} {status}")

    def _check_error(self, status, content_type, body, path):
        self.validate({"$ref": "#/components/schemas/Error"}, json.loads(body), f"{status} {path}")

    def validate(self, schema: dict, value, where: str) -> None:
        root = dict(schema)
        root["components"] = self.doc["components"]
        errors = sorted(Draft202012Validator(root).iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            raise AssertionError(f"{where}: the response does not fit the OpenAPI document at "
                                 f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}")


OPENAPI = OpenApi()


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Client:
    """HTTP to the front; keeps the evc_session cookie and the csrf token like a browser's page does."""

    def __init__(self, base: str):
        self.base = base
        self.cookie: str | None = None
        self.csrf: str | None = None

    async def request(self, method: str, path: str, body=None, *, raw: bytes | None = None, headers=None,
                      auth: tuple[str, str] | None = None, csrf: bool = True, content_type="application/json"):
        h = {}
        if body is not None or raw is not None:
            h["Content-Type"] = content_type
        if self.cookie:
            h["Cookie"] = f"evc_session={self.cookie}"
        if csrf and self.csrf and method not in ("GET", "HEAD"):
            h["X-CSRF-Token"] = self.csrf
        h.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        r = await treq.request(method, self.base + path, data=data, headers={k: [v] for k, v in h.items()},
                               auth=auth, persistent=False)
        content = await r.content()
        hdrs = {k.decode().lower(): b", ".join(v).decode("latin-1") for k, v in r.headers.getAllRawHeaders()}
        OPENAPI.check(method, path, r.code, hdrs.get("content-type", ""), content)
        return Response(r.code, hdrs, content)

    async def login(self, user: str, password: str | None = None) -> Response:
        r = await self.request("POST", "/api/v1/login", {"user": user, "password": password or PASSWORDS[user]})
        if r.status == 200:
            cookie = r.header("set-cookie")
            self.cookie = cookie.split(";", 1)[0].split("=", 1)[1]
            self.csrf = r.json["csrf_token"]
        return r

    get = lambda self, path, **kw: self.request("GET", path, **kw)  # noqa: E731


class Rig:
    """The site: SimSite (EVSE s1 with its own meter m1, the grid meter, car1 plugged), EVC's supervisor on the
    real etcd, and front/local (type manual) on a free port showing charger s1."""

    def __init__(self, etcd_url: str, root: str, users: bool = True, listen: str = "127.0.0.1:0",
                 extra: dict | None = None):
        from twisted.internet import reactor
        self.reactor = reactor
        self.root = root
        self.store = EtcdStore(etcd_url, reactor)
        self.sim = SimSite(reactor, base_load_A=(3, 2, 1), tick_s=0.1)
        self.sim.add_bus("b1", tcp_port=0)
        self.sim.add_evse("s1", bus="b1", unit=1, default_current_A=0)
        self.sim.add_evse_meter("s1", port=0)
        self.car = self.sim.add_car("car1", evse="s1", max_current_A=32, capacity_Wh=60000, soc=0.2)
        self.users = users
        self.listen = listen
        self.extra = extra or {}
        self.events = EventBus()
        self.state = None
        self.sup = None

    def config(self) -> dict[str, str]:
        ep = self.sim.endpoints()
        c = {
            "conn/s123/type": "rs485",
            "conn/s123/config/remote": ep["buses"]["b1"]["tcp"],
            "conn/s123/config/gap_ms": "5",
            "conn/s123/config/timeout_ms": "200",
            "meter/m1/config/type": "SDM630",
            "meter/m1/config/bus": f"127.0.0.1:{ep['evse_meters']['s1']['port']}",
            "meter/m1/config/bus_addr": "1",
            "meter/m1/config/interval_s": "0.2",
            "meter/grid/type": "SDM630",
            "meter/grid/config/bus": f"127.0.0.1:{ep['meter']['port']}",
            "meter/grid/config/bus_addr": "1",
            "meter/grid/config/interval_s": "0.2",
            "charger/s1/type": "EVCC_manual",
            "charger/s1/config/conn": "s123",
            "charger/s1/config/conn_port": "1",
            "charger/s1/config/meter": "m1",
            "charger/s1/config/mode": "OFF",
            "charger/s1/config/A_max": "32",
            "charger/s1/config/interval_s": "0.2",
            "charger/s1/config/auth": "token",           # a token (or a start from the page) authorizes
            "charger/x9/type": "EVCC_manual",          # not shown by the front (chargers: [s1]); broken on purpose
            "charger/x9/config/conn_port": "2",
            "control/master/type": "builtin",
            "control/master/config/meter": "grid",
            "control/master/config/A_max": "20",
            "control/master/config/interval_s": "0.3",
            "control/master/config/min_on_s": "0",
            "control/master/config/min_off_s": "0",
            "token/CARD0001/config/owner": "Ann",
            "front/local/type": "manual",
            "front/local/config/listen": self.listen,
            "front/local/config/chargers": '["s1"]',
        }
        if self.users:
            c["front/local/config/users/alice/password"] = hash_password(PASSWORDS["alice"], 1000)
            c["front/local/config/users/bob/password"] = hash_password(PASSWORDS["bob"], 1000)
            c["front/local/config/users/bob/role"] = "viewer"
        c.update(self.extra)
        return c

    async def put(self, key: str, value: str) -> None:
        await self.store.put(f"{self.root}/{key}", value.encode())

    async def get(self, key: str) -> str | None:
        r = await self.store.range(f"{self.root}/{key}")
        return r.kvs[0].value.decode() if r.kvs else None

    async def keys(self, prefix: str) -> dict[str, str]:
        r = await self.store.range(f"{self.root}/{prefix}", prefix=True)
        return {kv.key[len(self.root) + 1:]: kv.value.decode() for kv in r.kvs}

    async def start(self) -> None:
        self.sim.start(meter_port=0)
        for key, value in self.config().items():
            await self.put(key, value)
        self.state = StateWriter(self.store, self.root, self.reactor, tick_s=0.05, ttl_s=10, events=self.events)
        self.sup = Supervisor(self.store, self.root, self.state, self.reactor, self.reactor, events=self.events)
        self.state.startService()
        self.sup.startService()
        await self.sup.ready
        await wait_for(lambda: self.front is not None and self.front.running and self.front._watch is not None,
                       10, "front/local running")

    @property
    def front(self):
        r = self.sup.instances.get(("front", "local")) if self.sup else None
        return r.service if r else None

    @property
    def base(self) -> str:
        return f"{'https' if self.front.tls else 'http'}://{self.front.listening}"

    def client(self) -> Client:
        return Client(self.base)

    async def stop(self) -> None:
        if self.sup is not None:
            await self.sup.stopService()
            await defer.maybeDeferred(self.state.stopService)
        await self.sim.stop()
        await self.store.close()
