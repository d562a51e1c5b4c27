"""server/ocpp: EVC's OCPP 1.6J central system, the websocket endpoint networked chargers connect to.

A charger connects to ws[s]://<host>:<port><path>/<cp_id> offering the subprotocol `ocpp1.6`. The handshake is
refused (HTTP status, no websocket) when:
- the path is not `<path>/<cp_id>` (404), or no charger/ocpp with that cp_id uses this server (404). When a charger
  with that cp_id exists but cannot take it (its config is in error, e.g. it names no server while the site has
  several, or it uses another server), the log line names that charger and its error; the charge point is only told
  that it is not usable;
- security profile 1 or 2 and the HTTP Basic credentials are missing (401), name another user than the cp_id or
  do not match the charger's password (401);
- the client offers no subprotocol or only others than `ocpp1.6` (websockets answers 400).
Security profile 2 needs TLS (`tls_cert`, `tls_key`; TLS 1.2 or newer); TLS may also be used with profiles 0 and 1.

Chargers register themselves (`register(cp_id, charger)` from their startService), so a charger added to the
config is accepted at once and a removed one is refused (its open connection is closed after `park_s`). A charger
restarted by a config change keeps its charge point's connection (handed to the new instance). A charge point that
connects again while its old connection is still open replaces it: the newest connection wins (the old one is
closed).

The server also allocates OCPP transaction ids for its chargers: one counter at `data/transaction_id`, advanced with
an etcd transaction that compares the key's mod revision, so two EVC runs (or a restart) never hand out the same id.

websockets runs on the reactor's own asyncio loop (evc.ocpp.bridge); startService and stopService return
Deferreds. The socket is bound synchronously in startService, so a port in use is reported in state/error.

State: `listening` (host:port), `tls`, `security_profile`, `connected` (the cp_ids connected now, a JSON list).
"""
from __future__ import annotations

import asyncio
import dataclasses
import http
import socket
import ssl
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import websockets
from ocpp.exceptions import GenericError
from twisted.internet import defer
from twisted.logger import Logger

from evc.errors import ConfigError
from evc.instance import Instance
from evc.ocpp import cs_auth
from evc.ocpp.bridge import to_deferred
from evc.ocpp.central import HARD_LIMIT_FACTOR, SUBPROTOCOL, CentralConnection
from evc.ocpp.pace import SetupPacer
from evc.registry import SERVERS
from evc.store.interface import Compare, Put
from evc.tree import decode_leaf

log = Logger(namespace="evc.server.ocpp")

# Connections waiting to be accepted. A site's chargers reconnect all at once after a network blip; with the default
# (100) a busy moment of the loop overflows the queue, the kernel drops the SYNs and each charger waits for its TCP
# retransmission (1 s, then 3 s...) before its handshake even starts. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 2048

# How often a lost transaction-id race is retried before the StartTransaction fails (and the charger resends it).
ALLOCATE_ATTEMPTS = 20


@dataclasses.dataclass(frozen=True)
class OcppServerConfig:
    """schema/server/ocpp.json describes every field."""
    listen: str
    path: str = "/ocpp"
    security_profile: int = 0
    tls_cert: str | None = None
    tls_key: str | None = None
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 10.0
    max_frame_bytes: int = 65536
    call_timeout_s: float = 30.0
    heartbeat_interval_s: int = 300
    setup_concurrency: int = 4

    def __post_init__(self):
        host_port(self.listen)
        if not self.path.startswith("/") or self.path.endswith("/") and self.path != "/":
            raise ConfigError(f"config/path: {self.path!r} must start with '/' and not end with one")
        if self.security_profile not in (0, 1, 2):
            raise ConfigError(f"config/security_profile: {self.security_profile} is not 0, 1 or 2 "
                              "(profile 3, client certificates, is not supported)")
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ConfigError(f"config/{missing}: give tls_cert and tls_key together")
        if self.security_profile == 2 and self.tls_cert is None:
            raise ConfigError("config/tls_cert: security profile 2 needs TLS (tls_cert and tls_key)")
        if self.setup_concurrency < 0:
            raise ConfigError(f"config/setup_concurrency: {self.setup_concurrency} is below 0 (0: no pacing)")
        if self.max_frame_bytes < 1024:
            raise ConfigError(f"config/max_frame_bytes: {self.max_frame_bytes} is below 1024")
        for name in ("ping_interval_s", "ping_timeout_s", "call_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config/{name}: must be more than 0")
        if self.heartbeat_interval_s < 1:
            raise ConfigError("config/heartbeat_interval_s: must be at least 1")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def host_port(listen: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port); ConfigError naming config/listen."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"config/listen: {listen!r} is not host:port (e.g. 0.0.0.0:9000)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


@SERVERS.register("ocpp")
class OcppServer(Instance):
    """The central system endpoint; see the module docstring."""

    Config = OcppServerConfig

    park_s = 5.0       # how long a connection waits for its charger's instance to come back (a restart)

    def __init__(self, ctx, config: OcppServerConfig):
        super().__init__(ctx, config)
        self.chargers: dict[str, Any] = {}          # cp_id -> charger instance
        self.connections: dict[str, CentralConnection] = {}
        self.port: int | None = None
        self.refused = 0                            # handshakes refused (tests, state)
        self._sock: socket.socket | None = None
        self._ws_server = None
        self._serving: defer.Deferred | None = None
        self._allocating = defer.DeferredLock()
        self._counter_rev: int | None = None        # mod revision of data/transaction_id as last written by us
        self._counter: int | None = None
        self._parked: dict[str, Any] = {}           # cp_id -> the timer that closes its parked connection
        # The chargers' set-up CALLs after a boot (evc.ocpp.pace); None: not paced.
        self.setup_pacer = SetupPacer(ctx.clock, slots=config.setup_concurrency) if config.setup_concurrency else None

    # --- chargers ---

    def register(self, cp_id: str, charger) -> Callable[[], None]:
        """Route connections of `cp_id` to `charger` (a charger/ocpp instance); returns unregister().

        A charger restarted by a config change (its mode, its A_max, ...) unregisters and registers again: the
        charge point's open connection is parked meanwhile and handed to the new instance, so a setting changed
        in etcd does not disconnect the charge point. A connection left parked for `park_s` (the charger was
        removed) is closed."""
        other = self.chargers.get(cp_id)
        if other is not None and other is not charger:
            raise ConfigError(f"config/cp_id: {cp_id!r} is already used by {other.ctx.key} on server "
                              f"{self.ctx.name}")
        self.chargers[cp_id] = charger
        if cp_id in self._parked:
            # The charger registers before it runs: hand the connection over once its startService is done.
            self.ctx.clock.callLater(0, self._hand_over, cp_id)

        def unregister() -> None:
            if self.chargers.get(cp_id) is charger:
                del self.chargers[cp_id]
            conn = self.connections.get(cp_id)
            if conn is not None and conn.handler is charger and not conn.closed and self.running:
                conn.handler = _Parked(cp_id)
                timer = self._parked.pop(cp_id, None)
                if timer is not None and timer.active():
                    timer.cancel()
                self._parked[cp_id] = self.ctx.clock.callLater(self.park_s, self._close_parked, cp_id)
        return unregister

    def _hand_over(self, cp_id: str) -> None:
        timer = self._parked.pop(cp_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        conn, charger = self.connections.get(cp_id), self.chargers.get(cp_id)
        if conn is None or conn.closed or not isinstance(conn.handler, _Parked):
            return
        if charger is None or not charger.running:
            self._parked[cp_id] = self.ctx.clock.callLater(self.park_s, self._close_parked, cp_id)
            return
        conn.handler = charger
        log.info("{server}: {cp_id}: connection handed to the restarted charger", server=self.ctx.key, cp_id=cp_id)
        try:
            charger.ocpp_connected(conn)
        except Exception:
            log.failure("{server}: {cp_id}: the charger did not take the connection", server=self.ctx.key,
                        cp_id=cp_id)
            conn.close(1011, "internal error")

    def _close_parked(self, cp_id: str) -> None:
        self._parked.pop(cp_id, None)
        conn = self.connections.get(cp_id)
        if conn is not None and not conn.closed and isinstance(conn.handler, _Parked):
            log.info("{server}: {cp_id} is no longer configured: closing its connection", server=self.ctx.key,
                     cp_id=cp_id)
            conn.close(1008, "charge point no longer configured")

    # --- service ---

    def startService(self):
        cfg = self.config
        ssl_ctx = self._ssl_context() if cfg.tls else None
        host, port = host_port(cfg.listen)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, addr = infos[0]
            sock = socket.create_server(addr, family=family, backlog=LISTEN_BACKLOG)
        except OSError as e:
            raise ConfigError(f"config/listen: cannot listen on {cfg.listen} ({e.strerror or e})") from None
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        super().startService()
        where = f"{host}:{self.port}" if ":" not in host else f"[{host}]:{self.port}"
        self.ctx.state.update({"listening": where, "tls": cfg.tls, "security_profile": cfg.security_profile,
                               "connected": []})
        self._serving = to_deferred(self._serve(sock, ssl_ctx), self.ctx.reactor)

        def started(server):
            self._ws_server = server
            log.info("{server}: OCPP 1.6J central system on {scheme}://{where}{path}/<cp_id> (security profile "
                     "{profile})", server=self.ctx.key, scheme="wss" if cfg.tls else "ws", where=where,
                     path=cfg.path, profile=cfg.security_profile)
            return None

        def failed(f):
            log.failure("{server}: the websocket server did not start", f, server=self.ctx.key)
            self.ctx.state.set("listening", False)
            return f
        self._serving.addCallbacks(started, failed)
        return self._serving

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        except FileNotFoundError as e:
            leaf = "tls_key" if e.filename == self.config.tls_key else "tls_cert"
            raise ConfigError(f"config/{leaf}: {e.filename} does not exist") from None
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"config/tls_cert: the certificate or key cannot be used ({e})") from None
        return ctx

    async def _serve(self, sock: socket.socket, ssl_ctx):
        cfg = self.config
        return await websockets.serve(
            self._handler, sock=sock, ssl=ssl_ctx, subprotocols=[SUBPROTOCOL],
            process_request=self._process_request, backlog=LISTEN_BACKLOG,
            # EVC runs its own keepalive (it marks the charger alive on every pong).
            ping_interval=None, close_timeout=cfg.ping_timeout_s,
            max_size=cfg.max_frame_bytes * HARD_LIMIT_FACTOR, server_header="EVC")

    def stopService(self):
        super().stopService()
        if self.setup_pacer is not None:
            self.setup_pacer.stop()
        for timer in self._parked.values():
            if timer.active():
                timer.cancel()
        self._parked.clear()
        if self._serving is not None and not self._serving.called:
            self._serving.cancel()
        server, self._ws_server = self._ws_server, None
        if server is None:
            if self._sock is not None:
                self._sock.close()
            return defer.succeed(None)

        async def close():
            server.close(close_connections=True)
            await server.wait_closed()
        d = to_deferred(close(), self.ctx.reactor)
        d.addErrback(lambda f: log.failure("{server}: closing failed", f, server=self.ctx.key))
        return d

    # --- handshakes ---

    async def _process_request(self, connection, request):
        """Check the path, the charger and its credentials before the websocket handshake."""
        cfg = self.config
        path = urlsplit(request.path).path
        prefix = cfg.path.rstrip("/") + "/"
        peer = _peer(connection)
        if not path.startswith(prefix) or "/" in path[len(prefix):] or len(path) == len(prefix):
            return self._refuse(connection, http.HTTPStatus.NOT_FOUND, peer, None,
                                f"not an OCPP endpoint: connect to {cfg.path}/<charge point id>")
        cp_id = unquote(path[len(prefix):])
        if self.setup_pacer is not None:
            self.setup_pacer.arrived()
        charger = self.chargers.get(cp_id)
        if charger is None:
            why, body = self._not_ours(cp_id)
            return self._refuse(connection, http.HTTPStatus.NOT_FOUND, peer, cp_id, why, body=body)
        if cfg.security_profile >= 1:
            creds = cs_auth.parse_basic_auth(request.headers.get("Authorization"))
            if creds is None:
                return self._refuse(connection, http.HTTPStatus.UNAUTHORIZED, peer, cp_id,
                                    "HTTP Basic credentials required (security profile "
                                    f"{cfg.security_profile})", challenge=True)
            user, password = creds
            if user != cp_id:
                return self._refuse(connection, http.HTTPStatus.UNAUTHORIZED, peer, cp_id,
                                    "the Basic auth user name must be the charge point id", challenge=True)
            stored_hash, plain = charger.credentials()
            ok = await asyncio.get_running_loop().run_in_executor(
                None, cs_auth.verify_password, password, stored_hash, plain)
            if not ok:
                return self._refuse(connection, http.HTTPStatus.UNAUTHORIZED, peer, cp_id, "wrong password",
                                    challenge=True)
        connection.username = cp_id
        return None

    def _not_ours(self, cp_id: str) -> tuple[str, str | None]:
        """Why no charger is registered for `cp_id`: (the log line's reason, the HTTP body if it must differ).

        A charger that exists but cannot take the charge point (its config is in error, or it uses another server)
        is named with its error, so the log of this server says what to fix. The charge point, which is not
        authenticated yet, only learns that its charger is not usable."""
        unusable = "charge point not usable: its charger in the central system has a config error (see EVC's log)"
        for charger in self.ctx.find("charger").values():
            if getattr(charger, "cp_id", None) != cp_id:
                continue
            choice = getattr(charger, "server_choice", None)
            if choice is not None and choice.server is None:
                return f"{charger.ctx.key} has a config error: {choice.error or 'it uses no server'}", unusable
            other = getattr(getattr(charger, "config", None), "server", None) or getattr(choice, "name", None)
            if other and other != self.ctx.name:
                return (f"{charger.ctx.key} has this cp_id but uses server/{other}, not {self.ctx.key}",
                        "unknown charge point on this server")
        for name, problem in sorted(self.ctx.problems("charger").items()):
            if problem.type_name not in ("ocpp", None):
                continue
            raw = problem.leaves.get("cp_id")
            named = decode_leaf(raw, {"type": "string"}, "config/cp_id").strip() if raw is not None else name
            if named == cp_id:
                return f"charger/{name} has a config error: {problem.error}", unusable
        return "unknown charge point (no charger/ocpp with this cp_id on this server)", None

    def _refuse(self, connection, status, peer: str, cp_id: str | None, why: str, challenge: bool = False,
                body: str | None = None):
        self.refused += 1
        self.ctx.state.set("refused", self.refused)
        log.warn("{server}: refused {who} from {peer}: {why}", server=self.ctx.key,
                 who=f"charge point {cp_id!r}" if cp_id is not None else "a connection", peer=peer, why=why)
        response = connection.respond(status, (body or why) + "\n")
        if challenge:
            response.headers["WWW-Authenticate"] = 'Basic realm="EVC OCPP", charset="UTF-8"'
        return response

    # --- connections ---

    async def _handler(self, ws) -> None:
        cp_id = ws.username
        charger = self.chargers.get(cp_id)
        if charger is None:      # removed between the handshake and now
            await ws.close(1008, "unknown charge point")
            return
        cfg = self.config
        conn = CentralConnection(ws, cp_id, charger, reactor=self.ctx.reactor, call_timeout_s=cfg.call_timeout_s,
                                 max_frame_bytes=cfg.max_frame_bytes, ping_interval_s=cfg.ping_interval_s,
                                 ping_timeout_s=cfg.ping_timeout_s)
        old = self.connections.get(cp_id)
        self.connections[cp_id] = conn
        self._publish_connected()
        log.info("{server}: {cp_id} connected from {peer}{replacing}", server=self.ctx.key, cp_id=cp_id,
                 peer=conn.peer, replacing=" (replacing its older connection)" if old is not None else "")
        try:
            charger.ocpp_connected(conn)
        except Exception:
            log.failure("{server}: {cp_id}: the charger did not take the connection", server=self.ctx.key,
                        cp_id=cp_id)
            await ws.close(1011, "internal error")
            return
        if old is not None and not old.closed:
            old.close(1000, "replaced by a newer connection of the same charge point")
        try:
            await conn.run()
        finally:
            if self.connections.get(cp_id) is conn:
                del self.connections[cp_id]
                self._publish_connected()
            log.info("{server}: {cp_id} disconnected ({reason})", server=self.ctx.key, cp_id=cp_id,
                     reason=conn.close_reason)

    def _publish_connected(self) -> None:
        # Computed when the state is flushed: a thousand charge points reconnecting at once sort the list once per
        # tick, not once per connection.
        if self.running:
            self.ctx.state.set_computed("connected", lambda: sorted(self.connections))

    # --- transaction ids ---

    def allocate_transaction_id(self) -> defer.Deferred:
        """Deferred[int]: a transaction id never handed out before by this server (persisted in data/)."""
        return self._allocating.run(lambda: defer.ensureDeferred(self._allocate()))

    async def _allocate(self) -> int:
        store = self.ctx.store
        if store is None:
            self._counter = (self._counter or 0) + 1     # tests without a store
            return self._counter
        key = self.ctx.data_key("transaction_id")
        for _ in range(ALLOCATE_ATTEMPTS):
            if self._counter is None or self._counter_rev is None:
                result = await store.range(key)
                if result.kvs:
                    kv = result.kvs[0]
                    self._counter = int(kv.value.decode().strip() or 0)
                    self._counter_rev = kv.mod_revision
                else:
                    self._counter, self._counter_rev = 0, 0
            guard = (Compare(key, "mod", "=", self._counter_rev) if self._counter_rev
                     else Compare(key, "version", "=", 0))
            nxt = self._counter + 1
            txn = await store.txn([guard], [Put(key, str(nxt).encode())])
            if txn.succeeded:
                self._counter, self._counter_rev = nxt, txn.revision
                self.ctx.state.set("transaction_id", nxt)
                return nxt
            self._counter = self._counter_rev = None    # someone else moved it: read again
        raise RuntimeError(f"{self.ctx.key}: data/transaction_id kept changing; no transaction id allocated")


class _Parked:
    """The handler of a connection whose charger is restarting: CALLs get GenericError (the charge point retries),
    everything else is ignored."""

    def __init__(self, cp_id: str):
        self.cp_id = cp_id

    def ocpp_call(self, action, payload):
        raise GenericError(description="the charger is restarting in the central system; try again")

    def ocpp_after(self, action, payload, result):
        pass

    def ocpp_seen(self, conn):
        pass

    def ocpp_disconnected(self, conn):
        pass


def _peer(connection) -> str:
    try:
        host, port = connection.remote_address[:2]
        return f"{host}:{port}"
    except Exception:
        return "?"


__all__ = ["OcppServer", "OcppServerConfig", "host_port"]
