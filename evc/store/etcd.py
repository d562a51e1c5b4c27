"""The etcd store: a Twisted-native client for etcd's v3 JSON gateway (treq), implementing IStore."""
from __future__ import annotations

import base64
import json
from collections import deque
import random
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import treq
from treq.client import HTTPClient
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, error as ierror
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent, HTTPConnectionPool, RequestNotSent, RequestTransmissionFailed, ResponseDone, ResponseFailed,
    ResponseNeverReceived, _HTTP11ClientFactory,
)
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from evc.errors import StoreError, StoreUnavailable
from evc.store.interface import (
    Compare, Delete, Event, IStore, IWatch, KeyValue, Put, RangeResult, TxnResult,
)

log = Logger(namespace="evc.store.etcd")

# gRPC status codes that etcd puts in the "code" field of an error body.
# Puts made while one batch is on its way go out together, in one txn (fewer than etcd's 128 operations per txn).
PUT_BATCH_OPS = 100
PUT_BATCH_BYTES = 512 * 1024

_GRPC_DEADLINE_EXCEEDED = 4
_GRPC_NOT_FOUND = 5
_GRPC_FAILED_PRECONDITION = 9
_GRPC_UNAVAILABLE = 14
_GRPC_UNAUTHENTICATED = 16

_TARGETS = {"value": "VALUE", "version": "VERSION", "create": "CREATE", "mod": "MOD", "lease": "LEASE"}
# The JSON field that carries the compared value, per target (etcd's Compare oneof).
_TARGET_FIELDS = {"value": "value", "version": "version", "create": "create_revision",
                  "mod": "mod_revision", "lease": "lease"}
_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}

# Connection-level failures: the server could not be reached or went away mid-request.
_UNREACHABLE = (ierror.ConnectError, ierror.ConnectionLost, ierror.ConnectionDone, defer.TimeoutError,
                ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed,
                RequestNotSent)


class EtcdError(StoreError):
    """etcd answered with a gRPC error; `code` is the gRPC status code, the message is etcd's."""

    def __init__(self, message: str, code: int | None = None, etcd_message: str = ""):
        super().__init__(message)
        self.code = code
        self.etcd_message = etcd_message


class _QuietFactory(_HTTP11ClientFactory):
    # Twisted logs every connection's factory start and stop at info level; one per reconnect is noise.
    noisy = False


class _AuthExpired(Exception):
    """The token we sent is no longer valid (expired, or the server restarted): authenticate again."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_bytes(key: str) -> bytes:
    # surrogateescape lets a key that is not valid UTF-8 round-trip through str.
    return key.encode("utf-8", "surrogateescape")


def _key_str(data: str) -> str:
    return base64.b64decode(data).decode("utf-8", "surrogateescape")


def _range_end(prefix: bytes) -> bytes:
    """etcd's range_end for every key starting with `prefix` (computed on bytes, not on str)."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


def _int(obj: dict, name: str) -> int:
    # int64 fields arrive as JSON strings, and fields equal to zero are omitted.
    return int(obj.get(name, 0) or 0)


def _kv(obj: dict) -> KeyValue:
    return KeyValue(key=_key_str(obj["key"]), value=base64.b64decode(obj.get("value", "")),
                    mod_revision=_int(obj, "mod_revision"), create_revision=_int(obj, "create_revision"),
                    version=_int(obj, "version"), lease=_int(obj, "lease"))


def _request_op(op: Put | Delete) -> dict:
    if isinstance(op, Put):
        body = {"key": _b64(_key_bytes(op.key)), "value": _b64(op.value)}
        if op.lease:
            body["lease"] = str(op.lease)
        return {"request_put": body}
    if isinstance(op, Delete):
        key = _key_bytes(op.key)
        body = {"key": _b64(key)}
        if op.prefix:
            body["range_end"] = _b64(_range_end(key))
        return {"request_delete_range": body}
    raise TypeError(f"txn operations must be Put or Delete, not {type(op).__name__}")


def _compare(c: Compare) -> dict:
    if c.target not in _TARGETS:
        raise ValueError(f"compare target {c.target!r} is not one of {sorted(_TARGETS)}")
    if c.result not in _RESULTS:
        raise ValueError(f"compare result {c.result!r} is not one of {sorted(_RESULTS)}")
    if c.target == "value":
        if not isinstance(c.value, bytes):
            raise TypeError(f"compare on the value of {c.key!r} needs bytes, not {type(c.value).__name__}")
        value: Any = _b64(c.value)
    else:
        if not isinstance(c.value, int) or isinstance(c.value, bool):
            raise TypeError(f"compare on the {c.target} of {c.key!r} needs an int, not {type(c.value).__name__}")
        value = str(c.value)
    return {"key": _b64(_key_bytes(c.key)), "target": _TARGETS[c.target], "result": _RESULTS[c.result],
            _TARGET_FIELDS[c.target]: value}


def _read_pem_blocks(path: str, what: str) -> list[bytes]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise StoreError(f"cannot read the etcd {what} {path!r}: {e.strerror}") from e
    marker = b"-----END CERTIFICATE-----"
    blocks = [part + marker for part in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in part]
    if not blocks:
        raise StoreError(f"the etcd {what} {path!r} holds no PEM certificate")
    return blocks


@implementer(IPolicyForHTTPS)
class _TLSPolicy:
    """Trust exactly the configured CA (and present a client certificate if one is configured)."""

    def __init__(self, ca_file: str | None, cert_file: str | None, key_file: str | None):
        self._trust = None
        if ca_file:
            try:
                certs = [Certificate.loadPEM(b) for b in _read_pem_blocks(ca_file, "CA file")]
            except SSL.Error as e:
                raise StoreError(f"the etcd CA file {ca_file!r} is not a valid PEM certificate: {e}") from e
            self._trust = trustRootFromCertificates(certs)
        self._client = None
        if cert_file or key_file:
            if not (cert_file and key_file):
                raise StoreError("an etcd client certificate needs both cert_file and key_file")
            cert = _read_pem_blocks(cert_file, "client certificate")[0]
            try:
                with open(key_file, "rb") as f:
                    key = f.read()
            except OSError as e:
                raise StoreError(f"cannot read the etcd client key {key_file!r}: {e.strerror}") from e
            try:
                self._client = PrivateCertificate.loadPEM(cert + b"\n" + key)
            except Exception as e:  # pyOpenSSL raises several types for a bad or mismatched key
                raise StoreError(f"the etcd client certificate {cert_file!r} and key {key_file!r} "
                                 f"do not load as a pair: {e}") from e

    def creatorForNetloc(self, hostname: bytes, port: int):
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust,
                                   clientCertificate=self._client)


def _tls_failure(f: Failure) -> Failure | None:
    """The TLS error inside an agent failure, if the failure is one."""
    reasons = getattr(f.value, "reasons", None) or []
    for r in reasons:
        if isinstance(r, Failure) and r.check(SSL.Error, VerificationError):
            return r
    if f.check(SSL.Error):
        return f
    return None


class _Backoff:
    """Jittered exponential backoff, with a log line at most once per `log_interval_s` while failing."""

    def __init__(self, clock, initial_s: float, max_s: float, log_interval_s: float):
        self._clock = clock
        self._initial_s = initial_s
        self._max_s = max_s
        self._log_interval_s = log_interval_s
        self._attempt = 0
        self._last_log: float | None = None

    @property
    def failing(self) -> bool:
        return self._attempt > 0

    def next_delay(self) -> float:
        base = min(self._max_s, self._initial_s * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        # Jitter so that many EVC processes do not hammer a recovering etcd in lockstep.
        return base * random.uniform(0.5, 1.0)

    def should_log(self) -> bool:
        now = self._clock.seconds()
        if self._last_log is None or now - self._last_log >= self._log_interval_s:
            self._last_log = now
            return True
        return False

    def reset(self) -> bool:
        """Back to the first delay; True when we were failing (so the caller can log the recovery)."""
        was = self._attempt > 0
        self._attempt = 0
        self._last_log = None
        return was


class _LineProtocol(Protocol):
    """Splits the streaming watch body into one JSON object per line, however the chunks fall."""

    def __init__(self, on_message: Callable[[dict], bool], on_end: Callable[[Failure], None]):
        self._on_message = on_message
        self._on_end = on_end
        self._pieces: list[bytes] = []
        self._done = False

    def dataReceived(self, data: bytes) -> None:
        while data and not self._done:
            nl = data.find(b"\n")
            if nl < 0:
                # Search only the new chunk for the newline: a 1 MB value arrives in many chunks.
                self._pieces.append(data)
                return
            self._pieces.append(data[:nl])
            line = b"".join(self._pieces)
            self._pieces = []
            data = data[nl + 1:]
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                msg = {"error": {"message": f"unparseable watch response: {line[:200]!r}"}}
            if not self._on_message(msg):
                self._done = True

    def connectionLost(self, reason: Failure = None) -> None:
        self._done = True
        self._on_end(reason)

    def abort(self) -> None:
        self._done = True
        if self.transport is not None:
            self.transport.stopProducing()


@implementer(IStore)
class EtcdStore:
    """IStore over etcd's v3 JSON gateway (etcd 3.4+), with treq on the injected reactor.

    `url` is the client URL (http:// or https://); `prefix` is the gateway's path ("/v3" on etcd 3.4+).
    Every request has a deadline of `timeout_s`. With `user`/`password` a token is fetched from
    /v3/auth/authenticate and fetched again once when etcd says it is no longer valid.
    """

    max_in_flight = 8      # unary requests on the wire at once; more wait (their deadline includes the wait)

    def __init__(self, url: str, reactor, user: str | None = None, password: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                 prefix: str = "/v3", timeout_s: float = 5.0, retry_initial_s: float = 0.2,
                 retry_max_s: float = 10.0, log_interval_s: float = 60.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"etcd URL {url!r} must look like http://host:port or https://host:port")
        if (ca_file or cert_file or key_file) and parts.scheme != "https":
            raise StoreError(f"etcd URL {url!r} is not https:// but TLS files are configured")
        if (user is None) != (password is None):
            raise StoreError("etcd authentication needs both a user and a password")
        self.url = url.rstrip("/")
        self._base = self.url + "/" + prefix.strip("/")
        self._reactor = reactor
        self._user = user
        self._password = password
        self._ca_file = ca_file
        self._cert_file = cert_file
        self._timeout_s = timeout_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.log_interval_s = log_interval_s
        policy = _TLSPolicy(ca_file, cert_file, key_file) if parts.scheme == "https" else None
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool._factory = _QuietFactory
        # A burst of requests (every charger of a site booting at once) shares a few kept-alive connections: without
        # the bound, each request beyond the pool's idle ones opens (and resolves, in a thread) a TCP connection of
        # its own and closes it again, and the burst stalls the reactor. Watch streams are not counted.
        self._pool.maxPersistentPerHost = self.max_in_flight
        self._slots = defer.DeferredSemaphore(self.max_in_flight)
        self._puts: deque[tuple[Put, defer.Deferred]] = deque()
        self._putting = None          # the scheduled or running batch of puts
        agent = Agent(reactor, contextFactory=policy, pool=self._pool) if policy else Agent(reactor, pool=self._pool)
        self._http = HTTPClient(agent)
        self._token: str | None = None
        self._token_waiters: list[defer.Deferred] = []
        self._watches: set[_EtcdWatch] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<EtcdStore {self.url}>"

    # -- HTTP plumbing ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the etcd store for {self.url} is closed")

    def _failure_to_error(self, f: Failure, path: str) -> Failure:
        """Turn transport failures into StoreUnavailable/StoreError naming the URL."""
        if f.check(StoreError, _AuthExpired):
            return f
        tls = _tls_failure(f)
        if tls is not None:
            return Failure(StoreError(f"TLS with etcd at {self.url} failed: {self._tls_hint(tls)}"))
        if f.check(defer.CancelledError):
            return f
        if f.check(*_UNREACHABLE):
            hint = ""
            # A TLS port closes a plain request's connection, cleanly or not (both are seen).
            closed = (ierror.ConnectionDone, ierror.ConnectionLost)
            if self.url.startswith("http:") and f.check(ResponseNeverReceived) and all(
                    isinstance(r, Failure) and r.check(*closed) for r in f.value.reasons):
                hint = " (if etcd serves TLS on this port, use an https:// URL)"
            return Failure(StoreUnavailable(f"etcd at {self.url} unreachable: {_reason(f)}{hint}"))
        return f

    def _tls_hint(self, tls: Failure) -> str:
        text = str(tls.value)
        if tls.check(VerificationError):
            return (f"the server's certificate does not name the host {urlsplit(self.url).hostname!r} "
                    f"({text})")
        if "certificate verify failed" in text:
            return (f"the server's certificate is not signed by a CA in ca_file {self._ca_file!r} ({text})"
                    if self._ca_file else f"the server's certificate is not trusted by this system ({text}); "
                                          "set ca_file to the CA that signed it")
        if "alert" in text and ("certificate" in text or "handshake" in text):
            mine = f"the client certificate {self._cert_file!r}" if self._cert_file else "no client certificate"
            return f"etcd refused the connection with {mine} ({text})"
        return f"{text}; check ca_file, the server's certificate and its host name"

    def _headers(self, token: str | None) -> dict:
        headers = {b"Content-Type": [b"application/json"]}
        if token:
            headers[b"Authorization"] = [token.encode("ascii")]
        return headers

    def _error_from_body(self, status: int, raw: bytes, path: str) -> Exception:
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or "message" not in obj and "error" not in obj:
            text = raw[:200].decode("utf-8", "replace").strip()
            hint = ""
            if status == 404:
                hint = (f"; is this etcd 3.4 or newer with its JSON gateway at {self._base}/ ?"
                        " (/v3alpha/ was removed in etcd 3.4)")
            return StoreError(f"etcd at {self.url} answered HTTP {status} to {path}: {text!r}{hint}")
        message = obj.get("message") or obj.get("error") or ""
        if isinstance(message, dict):  # streaming endpoints nest the error
            obj = message
            message = obj.get("message", "")
        code = obj.get("code", obj.get("grpc_code"))
        return self._grpc_error(code, message)

    def _grpc_error(self, code: int | None, message: str) -> Exception:
        if self._user is not None and (code == _GRPC_UNAUTHENTICATED or "auth token" in message
                                       or "revision of auth store is old" in message
                                       or "user name is empty" in message):  # auth enabled since we asked
            return _AuthExpired(message)
        if "user name is empty" in message and self._user is None:
            return EtcdError(f"etcd at {self.url} requires authentication ({message}); "
                             "configure a user and password", code, message)
        if code in (_GRPC_UNAVAILABLE, _GRPC_DEADLINE_EXCEEDED):
            return StoreUnavailable(f"etcd at {self.url} unavailable: {message}")
        return EtcdError(f"etcd at {self.url}: {message}", code, message)

    async def _post_once(self, path: str, body: dict, token: str | None) -> dict:
        await self._slots.acquire()
        try:
            resp = await self._http.post(self._base + path, data=json.dumps(body).encode(),
                                         headers=self._headers(token))
            raw = await treq.content(resp)
        finally:
            self._slots.release()
        if resp.code != 200:
            raise self._error_from_body(resp.code, raw, path)
        # Streaming endpoints (lease/keepalive) answer one JSON object per line, inside "result";
        # the others answer one object, on one line (base64 has no newlines).
        line = raw.strip().split(b"\n", 1)[0]
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise StoreError(f"etcd at {self.url} answered {path} with something that is not JSON: "
                             f"{raw[:200]!r}") from e
        if "error" in obj:
            raise self._error_from_body(resp.code, line, path)
        return obj.get("result", obj) if isinstance(obj.get("result"), dict) else obj

    def _with_deadline(self, coro, path: str) -> defer.Deferred:
        def timed_out(result, timeout):
            # Whatever the cancelled request failed with (often ResponseNeverReceived), say why it was cut.
            return Failure(StoreUnavailable(f"etcd at {self.url} did not answer {path} within {timeout} s"))
        d = defer.Deferred.fromCoroutine(coro)
        d.addTimeout(self._timeout_s, self._reactor, onTimeoutCancel=timed_out)
        d.addErrback(self._failure_to_error, path)
        return d

    def _authenticate(self) -> defer.Deferred:
        """Deferred[str]: a token; concurrent callers share one authenticate request."""
        if self._token is not None:
            return defer.succeed(self._token)
        waiter = defer.Deferred()
        self._token_waiters.append(waiter)
        if len(self._token_waiters) == 1:
            defer.Deferred.fromCoroutine(self._fetch_token()).addBoth(self._token_fetched)
        return waiter

    async def _fetch_token(self) -> str:
        body = {"name": self._user, "password": self._password}
        try:
            obj = await self._with_deadline(self._post_once("/auth/authenticate", body, None), "/auth/authenticate")
        except _AuthExpired as e:
            raise EtcdError(f"etcd at {self.url} refused user {self._user!r}: {e}", _GRPC_UNAUTHENTICATED,
                            str(e)) from None
        except EtcdError as e:
            if e.code == _GRPC_FAILED_PRECONDITION and "not enabled" in e.etcd_message:
                log.info("etcd at {url} has authentication disabled; sending no token", url=self.url)
                return ""
            raise EtcdError(f"etcd at {self.url} refused user {self._user!r}: {e.etcd_message}",
                            e.code, e.etcd_message) from None
        log.info("authenticated to etcd at {url} as {user}", url=self.url, user=self._user)
        return obj.get("token", "")

    def _token_fetched(self, result) -> None:
        waiters, self._token_waiters = self._token_waiters, []
        if not isinstance(result, Failure):
            self._token = result
        for w in waiters:
            # A waiter cancelled meanwhile (its request timed out or its watch stopped) ignores this.
            if isinstance(result, Failure):
                w.errback(result)
            else:
                w.callback(result)

    def _forget_token(self, token: str | None) -> None:
        # Only drop the token the failed request used: another request may already have a fresh one.
        if self._token == token:
            self._token = None

    async def _call(self, path: str, body: dict) -> dict:
        self._check_open()
        for attempt in (1, 2):
            token = await self._authenticate() if self._user is not None else None
            try:
                return await self._with_deadline(self._post_once(path, body, token), path)
            except _AuthExpired as e:
                self._forget_token(token)
                if attempt == 2:
                    raise EtcdError(f"etcd at {self.url} rejected a fresh token for user {self._user!r}: {e}",
                                    _GRPC_UNAUTHENTICATED, str(e)) from None
                log.info("etcd at {url} no longer accepts our token ({reason}); authenticating again",
                         url=self.url, reason=str(e))
        raise AssertionError("unreachable")

    def call(self, path: str, body: dict) -> defer.Deferred:
        """Deferred[dict]: POST `body` to the gateway at `path` (e.g. "/kv/range"); errors as in IStore."""
        return defer.Deferred.fromCoroutine(self._call(path, body))

    # -- IStore ----------------------------------------------------------------------------------

    def range(self, key: str, prefix: bool = False) -> defer.Deferred:
        k = _key_bytes(key)
        body = {"key": _b64(k)}
        if prefix:
            body["range_end"] = _b64(_range_end(k))

        def parse(obj: dict) -> RangeResult:
            return RangeResult(revision=_int(obj.get("header", {}), "revision"),
                               kvs=tuple(_kv(kv) for kv in obj.get("kvs", ())))
        return self.call("/kv/range", body).addCallback(parse)

    def put(self, key: str, value: bytes, lease: int = 0) -> defer.Deferred:
        if not isinstance(value, bytes):
            return defer.fail(TypeError(f"the value for {key!r} must be bytes, not {type(value).__name__}"))
        try:
            self._check_open()
        except StoreError as e:
            return defer.fail(e)
        # Puts are sent in batches, one batch (a txn) at a time, in the order they were made: a thousand chargers
        # saving their boot data at once cost a few requests, not a thousand.
        d = defer.Deferred()
        self._puts.append((Put(key, value, lease), d))
        if self._putting is None:
            self._putting = self._reactor.callLater(0, self._send_puts)
        return d

    def _send_puts(self) -> None:
        batch: list[tuple[Put, defer.Deferred]] = []
        keys: set[str] = set()
        size = 0
        while self._puts and len(batch) < PUT_BATCH_OPS:
            op, d = self._puts[0]
            if op.key in keys or (batch and size + len(op.value) > PUT_BATCH_BYTES):
                break                    # etcd refuses a txn that writes one key twice; keep big requests small
            self._puts.popleft()
            keys.add(op.key)
            size += len(op.value)
            batch.append((op, d))
        self._putting = defer.ensureDeferred(self._send_batch(batch))
        self._putting.addBoth(self._batch_sent)

    def _batch_sent(self, _) -> None:
        self._putting = None
        if self._puts:
            self._putting = self._reactor.callLater(0, self._send_puts)

    async def _send_batch(self, batch: list[tuple[Put, defer.Deferred]]) -> None:
        if len(batch) == 1:
            results = [await self._put_one(batch[0][0])]
        else:
            try:
                obj = await self.call("/kv/txn", {"success": [_request_op(op) for op, _ in batch]})
                results = [_int(obj.get("header", {}), "revision")] * len(batch)
            except EtcdError:
                # One put etcd refuses (its lease expired) must not fail the others: each on its own, for its error.
                results = [await self._put_one(op) for op, _ in batch]
            except Exception:
                results = [Failure()] * len(batch)
        for (_, d), result in zip(batch, results):
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    async def _put_one(self, op: Put):
        body = {"key": _b64(_key_bytes(op.key)), "value": _b64(op.value)}
        if op.lease:
            body["lease"] = str(op.lease)
        try:
            obj = await self.call("/kv/put", body)
        except Exception:
            return Failure()
        return _int(obj.get("header", {}), "revision")

    def delete(self, key: str, prefix: bool = False) -> defer.Deferred:
        k = _key_bytes(key)
        body = {"key": _b64(k)}
        if prefix:
            body["range_end"] = _b64(_range_end(k))
        return self.call("/kv/deleterange", body).addCallback(lambda obj: _int(obj, "deleted"))

    def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> defer.Deferred:
        try:
            body = {"compare": [_compare(c) for c in compare],
                    "success": [_request_op(op) for op in success],
                    "failure": [_request_op(op) for op in failure]}
        except (TypeError, ValueError) as e:
            return defer.fail(e)

        def parse(obj: dict) -> TxnResult:
            return TxnResult(succeeded=bool(obj.get("succeeded", False)),
                             revision=_int(obj.get("header", {}), "revision"))
        return self.call("/kv/txn", body).addCallback(parse)

    def grant(self, ttl: int) -> defer.Deferred:
        return self.call("/lease/grant", {"TTL": str(int(ttl))}).addCallback(lambda obj: _int(obj, "ID"))

    def keepalive(self, lease: int) -> defer.Deferred:
        return self.call("/lease/keepalive", {"ID": str(lease)}).addCallback(lambda obj: _int(obj, "TTL"))

    def revoke(self, lease: int) -> defer.Deferred:
        def gone(f: Failure):
            # A lease that no longer exists (expired, or revoked before) has no keys left: the goal holds.
            f.trap(EtcdError)
            if f.value.code == _GRPC_NOT_FOUND:
                return None
            return f
        return self.call("/lease/revoke", {"ID": str(lease)}).addCallbacks(lambda _: None, gone)

    def watch_prefix(self, prefix: str, callback: Callable[[list[Event]], None]) -> defer.Deferred:
        if self._closed:
            return defer.fail(StoreError(f"the etcd store for {self.url} is closed"))
        w = _EtcdWatch(self, prefix, callback)
        self._watches.add(w)
        return w.start()

    def close(self) -> defer.Deferred:
        self._closed = True
        for w in list(self._watches):
            w.stop()
        return self._pool.closeCachedConnections()

    # -- used by _EtcdWatch ----------------------------------------------------------------------

    def _open_watch(self, body: dict, token: str | None, on_message, on_end) -> defer.Deferred:
        """Deferred[_LineProtocol]: the watch stream, once etcd answered with 200 and headers."""
        path = "/watch"

        async def go():
            resp = await self._http.post(self._base + path, data=json.dumps(body).encode(),
                                         headers=self._headers(token), unbuffered=True)
            if resp.code != 200:
                raw = await treq.content(resp)
                raise self._error_from_body(resp.code, raw, path)
            return resp
        d = self._with_deadline(go(), path)

        def attach(resp):
            proto = _LineProtocol(on_message, on_end)
            resp.deliverBody(proto)
            return proto
        return d.addCallback(attach)


def _reason(f: Failure) -> str:
    reasons = getattr(f.value, "reasons", None)
    if reasons:
        return "; ".join(_reason(r) if isinstance(r, Failure) else str(r) for r in reasons)
    text = f.getErrorMessage()
    return text if text and text != str(type(f.value)) else type(f.value).__name__


@implementer(IWatch)
class _EtcdWatch:
    """One mirrored prefix: range, then a streaming watch that resumes, re-reads and diffs as needed."""

    def __init__(self, store: EtcdStore, prefix: str, callback: Callable[[list[Event]], None]):
        self._store = store
        self._prefix = prefix
        self._key = _key_bytes(prefix)
        self._callback = callback
        self.revision = 0
        self._mirror: dict[str, int] = {}  # key -> mod_revision of what the callback has seen
        self._stopped = False
        self._started = False
        self._ready = defer.Deferred(canceller=lambda d: self.stop(cancelled=True))
        self._backoff = _Backoff(store._reactor, store.retry_initial_s, store.retry_max_s, store.log_interval_s)
        self._pending: defer.Deferred | None = None  # request in flight
        self._timer = None  # scheduled retry
        self._stream: _LineProtocol | None = None
        self._generation = 0  # bumped whenever a stream is replaced, so stale streams are ignored
        self.retries = 0  # how many times a read or a stream was retried (for monitoring and tests)

    def __repr__(self) -> str:
        return f"<watch {self._prefix!r} on {self._store.url} at revision {self.revision}>"

    def start(self) -> defer.Deferred:
        self._read()
        return self._ready

    def stop(self, cancelled: bool = False) -> None:
        if self._stopped:
            return
        self._stopped = True
        if not self._ready.called and not cancelled and not self._started:
            self._ready.errback(StoreError(f"the watch on {self._prefix!r} was stopped before its first read"))
        self._generation += 1
        self._store._watches.discard(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.abort()

    # -- scheduling ------------------------------------------------------------------------------

    def _retry(self, what: Callable[[], None], reason: Exception | Failure | str) -> None:
        if self._stopped:
            return
        delay = self._backoff.next_delay()
        self.retries += 1
        if isinstance(reason, Failure):
            reason = reason.value
        if self._backoff.should_log():
            if isinstance(reason, StoreUnavailable):
                log.warn("etcd at {url} unreachable, retrying ({error})", url=self._store.url, error=str(reason),
                         prefix=self._prefix)
            else:
                log.warn("watch on {prefix} at etcd {url} failed, retrying ({error})", url=self._store.url,
                         error=str(reason), prefix=self._prefix)
        self._timer = self._store._reactor.callLater(delay, what)

    def _recovered(self) -> None:
        if self._backoff.reset():
            log.info("etcd at {url} reachable again; watching {prefix} from revision {revision}",
                     url=self._store.url, prefix=self._prefix, revision=self.revision + 1)

    def _deliver(self, events: list[Event]) -> None:
        try:
            self._callback(events)
        except Exception:
            # A bug in one consumer must not end the mirror for good.
            log.failure("watch callback for {prefix} failed", prefix=self._prefix)

    def _replace_stream(self) -> None:
        self._generation += 1
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.abort()

    # -- read (initial, and after a compaction) ---------------------------------------------------

    def _read(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self._replace_stream()
        d = self._pending = self._store.range(self._prefix, prefix=True)
        d.addCallbacks(self._got_read, self._read_failed)
        d.addErrback(lambda f: log.failure("watch {prefix} failed to apply a read", f, prefix=self._prefix))

    def _read_failed(self, f: Failure) -> None:
        self._pending = None
        if self._stopped or f.check(defer.CancelledError):
            return
        if not self._started and not f.check(StoreUnavailable):
            # A wrong password or a refused certificate will not heal by itself: say so now.
            self._stopped = True
            self._store._watches.discard(self)
            self._ready.errback(f)
            return
        self._retry(self._read, f)

    def _got_read(self, result: RangeResult) -> None:
        self._pending = None
        if self._stopped:
            return
        self._recovered()
        current = {kv.key: kv for kv in result.kvs}
        if not self._started:
            events = [Event("put", kv.key, kv.value, kv.mod_revision) for kv in result.kvs]
        else:
            changed = sorted((kv for k, kv in current.items() if self._mirror.get(k) != kv.mod_revision),
                             key=lambda kv: (kv.mod_revision, kv.key))
            events = [Event("put", kv.key, kv.value, kv.mod_revision) for kv in changed]
            events += [Event("delete", k, None, result.revision) for k in sorted(self._mirror) if k not in current]
        self._mirror = {k: kv.mod_revision for k, kv in current.items()}
        self.revision = max(self.revision, result.revision)
        first = not self._started
        self._started = True
        if first or events:
            self._deliver(events)
        if first and not self._ready.called:
            self._ready.callback(self)
        self._watch()

    # -- streaming watch -------------------------------------------------------------------------

    def _watch(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self._replace_stream()
        gen = self._generation
        body = {"create_request": {"key": _b64(self._key), "range_end": _b64(_range_end(self._key)),
                                   "start_revision": str(self.revision + 1)}}
        store = self._store

        async def open_stream():
            token = await store._authenticate() if store._user is not None else None
            return await store._open_watch(body, token, lambda m: self._on_message(gen, token, m),
                                           lambda r: self._on_end(gen, r))
        d = self._pending = defer.Deferred.fromCoroutine(open_stream())
        d.addCallbacks(lambda proto: self._opened(gen, proto), lambda f: self._open_failed(gen, f))

    def _opened(self, gen: int, proto: _LineProtocol) -> None:
        self._pending = None
        if self._stopped or gen != self._generation:
            proto.abort()
            return
        self._stream = proto

    def _open_failed(self, gen: int, f: Failure) -> None:
        self._pending = None
        if self._stopped or gen != self._generation or f.check(defer.CancelledError):
            return
        if f.check(_AuthExpired):
            self._store._token = None
        self._retry(self._watch, f)

    def _on_end(self, gen: int, reason: Failure) -> None:
        if self._stopped or gen != self._generation:
            return
        self._stream = None
        self._generation += 1
        why = "stream ended" if reason is None or reason.check(ResponseDone) else _reason(reason)
        log.debug("watch {prefix} lost its stream ({why})", prefix=self._prefix, why=why)
        self._retry(self._watch, StoreUnavailable(f"etcd at {self._store.url} ended the watch stream: {why}"))

    def _on_message(self, gen: int, token: str | None, msg: dict) -> bool:
        """Handle one watch response; False once this stream is no longer wanted."""
        if self._stopped or gen != self._generation:
            return False
        if "error" in msg:
            err = msg["error"]
            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            code = err.get("grpc_code", err.get("code")) if isinstance(err, dict) else None
            return self._restart(self._store._grpc_error(code, message), token, reread=False)
        result = msg.get("result", msg)
        compact = _int(result, "compact_revision")
        if compact:
            log.info("watch {prefix} from revision {revision} hit compaction at {compact}; re-reading",
                     prefix=self._prefix, revision=self.revision + 1, compact=compact)
            self._replace_stream()
            self._read()
            return False
        if result.get("canceled"):
            reason = result.get("cancel_reason", "canceled by etcd")
            return self._restart(self._store._grpc_error(None, reason), token, reread=True)
        if result.get("created"):
            self._recovered()
        events = []
        for ev in result.get("events", ()):
            kv = ev["kv"]
            rev = _int(kv, "mod_revision")
            if rev <= self.revision:
                continue  # already delivered before the stream was resumed
            key = _key_str(kv["key"])
            if ev.get("type") == "DELETE":
                self._mirror.pop(key, None)
                events.append(Event("delete", key, None, rev))
            else:
                self._mirror[key] = rev
                events.append(Event("put", key, base64.b64decode(kv.get("value", "")), rev))
        if events:
            self.revision = max(e.revision for e in events)
            self._deliver(events)
        return not self._stopped and gen == self._generation

    def _restart(self, err: Exception, token: str | None, reread: bool) -> bool:
        if isinstance(err, _AuthExpired):
            self._store._forget_token(token)
        self._replace_stream()
        self._retry(self._read if reread else self._watch, err)
        return False
