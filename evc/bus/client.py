"""The Modbus client side: the IModbusBus interface and the transaction scheduler behind it, for any framing.

`ModbusBus` owns a bus: exactly one transaction in flight, a FIFO (writes ahead of reads), a per-request
timeout with one retry, an optional pause between transactions (`gap_s`, for RS485), per-unit error counters
and per-unit exponential backoff so one dead device cannot starve the others (a gateway's exception 0A/0B, "the
unit behind me did not answer", counts as such a failure too). It knows nothing about
sockets or serial ports: a link (`ModbusClientProtocol` on any Twisted transport) feeds it decoded frames
and sends what it asks. Framing is pluggable (`evc.bus.codec.TcpFraming` or `RtuFraming`):

    bus = ModbusBus(clock, RtuFraming(), timeout_s=0.5, gap_s=0.1)     # an RS485 line
    SerialPort(ModbusClientProtocol(bus, RtuFraming(), name="/dev/rs485-1"), "/dev/rs485-1", reactor)
    # or, for a ser2net tunnel: ModbusTcpClient(reactor, clock, host, port, framing=RtuFraming(), gap_s=0.1)

The protocol calls `bus.link_up(self)` when its transport connects and `bus.link_down(...)` when it is lost.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from evc.bus import codec
from evc.bus.errors import (BusClosed, BusDisconnected, ModbusError, ModbusException, ModbusTimeout,
                            UnitBackoff)

log = Logger(namespace="evc.bus")

# Exception codes a gateway answers on behalf of a unit behind it: 0A path unavailable, 0B target failed to
# respond (Modbus application protocol spec, 7).
GATEWAY_EXCEPTIONS = (0x0A, 0x0B)


class IModbusBus(Interface):
    """A Modbus master on one bus (a TCP gateway, an RS485 line). Every request returns a Deferred.

    Failures: `ModbusException` (the device answered an exception; not retried), `ModbusTimeout` (no valid
    reply after the retry), `UnitBackoff` (the unit failed repeatedly; fails fast until its backoff ends),
    `BusDisconnected` (the link is down). All are `evc.bus.errors.ModbusError`.
    `timeout_s` overrides the bus's default per-request timeout for this request.
    """

    def read_input_registers(unit: int, address: int, count: int, timeout_s: float | None = None,
                             priority: bool = False):
        """Deferred[list[int]]: FC04."""

    def read_holding_registers(unit: int, address: int, count: int, timeout_s: float | None = None,
                               priority: bool = False):
        """Deferred[list[int]]: FC03."""

    def write_registers(unit: int, address: int, values: Sequence[int], priority: bool = True,
                        timeout_s: float | None = None):
        """Deferred[None]: FC16 (write multiple). Writes go ahead of queued reads unless priority=False."""

    def write_register(unit: int, address: int, value: int, priority: bool = True,
                       timeout_s: float | None = None):
        """Deferred[None]: FC06 (write single)."""

    def counters(unit: int | None = None) -> dict:
        """Counters of one unit (ok, timeouts, exceptions, bad_frames, failed_fast, backoff_s), or of the
        whole bus when unit is None (bad frames that no request was waiting for count there too)."""


class IModbusLink(Interface):
    """What the bus needs from the transport side (implemented by ModbusClientProtocol)."""

    def send(data: bytes) -> None:
        """Write one frame."""

    def discard_input() -> int:
        """Drop buffered, undecoded input; return how many bytes were dropped."""


@dataclasses.dataclass
class _UnitStats:
    ok: int = 0
    timeouts: int = 0
    exceptions: int = 0
    bad_frames: int = 0
    failed_fast: int = 0
    failures: int = 0              # consecutive failed transactions (timeouts after the retry)
    backoff_s: float = 0.0
    backoff_until: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "timeouts": self.timeouts, "exceptions": self.exceptions,
                "bad_frames": self.bad_frames, "failed_fast": self.failed_fast, "backoff_s": self.backoff_s}


@dataclasses.dataclass(eq=False)
class _Request:
    pdu: codec.ModbusPDU
    timeout_s: float
    d: defer.Deferred = dataclasses.field(init=False)
    attempts: int = 0
    tids: set[int] = dataclasses.field(default_factory=set)
    cancelled: bool = False

    @property
    def unit(self) -> int:
        return self.pdu.dev_id

    def describe(self) -> str:
        return f"function {self.pdu.function_code:02d} at 0x{self.pdu.address:04X} on unit {self.unit}"


@implementer(IModbusBus)
class ModbusBus:
    """The transaction scheduler. See the module docstring."""

    def __init__(self, clock: IReactorTime, framing: codec.Framing, *, timeout_s: float = 1.0,
                 retries: int = 1, gap_s: float = 0.0, backoff_min_s: float = 1.0, backoff_max_s: float = 30.0,
                 name: str = "modbus"):
        self._clock = clock
        self.framing = framing
        self.timeout_s = timeout_s
        self.retries = retries
        self.gap_s = gap_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.name = name
        self._writes: collections.deque[_Request] = collections.deque()
        self._reads: collections.deque[_Request] = collections.deque()
        self._current: _Request | None = None
        self._retry: _Request | None = None
        self._timer: IDelayedCall | None = None
        self._wake: IDelayedCall | None = None
        self._next_send_at = 0.0
        self._tid = 0
        self._units: dict[int, _UnitStats] = collections.defaultdict(_UnitStats)
        self._unattributed_bad_frames = 0
        self._link: Any = None
        self._connecting = False
        self._pumping = False
        self._down_reason: BusDisconnected = BusDisconnected(f"{name}: not connected yet")

    # --- IModbusBus ---

    def read_input_registers(self, unit, address, count, timeout_s=None, priority=False):
        return self._submit(codec.read_input(unit, address, count), timeout_s, priority)

    def read_holding_registers(self, unit, address, count, timeout_s=None, priority=False):
        return self._submit(codec.read_holding(unit, address, count), timeout_s, priority)

    def write_registers(self, unit, address, values, priority=True, timeout_s=None):
        return self._submit(codec.write_multiple(unit, address, values), timeout_s, priority)

    def write_register(self, unit, address, value, priority=True, timeout_s=None):
        return self._submit(codec.write_single(unit, address, value), timeout_s, priority)

    def counters(self, unit=None):
        if unit is not None:
            return self._units[unit].as_dict() if unit in self._units else _UnitStats().as_dict()
        total = _UnitStats(bad_frames=self._unattributed_bad_frames)
        for s in self._units.values():
            total.ok += s.ok
            total.timeouts += s.timeouts
            total.exceptions += s.exceptions
            total.bad_frames += s.bad_frames
            total.failed_fast += s.failed_fast
            total.backoff_s = max(total.backoff_s, s.backoff_s)
        return total.as_dict()

    @property
    def link_state(self) -> str:
        """"up", "connecting" or "down" (then `down_reason` says why)."""
        return "up" if self._link is not None else "connecting" if self._connecting else "down"

    @property
    def down_reason(self) -> str:
        return str(self._down_reason)

    # --- the link side ---

    def link_connecting(self) -> None:
        """A connection attempt is under way: queue requests instead of failing them fast."""
        self._connecting = True

    def link_up(self, link: Any) -> None:
        self._link = link
        self._connecting = False
        log.info("{bus} connected", bus=self.name)
        self._pump()

    def link_down(self, reason: BusDisconnected, link: Any = None) -> None:
        """The link is gone (or the connection attempt failed): fail everything pending with `reason`."""
        if link is not None and link is not self._link:
            return
        was_up = self._link is not None
        self._link = None
        self._connecting = False
        self._down_reason = reason
        if was_up:
            log.warn("{bus} link down: {reason}", bus=self.name, reason=str(reason))
        self._fail_all(reason)

    def close(self) -> None:
        """Stop for good: fail everything pending and refuse new requests."""
        self._link = None
        self._connecting = False
        self._down_reason = BusClosed(f"{self.name} is stopped")
        self._fail_all(self._down_reason)

    def frame_received(self, pdu: codec.ModbusPDU) -> None:
        req = self._current
        if req is None or (self.framing.has_tid and pdu.transaction_id not in req.tids) \
                or pdu.dev_id != req.unit:
            # a late reply to a request that already timed out, or another device's: not garbage
            log.debug("{bus} ignored an unexpected reply from unit {unit}", bus=self.name, unit=pdu.dev_id)
            return
        stats = self._units[req.unit]
        fc = req.pdu.function_code
        if pdu.function_code == fc | 0x80:
            stats.exceptions += 1
            if pdu.exception_code in GATEWAY_EXCEPTIONS:
                # The gateway answers for a unit that did not answer it: as good as a timeout for this unit,
                # which must back off like a silent one on a bus of its own.
                self._cancel_timer()
                self._attempt_failed(req, Failure(ModbusException(req.unit, fc, pdu.exception_code,
                                                                  req.pdu.address)))
                return
            self._healthy(req.unit)
            self._finish(req, Failure(ModbusException(req.unit, fc, pdu.exception_code, req.pdu.address,
                                                      req.pdu.count if fc in (3, 4, 16) else None)))
            return
        if pdu.function_code != fc or not self._plausible(req.pdu, pdu):
            stats.bad_frames += 1
            log.debug("{bus} reply from unit {unit} does not match {request}", bus=self.name, unit=req.unit,
                      request=req.describe())
            return
        stats.ok += 1
        self._healthy(req.unit)
        self._finish(req, list(pdu.registers) if fc in (codec.FC_READ_HOLDING, codec.FC_READ_INPUT) else None)

    def garbage_received(self, nbytes: int) -> None:
        if self._current is not None:
            self._units[self._current.unit].bad_frames += 1
        else:
            self._unattributed_bad_frames += 1
        log.debug("{bus} dropped {nbytes} bytes of garbage", bus=self.name, nbytes=nbytes)

    # --- scheduling ---

    def _submit(self, pdu: codec.ModbusPDU, timeout_s: float | None, priority: bool) -> defer.Deferred:
        stats = self._units[pdu.dev_id]
        if stats.backoff_until > self._clock.seconds():
            stats.failed_fast += 1
            return defer.fail(self._backoff_error(pdu.dev_id))
        if self._link is None and not self._connecting:
            return defer.fail(self._down_reason)
        req = _Request(pdu, self.timeout_s if timeout_s is None else timeout_s)
        req.d = defer.Deferred(lambda d: self._cancel(req))
        (self._writes if priority else self._reads).append(req)
        self._pump()
        return req.d

    def _backoff_error(self, unit: int) -> UnitBackoff:
        s = self._units[unit]
        left_s = max(0.0, s.backoff_until - self._clock.seconds())
        return UnitBackoff(f"unit {unit} on {self.name} did not answer {s.failures} time(s) in a row; "
                           f"not asked again for {left_s:.1f} s", unit)

    def _cancel(self, req: _Request) -> None:
        req.cancelled = True
        for q in (self._writes, self._reads):
            if req in q:
                q.remove(req)
        # an in-flight request runs to its end so that its reply cannot be taken for the next one's

    def _next_request(self) -> _Request | None:
        if self._retry is not None:
            req, self._retry = self._retry, None
            return req
        now = self._clock.seconds()
        for q in (self._writes, self._reads):
            while q:
                req = q.popleft()
                stats = self._units[req.unit]
                if stats.backoff_until > now:
                    stats.failed_fast += 1
                    req.d.errback(self._backoff_error(req.unit))
                    continue
                return req
        return None

    def _pump(self) -> None:
        # Deferred callbacks run inside this loop can submit requests (re-entering here): the flag keeps
        # exactly one loop choosing what goes on the wire.
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._current is None and self._link is not None:
                wait_s = self._next_send_at - self._clock.seconds()
                if wait_s > 0:
                    if self._wake is None or not self._wake.active():
                        self._wake = self._clock.callLater(wait_s, self._pump)
                    return
                req = self._next_request()
                if req is None:
                    return
                self._send(req)
        finally:
            self._pumping = False

    def _send(self, req: _Request) -> None:
        self._current = req
        req.attempts += 1
        self._tid = self._tid % 0xFFFF + 1
        req.pdu.transaction_id = self._tid
        req.tids.add(self._tid)
        if self.framing.flush_between:
            self._link.discard_input()
        self._timer = self._clock.callLater(req.timeout_s, self._timed_out, req)
        self._link.send(self.framing.encode(req.pdu))

    def _timed_out(self, req: _Request) -> None:
        self._timer = None
        stats = self._units[req.unit]
        stats.timeouts += 1
        if self._link is not None and self._link.discard_input():
            stats.bad_frames += 1
        self._attempt_failed(req, None)

    def _attempt_failed(self, req: _Request, failure: Failure | None) -> None:
        """No usable answer to this attempt (a timeout, or `failure` from a gateway): retry, then back off."""
        stats = self._units[req.unit]
        if req.attempts <= self.retries and not req.cancelled:
            log.debug("{bus} no reply to {request}, retrying", bus=self.name, request=req.describe())
            self._current = None
            self._retry = req
            self._next_send_at = self._clock.seconds() + self.gap_s
            self._pump()
            return
        stats.failures += 1
        stats.backoff_s = min(self.backoff_min_s * 2 ** (stats.failures - 1), self.backoff_max_s)
        stats.backoff_until = self._clock.seconds() + stats.backoff_s
        log.warn("{bus} unit {unit} did not answer {request} ({attempts} attempts); backing off {backoff_s} s",
                 bus=self.name, unit=req.unit, request=req.describe(), attempts=req.attempts,
                 backoff_s=stats.backoff_s)
        self._finish(req, failure or Failure(ModbusTimeout(
            f"no reply from unit {req.unit} on {self.name} to {req.describe()} after {req.attempts} attempts "
            f"of {req.timeout_s} s", req.unit)))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _healthy(self, unit: int) -> None:
        stats = self._units[unit]
        if stats.failures:
            log.info("{bus} unit {unit} answers again", bus=self.name, unit=unit)
        stats.failures = 0
        stats.backoff_s = 0.0
        stats.backoff_until = 0.0

    @staticmethod
    def _plausible(request: codec.ModbusPDU, reply: codec.ModbusPDU) -> bool:
        if request.function_code in (codec.FC_READ_HOLDING, codec.FC_READ_INPUT):
            return len(reply.registers) == request.count
        return reply.address == request.address

    def _finish(self, req: _Request, result: Any) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._current = None
        self._next_send_at = self._clock.seconds() + self.gap_s
        if not req.cancelled:
            if isinstance(result, Failure):
                req.d.errback(result)
            else:
                req.d.callback(result)
        self._pump()

    def _fail_all(self, reason: ModbusError) -> None:
        pending = []
        if self._current is not None:
            pending.append(self._current)
        if self._retry is not None:
            pending.append(self._retry)
        pending.extend(self._writes)
        pending.extend(self._reads)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._timer = self._wake = None
        self._current = self._retry = None
        self._writes.clear()
        self._reads.clear()
        for req in pending:
            if not req.cancelled:
                req.d.errback(Failure(reason))


@implementer(IModbusLink)
class ModbusClientProtocol(Protocol):
    """Buffers bytes from any transport (TCP, serial port), decodes frames and hands them to a ModbusBus."""

    def __init__(self, bus: ModbusBus, framing: codec.Framing | None = None, name: str = ""):
        self.bus = bus
        self.framing = framing or bus.framing
        self.name = name or bus.name
        self._buf = bytearray()

    def connectionMade(self) -> None:
        self.bus.link_up(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        why = reason.getErrorMessage() if reason is not None else "closed"
        self.bus.link_down(BusDisconnected(f"connection to {self.name} lost: {why}"), link=self)

    def dataReceived(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while buf:
            used, pdu = self.framing.decode(buf)
            if not used:
                return
            del buf[:used]
            if pdu is None:
                self.bus.garbage_received(used)
            else:
                self.bus.frame_received(pdu)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def discard_input(self) -> int:
        n = len(self._buf)
        self._buf.clear()
        return n
