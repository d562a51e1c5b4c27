"""front/ocpi and front/plugsurfing: EVC as an OCPI CPO toward one eMSP (docs/ocpi.md explains it for operators).

What it does:
- the credentials handshake in both directions (credentials.py), its own endpoints on twisted.web (server.py);
- the site as one Location, an EVSE per covered charger (model.py): PUT once registered (and again whenever its
  structure changes), then a PATCH of an EVSE's status within a moment of each change of its charger;
- the eMSP's tokens and real-time authorization as part of the site's one authorization path (tokens.py,
  IAuthorizer);
- each session authorized by this eMSP (a token it allowed, a whitelisted token, a START_SESSION) is its roaming
  session: PUT when authorized, PATCHed with kwh and charging periods every `session_update_s` and on each state
  change, COMPLETED at the end, then one CDR POSTed; records in data/sessions/<id>;
- commands (commands.py);
- everything it pushes goes through the durable queue (pushes.py), and is checked against the OCPI rules
  (objects.py) before it is queued.

State: listening, registration, version, emsp, queue, last_push_error, last_given_up, error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Optional

from twisted.internet import defer, error as net_error
from twisted.logger import Logger
from twisted.web import server as web_server
from zope.interface import implementer

from evc.auth import IAuthorizer
from evc.errors import ConfigError
from evc.front.ocpi import model, objects
from evc.front.ocpi.commands import Commands
from evc.front.ocpi.credentials import Registrar
from evc.front.ocpi.pushes import Pusher
from evc.front.ocpi.server import Api, Root
from evc.front.ocpi.tokens import Authorizer, TokenStore
from evc.front.ocpi.transport import Client, Party, paginate, parse_page
from evc.instance import Instance, follow_instances, named, select_instances
from evc.registry import FRONTS
from evc.server.ocpp import host_port
from evc.session import Session
from evc.store.interface import Put

log = Logger(namespace="evc.front.ocpi")

# A roaming authorization waits this long for its session to become authorized at the charger (s); a charger's
# own wait for the car (connection_timeout_s) is 60 s.
CLAIM_WINDOW_S = 120.0
# Charger changes are gathered this long before the Location's structure is compared and PUT again.
LOCATION_SETTLE_S = 1.0
# A charger instance that stopped is waited for this long before its EVSE is reported gone (a config change stops
# and starts it again: that must not make the eMSP see it flap).
DETACH_GRACE_S = 10.0


@dataclasses.dataclass(frozen=True)
class OcpiFrontConfig:
    """schema/front/ocpi.json describes every field."""
    country_code: Optional[str] = None
    party_id: Optional[str] = None
    public_url: Optional[str] = None
    location: Any = None
    versions_url: Optional[str] = None
    token_a: Optional[str] = dataclasses.field(default=None, repr=False)
    incoming_token_a: Optional[str] = dataclasses.field(default=None, repr=False)
    version: str = "2.2.1"
    business_name: str = "EVC site"
    website: Optional[str] = None
    listen: str = "127.0.0.1:8091"
    chargers: Any = "*"
    evse_ids: Any = dataclasses.field(default_factory=dict)
    connectors: Any = dataclasses.field(default_factory=dict)
    tariff: Any = None
    session_update_s: float = 60
    authorize_timeout_s: float = 5
    request_timeout_s: float = 15
    retry_min_s: float = 1
    retry_max_s: float = 300
    command_timeout_s: int = 60
    type: Optional[str] = None

    def __post_init__(self):
        # Not required by the schema, so that a site document may name the front before it is set up (the seed's
        # front/plugsurfing has only `chargers`): the front is then not started, and state/error says what is missing.
        for leaf in ("country_code", "party_id", "public_url", "location"):
            if getattr(self, leaf) is None:
                raise ConfigError(f"config/{leaf}: missing; an OCPI front needs country_code, party_id, public_url "
                                  "and location (docs/ocpi.md)")
        host_port(self.listen)
        if self.chargers != "*":
            if isinstance(self.chargers, str) or not all(isinstance(c, str) for c in self.chargers):
                raise ConfigError('config/chargers: "*" or a list of charger names')
            object.__setattr__(self, "chargers", tuple(self.chargers))
        if bool(self.token_a) != bool(self.versions_url):
            missing = "versions_url" if self.token_a else "token_a"
            raise ConfigError(f"config/{missing}: give versions_url and token_a together (EVC registers itself "
                              "with them)")
        if self.retry_max_s < self.retry_min_s:
            raise ConfigError("config/retry_max_s: must be at least retry_min_s")
        for name, conn in (self.connectors or {}).items():
            std = (conn or {}).get("standard")
            if std is not None and std not in objects.CONNECTOR_TYPES:
                raise ConfigError(f"config/connectors/{name}/standard: {std!r} is not an OCPI connector type "
                                  "(e.g. IEC_62196_T2, IEC_62196_T2_COMBO, CHADEMO)")
        hours = (self.location or {}).get("opening_times")
        if hours is not None:
            errors = objects.errors_of("Hours", hours, "2.2.1")
            if errors:
                raise ConfigError(f"config/location/opening_times: not an OCPI Hours object: {errors[0]}")
        for name in (self.evse_ids or {}):
            if len(name) > 36:
                raise ConfigError(f"config/evse_ids/{name}: a charger name is an EVSE uid, at most 36 characters")
        if self.tariff is not None:
            object.__setattr__(self, "tariff", {"id": "default", "currency": "EUR", "price_per_kWh": 0,
                                                "price_per_hour": 0, "vat_percent": 0, **self.tariff})

    def covers(self, name: str) -> bool:
        return named(self.chargers, name)


@implementer(IAuthorizer)
class OcpiFront(Instance):
    """See the module docstring."""
    Config = OcpiFrontConfig

    def __init__(self, ctx, config: OcpiFrontConfig):
        super().__init__(ctx, config)
        self.client = Client(ctx.reactor, ctx.clock, timeout_s=config.request_timeout_s)
        self.registrar = Registrar(self)
        self.tokens = TokenStore(self)
        self.authorizer = Authorizer(self)
        self.commands = Commands(self)
        self.api = Api(self)
        self.pusher: Optional[Pusher] = None
        self.chargers: dict[str, Any] = {}
        self.roaming: dict[str, dict] = {}           # EVC session id -> its roaming record (data/sessions/<id>)
        self.sessions: dict[str, Session] = {}       # newest Session of each roaming session
        self.claims: dict[str, dict] = {}            # charger -> roaming authorization waiting for its session
        self.evse_sent: dict[str, str] = {}          # charger -> the EVSE status the eMSP has (or will have)
        self.location_digest: Optional[str] = None   # of the Location structure last PUT
        self.counters = {"unauthorized": 0}
        self.port = None
        self.listening = None
        self.ready = defer.Deferred()
        self._unsubs: list = []
        self._charger_unsubs: dict[str, Any] = {}
        self._gone: dict[str, Any] = {}              # charger -> the call that reports it removed
        self.detach_grace_s = DETACH_GRACE_S
        self._location_call = None
        self._update_call = None
        self._stopped = False

    # -- service --

    def startService(self):
        if self.ctx.store is None or self.ctx.reactor is None:
            raise ConfigError(f"type: front/{self.type_name} needs the store and a reactor")
        self.pusher = Pusher(self)
        host, port = host_port(self.config.listen)
        site = web_server.Site(Root(self))
        site.displayTracebacks = False
        site.noisy = False
        try:
            self.port = self.ctx.reactor.listenTCP(port, site, interface=host)
        except net_error.CannotListenError as e:
            raise ConfigError(f"config/listen: cannot listen on {self.config.listen} ({e.socketError})") from None
        super().startService()
        where = self.port.getHost()
        self.listening = f"{where.host}:{where.port}"
        self.ctx.state.set("listening", self.listening)
        log.info("{front}: OCPI endpoints at {where} (the eMSP's versions URL: {url})", front=self.ctx.key,
                 where=self.listening, url=self.versions_url)
        defer.ensureDeferred(self._start()).addErrback(self._start_failed)

    async def _start(self) -> None:
        delay = self.config.retry_min_s
        while not self._stopped:
            try:
                await self.registrar.load()
                await self.pusher.load()
                await self.tokens.load()
                await self._load_records()
                break
            except Exception as e:
                log.warn("{front}: data/ not read ({error}); retrying in {delay_s} s", front=self.ctx.key,
                         error=str(e)[:200], delay_s=delay)
                from twisted.internet import task
                await task.deferLater(self.ctx.clock, delay, lambda: None)
                delay = min(delay * 2, self.config.retry_max_s)
        if self._stopped:
            return
        for name, inst in sorted(select_instances(self.ctx, "charger", self.config.chargers, log).items()):
            self._add_charger(name, inst)
        self._unsubs.append(follow_instances(self.ctx, "charger", self.config.chargers, self._charger_started,
                                             self._charger_stopped))
        if self.ctx.events is not None:
            self._unsubs.append(self.ctx.events.subscribe(("session",), self._on_session))
        self.registrar.start()
        self.pusher.start()
        await self._reconcile()
        self._schedule_location()
        self._update_call = self.ctx.clock.callLater(self.config.session_update_s, self._periodic)
        if not self.ready.called:
            self.ready.callback(self)

    def _start_failed(self, f) -> None:
        log.failure("{front}: start failed", f, front=self.ctx.key)
        self.ctx.state.set("error", f"front/{self.type_name} failed to start: {f.getErrorMessage()[:200]}")

    def stopService(self):
        self._stopped = True
        super().stopService()
        for unsub in self._unsubs + list(self._charger_unsubs.values()):
            unsub()
        self._unsubs, self._charger_unsubs = [], {}
        for call in (self._location_call, self._update_call, *self._gone.values()):
            if call is not None and call.active():
                call.cancel()
        self._gone = {}
        self.registrar.stop()
        self.commands.stop()
        port, self.port = self.port, None
        d = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        if self.pusher is not None:
            d.addCallback(lambda _: self.pusher.stop())
        return d.addCallback(lambda _: None)

    async def _load_records(self) -> None:
        r = await self.ctx.store.range(self.ctx.data_key("sessions/"), prefix=True)
        for kv in r.kvs:
            try:
                rec = json.loads(kv.value)
                self.roaming[rec["session"]] = rec
            except (ValueError, KeyError, TypeError):
                log.warn("{front}: unreadable roaming record {key} ignored", front=self.ctx.key, key=kv.key)
        r = await self.ctx.store.range(self.ctx.data_key("location"))
        if r.kvs:
            self.location_digest = json.loads(r.kvs[0].value).get("digest")
            self.evse_sent = json.loads(r.kvs[0].value).get("evses", {})

    async def _reconcile(self) -> None:
        """Roaming sessions whose CDR is not queued yet: read each from its charger's data/sessions/ (it may have
        ended while this front was not running, e.g. during a restart of the front alone) and catch up."""
        for sid, rec in sorted(self.roaming.items()):
            if rec.get("cdr_queued"):
                continue
            key = f"{self.ctx.root}/charger/{rec['charger']}/data/sessions/{sid}"
            try:
                r = await self.ctx.store.range(key)
                s = Session.from_json(r.kvs[0].value) if r.kvs else None
            except Exception as e:
                log.warn("{front}: session {id} not read back ({error}); its next event catches up",
                         front=self.ctx.key, id=sid, error=str(e)[:200])
                continue
            if s is None or rec.get("cdr_queued"):      # (an event may have caught up during the read)
                continue
            self.sessions.setdefault(sid, s)
            if not s.open:
                log.info("{front}: session {id} ended while the front was away; completing it", front=self.ctx.key,
                         id=sid)
                self._push_session(rec, s)
                self._push_cdr(rec, s)

    def count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # -- who EVC is --

    @property
    def versions_url(self) -> str:
        return self.config.public_url.rstrip("/") + "/ocpi/versions"

    @property
    def party(self) -> Party:
        return Party(self.config.country_code, self.config.party_id)

    def offered_versions(self) -> list[str]:
        newest = tuple(int(p) for p in self.config.version.split("."))
        return [v for v in objects.VERSIONS if tuple(int(p) for p in v.split(".")) <= newest]

    def versions(self) -> list[dict]:
        base = self.config.public_url.rstrip("/") + "/ocpi/"
        return [{"version": v, "url": base + v} for v in self.offered_versions()]

    def details(self, version: str) -> dict:
        base = f"{self.config.public_url.rstrip('/')}/ocpi/{version}/"
        mods = [("credentials", "SENDER"), ("credentials", "RECEIVER"), ("locations", "SENDER"),
                ("sessions", "SENDER"), ("cdrs", "SENDER"), ("tariffs", "SENDER"), ("tokens", "RECEIVER"),
                ("commands", "RECEIVER")]
        if version == "2.1.1":
            return {"version": version, "endpoints": [{"identifier": m, "url": base + m} for m, role in mods
                                                      if role == "SENDER" or m != "credentials"]}
        return {"version": version, "endpoints": [{"identifier": m, "role": role, "url": base + m}
                                                  for m, role in mods]}

    def our_credentials(self, version: str, token: str) -> dict:
        business = {"name": self.config.business_name}
        if self.config.website:
            business["website"] = self.config.website
        if version == "2.1.1":
            doc = {"token": token, "url": self.versions_url, "business_details": business,
                   "party_id": self.config.party_id, "country_code": self.config.country_code}
        else:
            doc = {"token": token, "url": self.versions_url,
                   "roles": [{"role": "CPO", "business_details": business, "party_id": self.config.party_id,
                              "country_code": self.config.country_code}]}
        return objects.check("Credentials", doc, version)

    def routing_headers(self) -> dict:
        creds = self.registrar.creds
        h = {"OCPI-from-country-code": self.config.country_code, "OCPI-from-party-id": self.config.party_id}
        if creds is not None:
            h.update({"OCPI-to-country-code": creds.emsp.country_code, "OCPI-to-party-id": creds.emsp.party_id})
        return h

    @property
    def version(self) -> str:
        creds = self.registrar.creds
        return creds.version if creds is not None else self.config.version

    def registered(self) -> None:
        self.location_digest = None           # a new registration gets the whole Location
        self._schedule_location(0)
        if self.pusher is not None:
            self.pusher.pump()

    def unregistered(self) -> None:
        pass

    # -- pushes --

    def push_checked(self, method: str, module: str, name: str, body: dict, *, path: str = "", url: str = "",
                     what: str = "", version: Optional[str] = None, partial: bool = False, also=()) -> bool:
        """Queue `body` after checking it as an OCPI `name`; an invalid one is EVC's mistake: logged, not sent."""
        errors = objects.errors_of(name, body, version or self.version, partial)
        if errors:
            log.error("{front}: not sending {what}: it is not a valid OCPI {name}: {errors}", front=self.ctx.key,
                      what=what or name, name=name, errors="; ".join(errors[:3]))
            self.ctx.state.set("error", f"EVC built an invalid {name} ({errors[0]}); see its log")
            return False
        self.pusher.push(method, module, body, path=path, url=url, what=what, also=also)
        return True

    def pushed(self, entry, response) -> None:
        if entry.payload.get("module") == "cdrs" and entry.action == "POST":
            where = response.headers.get("location")
            sid = entry.payload["body"].get("id")
            rec = self.roaming.get(sid)
            if rec is not None and where:
                rec["cdr_url"] = where
                self._save_record(rec)

    # -- chargers and the Location --

    def covered(self) -> list[str]:
        return sorted(self.chargers)

    def charger(self, name: str):
        return self.chargers.get(name)

    def _charger_started(self, name: str, svc) -> None:
        if self.running:
            self._add_charger(name, svc)
            self._schedule_location()

    def _charger_stopped(self, name: str, svc) -> None:
        if self.chargers.get(name) is svc and not self._stopped:
            old = self._gone.pop(name, None)
            if old is not None and old.active():
                old.cancel()
            self._gone[name] = self.ctx.clock.callLater(self.detach_grace_s, self._charger_gone, name, svc)

    def _charger_gone(self, name: str, svc) -> None:
        """A charger that stopped and did not come back: its EVSE is REMOVED, and leaves the Location."""
        self._gone.pop(name, None)
        if self.chargers.get(name) is not svc:
            return
        self._drop_charger(name)
        self._evse_changed(name, removed=True)
        self._schedule_location(0)

    def _add_charger(self, name: str, inst) -> None:
        gone = self._gone.pop(name, None)
        if gone is not None and gone.active():
            gone.cancel()
        self._drop_charger(name)
        if len(name) > 36:
            log.warn("{front}: charger {charger}: its name is over 36 characters, too long for an EVSE uid",
                     front=self.ctx.key, charger=name)
            return
        self.chargers[name] = inst
        subscribe = getattr(inst, "subscribe", None)
        if callable(subscribe):
            self._charger_unsubs[name] = subscribe(lambda status, n=name: self._evse_changed(n))
        self._evse_changed(name)

    def _drop_charger(self, name: str) -> None:
        unsub = self._charger_unsubs.pop(name, None)
        if unsub is not None:
            unsub()
        self.chargers.pop(name, None)

    def open_session(self, name: str) -> Optional[Session]:
        inst = self.chargers.get(name)
        tracker = getattr(inst, "sessions", None)
        return getattr(tracker, "session", None)

    def evse_status_of(self, name: str) -> str:
        inst = self.chargers.get(name)
        if inst is None:
            return "INOPERATIVE"
        cfg = getattr(inst, "config", None)
        return model.evse_status(bool(getattr(inst, "running", True)), getattr(inst, "status", None),
                                 getattr(cfg, "mode", None), self.open_session(name) is not None)

    def _charger_cfg(self, name: str):
        inst = self.chargers.get(name)
        return getattr(inst, "config", None)

    def build_evse(self, name: str, version: Optional[str] = None) -> dict:
        return model.evse(version or self.version, self.config, name, self._charger_cfg(name),
                          self.evse_status_of(name), self.ctx.clock.seconds())

    def build_location(self, version: Optional[str] = None, only: Optional[str] = None) -> dict:
        version = version or self.version
        names = [only] if only is not None else self.covered()
        evses = [self.build_evse(n, version) for n in names]
        return model.location(version, self.config, evses, self.ctx.clock.seconds())

    def _structure_digest(self, doc: dict) -> str:
        def strip(x):
            if isinstance(x, dict):
                return {k: strip(v) for k, v in x.items() if k not in ("last_updated", "status")}
            if isinstance(x, list):
                return [strip(v) for v in x]
            return x
        return hashlib.sha256(json.dumps(strip(doc), sort_keys=True).encode()).hexdigest()

    def _schedule_location(self, delay_s: float = LOCATION_SETTLE_S) -> None:
        if self._stopped:
            return
        if self._location_call is not None and self._location_call.active():
            if delay_s > 0:
                return
            self._location_call.cancel()
        self._location_call = self.ctx.clock.callLater(delay_s, self._push_location)

    def _push_location(self) -> None:
        self._location_call = None
        if self.registrar.creds is None or self.pusher is None or not self.pusher.outbox.loaded:
            return
        doc = self.build_location()
        digest = self._structure_digest(doc)
        if digest == self.location_digest:
            return
        evses = {e["uid"]: e["status"] for e in doc["evses"]}
        record = Put(self.ctx.data_key("location"), json.dumps({"digest": digest, "evses": evses}).encode())
        cfg = self.config
        if self.push_checked("PUT", "locations", "Location", doc, path=f"/{cfg.country_code}/{cfg.party_id}/"
                             f"{cfg.location['id']}", what=f"PUT location {cfg.location['id']}", also=[record]):
            self.location_digest = digest
            self.evse_sent = evses
            log.info("{front}: Location {id} queued with {n} EVSE(s)", front=self.ctx.key, id=cfg.location["id"],
                     n=len(evses))

    def _evse_changed(self, name: str, removed: bool = False) -> None:
        if self._stopped or self.pusher is None or not self.pusher.outbox.loaded:
            return
        if removed:
            if name not in self.evse_sent:
                return
            status = "REMOVED"
        elif name in self.chargers:
            status = self.evse_status_of(name)
        else:
            return
        if self.location_digest is None or self.registrar.creds is None:
            return                     # the Location PUT will carry it
        if self.evse_sent.get(name) == status:
            return
        self.evse_sent[name] = status
        if removed:
            del self.evse_sent[name]
        cfg = self.config
        body = {"status": status, "last_updated": model.ocpi_time(self.ctx.clock.seconds())}
        record = Put(self.ctx.data_key("location"), json.dumps({"digest": self.location_digest,
                                                                "evses": self.evse_sent}).encode())
        self.push_checked("PATCH", "locations", "EVSE", body, partial=True,
                          path=f"/{cfg.country_code}/{cfg.party_id}/{cfg.location['id']}/{name}",
                          what=f"PATCH EVSE {name} status {status}", also=[record])

    def location_page(self, version: str, args: dict, base_url: str):
        page = parse_page(args)
        data, headers = paginate([self.build_location(version)], page, base_url, args)
        return data, headers

    def location_object(self, version: str, loc_id: str, evse_uid: Optional[str] = None,
                        connector_id: Optional[str] = None) -> Optional[dict]:
        if loc_id != self.config.location["id"]:
            return None
        if evse_uid is None:
            return self.build_location(version)
        if evse_uid not in self.chargers:
            return None
        evse = self.build_evse(evse_uid, version)
        if connector_id is None:
            return evse
        return next((c for c in evse["connectors"] if c["id"] == connector_id), None)

    def list_page(self, what: str, version: str, args: dict, base_url: str):
        page = parse_page(args)
        if what == "tariffs":
            t = model.tariff(version, self.config, self.ctx.clock.seconds())
            items = [t] if t is not None else []
        elif what == "sessions":
            items = [r["doc"] for r in self.roaming.values() if r.get("doc") and r.get("version") == version]
        else:
            items = [r["cdr"] for r in self.roaming.values() if r.get("cdr") and r.get("version") == version]
        return paginate(items, page, base_url, args)

    # -- IAuthorizer --

    def covers(self, charger: str) -> bool:
        return charger in self.chargers

    def authorize(self, id_tag: str, charger: str) -> defer.Deferred:
        return defer.ensureDeferred(self.authorizer.authorize(id_tag, charger))

    # -- roaming sessions --

    def roaming_authorized(self, charger: str, id_tag: str, token: dict, auth_method: str,
                           authorization_reference: Optional[str]) -> None:
        """The eMSP (or its token) authorized `id_tag` at `charger`: the session that this authorization opens there
        is the eMSP's."""
        creds = self.registrar.creds
        party = creds.party if creds is not None else {"country_code": "", "party_id": ""}
        self.claims[charger] = {"id_tag": id_tag, "token": model.cdr_token(self.version, token, party),
                                "auth_method": auth_method, "authorization_reference": authorization_reference,
                                "at_s": self.ctx.clock.seconds()}

    def roaming_withdrawn(self, charger: str, id_tag: Optional[str]) -> None:
        claim = self.claims.get(charger)
        if claim is not None and (id_tag is None or claim["id_tag"].upper() == (id_tag or "").upper()):
            del self.claims[charger]

    def session_of(self, sid: str) -> Optional[Session]:
        return self.sessions.get(sid)

    def _on_session(self, topic, s) -> None:
        if not isinstance(s, Session) or self._stopped or s.charger not in self.chargers:
            return
        self._evse_changed(s.charger)
        rec = self.roaming.get(s.id)
        if rec is None:
            claim = self.claims.get(s.charger)
            if claim is None or not s.authorized_time:
                return
            if self.ctx.clock.seconds() - claim["at_s"] > CLAIM_WINDOW_S or (
                    (s.id_tag or "").upper() != claim["id_tag"].upper()):
                return
            del self.claims[s.charger]
            self.commands.session_settled(s.charger)
            rec = {"session": s.id, "charger": s.charger, "id_tag": s.id_tag, "token": claim["token"],
                   "auth_method": claim["auth_method"], "version": self.version,
                   "authorization_reference": claim["authorization_reference"], "state": None,
                   "start": model.ocpi_time(model.parse_time(s.authorized_time)), "cdr_queued": False}
            self.roaming[s.id] = rec
            log.info("{front}: session {id} at {charger} is a roaming session of the eMSP", front=self.ctx.key,
                     id=s.id, charger=s.charger)
        old = self.sessions.get(s.id)
        self.sessions[s.id] = s
        if rec.get("cdr_queued"):
            return
        if old is None or old.state != s.state or rec.get("state") != s.state:
            self._push_session(rec, s, put=rec.get("state") is None)
        if not s.open:
            self._push_cdr(rec, s)

    def _session_path(self, sid: str) -> str:
        return f"/{self.config.country_code}/{self.config.party_id}/{sid}"

    def _push_session(self, rec: dict, s: Session, put: bool = False) -> None:
        version = rec["version"]
        now = self.ctx.clock.seconds()
        doc = model.session(version, self.config, rec, s, self.build_location(version, only=s.charger)
                            if version == "2.1.1" else {}, now)
        rec["doc"] = doc
        rec["state"] = s.state
        record = self._record_put(rec)
        if put:
            self.push_checked("PUT", "sessions", "Session", doc, path=self._session_path(s.id), version=version,
                              what=f"PUT session {s.id}", also=[record])
            return
        patch = {k: doc[k] for k in ("kwh", "charging_periods", "total_cost", "status", "last_updated",
                                     "end_date_time", "end_datetime") if k in doc}
        self.push_checked("PATCH", "sessions", "Session", patch, path=self._session_path(s.id), version=version,
                          partial=True, what=f"PATCH session {s.id} ({doc['status']})", also=[record])

    def _push_cdr(self, rec: dict, s: Session) -> None:
        version = rec["version"]
        now = self.ctx.clock.seconds()
        doc = model.cdr(version, self.config, rec, s, self.build_location(version, only=s.charger),
                        self.build_evse(s.charger, version), now)
        rec["cdr"] = doc
        rec["cdr_queued"] = True
        if self.push_checked("POST", "cdrs", "CDR", doc, path="", version=version, what=f"POST CDR {s.id}",
                             also=[self._record_put(rec)]):
            log.info("{front}: CDR of session {id} queued: {kwh} kWh", front=self.ctx.key, id=s.id,
                     kwh=doc.get("total_energy"))

    def _record_put(self, rec: dict) -> Put:
        return Put(self.ctx.data_key(f"sessions/{rec['session']}"), json.dumps(rec, sort_keys=True).encode())

    def _save_record(self, rec: dict) -> None:
        if self.pusher is not None:
            self.pusher.outbox.write([self._record_put(rec)])

    def _periodic(self) -> None:
        self._update_call = self.ctx.clock.callLater(self.config.session_update_s, self._periodic)
        for sid, s in list(self.sessions.items()):
            rec = self.roaming.get(sid)
            if rec is None or not s.open or rec.get("cdr_queued"):
                continue
            tracker = getattr(self.chargers.get(s.charger), "sessions", None)
            newest = getattr(tracker, "session", None)
            if newest is not None and newest.id == sid:
                s = self.sessions[sid] = newest
            self._push_session(rec, s)


@FRONTS.register("ocpi")
class OcpiCpoFront(OcpiFront):
    """front/ocpi: any eMSP."""


__all__ = ["OcpiFront", "OcpiFrontConfig", "OcpiCpoFront"]
