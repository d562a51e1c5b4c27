"""conn/rs485: one RS485 bus (Modbus RTU) on a local USB adapter or a ser2net tunnel, shared by its devices.

The conn owns the bus. Every device on it (chargers, meters) sends its requests through the conn, which is an
`IModbusBus`: one `evc.bus.client.ModbusBus` with RTU framing keeps exactly one transaction on the wire, writes
ahead of polls, a pause of `gap_ms` (never less than t3.5) between transactions, per-address counters and
per-address backoff, so a dead device costs the others one timeout now and then and never starves them.

The link under that scheduler is chosen at every (re)open: `local` (a tty, opened with pyserial through
Twisted's SerialPort) when that path exists on this host, else `remote` (host:port, raw serial bytes over TCP as
ser2net serves them). A tty that vanishes (USB adapter unplugged) or a tunnel that drops takes the link down:
pending requests fail with BusDisconnected, new ones fail fast, and the conn reopens with growing delays until the
link is back. One scheduler serves both paths, so the queue, the counters and the address claims survive a
change of path.

Users claim their address at start (`IBusAddresses.claim`): two devices configured at one address on one bus
are refused with a ConfigError naming the leaf.

State (`conn/<name>/state/...`): `link` (up, connecting, down), `via` ("local /dev/..." or "remote host:port"),
`link_error` while down, `bad_frames` (the whole bus), and per address `units/<addr>/{user,ok,timeouts,
exceptions,bad_frames,failed_fast,backoff_s}`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import serial
from twisted.internet import defer, error, task
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from evc.bus.client import IModbusBus, ModbusBus, ModbusClientProtocol
from evc.bus.codec import RtuFraming
from evc.bus.errors import BusDisconnected
from evc.bus.tcp import parse_host_port
from evc.conn import IBusAddresses
from evc.errors import ConfigError
from evc.instance import Instance
from evc.registry import CONNS

log = Logger(namespace="evc.conn.rs485")

PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
STOPBITS = {1: serial.STOPBITS_ONE, 2: serial.STOPBITS_TWO}

# The Modbus serial-line spec fixes t3.5 at 1.75 ms above 19200 baud (reference modbus-meters.md §5).
_FIXED_T35_ABOVE_BAUD = 19200
_FIXED_T35_S = 0.00175

# RTU frame sizes (address + PDU + CRC) for the wire-time part of each request's timeout.
_READ_REQUEST_BYTES = 8
_WRITE_SINGLE_BYTES = 8
_WRITE_MULTIPLE_REPLY_BYTES = 8


def line_timing(baud: int, parity: str = "N", stopbits: int = 1) -> tuple[float, float]:
    """(character time, t3.5) in seconds for 8 data bits with `parity` and `stopbits`."""
    bits = 1 + 8 + (0 if parity == "N" else 1) + stopbits
    char_s = bits / baud
    t35_s = _FIXED_T35_S if baud > _FIXED_T35_ABOVE_BAUD else 3.5 * char_s
    return char_s, t35_s


@dataclasses.dataclass(frozen=True)
class Rs485Config:
    """schema/conn/rs485.json describes every field."""
    local: str | None = None
    remote: str | None = None
    baud: int = 9600
    parity: str = "N"
    stopbits: int = 1
    gap_ms: int = 100
    timeout_ms: int = 300
    type: str | None = None      # the seed's config/type form; the type itself is chosen by the supervisor

    def __post_init__(self):
        if not self.local and not self.remote:
            raise ConfigError("config/local: give local (a tty path), remote (host:port of a ser2net tunnel) "
                              "or both")
        if self.remote:
            try:
                parse_host_port(self.remote)
            except ValueError as e:
                raise ConfigError(f"config/remote: {e}") from None
        if self.parity not in PARITIES:
            raise ConfigError(f"config/parity: {self.parity!r} is not one of N, E, O")
        if self.stopbits not in STOPBITS:
            raise ConfigError(f"config/stopbits: {self.stopbits} is not 1 or 2")
        if self.baud <= 0:
            raise ConfigError(f"config/baud: {self.baud} is not a baud rate")
        if self.gap_ms < 0 or self.timeout_ms <= 0:
            raise ConfigError("config/timeout_ms: must be more than 0 (and gap_ms at least 0)")


class _LinkProtocol(ModbusClientProtocol):
    """The RTU byte stream of one link (serial port or tunnel connection); tells the conn when it comes and goes."""

    def __init__(self, conn: "Rs485Conn", via: str):
        super().__init__(conn.bus, RtuFraming(), name=via)
        self.conn = conn
        self.via = via

    # The conn hears of it first: failing the pending requests runs their callbacks, which must already see
    # the link's new state.

    def connectionMade(self) -> None:
        self.conn._link_made(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self.conn._link_lost(self, reason)
        super().connectionLost(reason)


class _TunnelFactory(ClientFactory):
    noisy = False

    def __init__(self, conn: "Rs485Conn", via: str):
        self.conn = conn
        self.via = via

    def buildProtocol(self, addr):
        return _LinkProtocol(self.conn, self.via)

    def clientConnectionFailed(self, connector, reason):
        self.conn._connect_failed(self.via, reason)


@CONNS.register("rs485")
@implementer(IModbusBus, IBusAddresses)
class Rs485Conn(Instance):
    """One RS485 bus. See the module docstring; `bus` is the scheduler, `link_state`/`via` say how it is reached."""

    Config = Rs485Config

    # Reopen delays after the link went down: short first (a replugged adapter is back within a second), capped
    # so that a long outage is still noticed within seconds of its end.
    reopen_min_s = 0.5
    reopen_max_s = 5.0
    connect_timeout_s = 5.0
    state_interval_s = 1.0
    # `ok` changes on every poll; writing it each second would cost an etcd write per device per second for a
    # number nobody watches closely. The error counters change rarely and go out within state_interval_s.
    ok_every_s = 10.0

    def __init__(self, ctx, config: Rs485Config):
        super().__init__(ctx, config)
        self.char_s, self.t35_s = line_timing(config.baud, config.parity, config.stopbits)
        # An RTU master must leave t3.5 of silence after a reply before it sends again, whatever gap_ms says.
        self.gap_s = max(config.gap_ms / 1000.0, self.t35_s)
        self.timeout_s = config.timeout_ms / 1000.0
        self.bus = ModbusBus(ctx.clock, RtuFraming(), timeout_s=self.timeout_s, gap_s=self.gap_s,
                             name=f"conn/{ctx.name}")
        self._claims: dict[int, str] = {}
        self._units_seen: set[int] = set()
        self._link: _LinkProtocol | None = None
        self._serial: Any = None            # the SerialPort while the link is local
        self._connector: Any = None         # the TCP connector while a tunnel is connecting or up
        self._via: str | None = None
        self._reopen: IDelayedCall | None = None
        self._delay_s = self.reopen_min_s
        self._state_loop: task.LoopingCall | None = None
        self._last_ok_write = -float("inf")
        self._down_logged: str | None = None
        self._closing: defer.Deferred | None = None

    # --- IModbusBus ---

    def read_input_registers(self, unit, address, count, timeout_s=None, priority=False):
        self._units_seen.add(unit)
        return self.bus.read_input_registers(unit, address, count, self._timeout(timeout_s, 5 + 2 * count),
                                             priority)

    def read_holding_registers(self, unit, address, count, timeout_s=None, priority=False):
        self._units_seen.add(unit)
        return self.bus.read_holding_registers(unit, address, count, self._timeout(timeout_s, 5 + 2 * count),
                                               priority)

    def write_registers(self, unit, address, values: Sequence[int], priority=True, timeout_s=None):
        self._units_seen.add(unit)
        timeout_s = self._timeout(timeout_s, _WRITE_MULTIPLE_REPLY_BYTES, 9 + 2 * len(values))
        return self.bus.write_registers(unit, address, values, priority, timeout_s)

    def write_register(self, unit, address, value, priority=True, timeout_s=None):
        self._units_seen.add(unit)
        return self.bus.write_register(unit, address, value, priority,
                                       self._timeout(timeout_s, _WRITE_SINGLE_BYTES, _WRITE_SINGLE_BYTES))

    def counters(self, unit=None):
        return self.bus.counters(unit)

    def _timeout(self, timeout_s: float | None, reply_bytes: int, request_bytes: int = _READ_REQUEST_BYTES) -> float:
        # timeout_ms is the device's allowance to answer; the frames' own wire time comes on top, so that one
        # setting fits a one-register read at 38400 baud and an 80-register read at 2400 baud alike.
        base_s = self.timeout_s if timeout_s is None else timeout_s
        return base_s + (request_bytes + reply_bytes) * self.char_s + self.t35_s

    # --- IBusAddresses ---

    def claim(self, unit: int, user_key: str, leaf: str = "config/conn_port") -> Callable[[], None]:
        if not 1 <= unit <= 247:
            raise ConfigError(f"{leaf}: address {unit} is outside 1..247")
        holder = self._claims.get(unit)
        if holder is not None and holder != user_key:
            raise ConfigError(f"{leaf}: address {unit} on conn {self.ctx.name} is already used by {holder}")
        self._claims[unit] = user_key
        self.ctx.state.set(f"units/{unit}/user", user_key)
        return lambda: self.release(unit, user_key)

    def release(self, unit: int, user_key: str) -> None:
        if self._claims.get(unit) == user_key:
            del self._claims[unit]
            self.ctx.state.delete(f"units/{unit}/user")

    @property
    def claims(self) -> dict[int, str]:
        """Address -> the instance key that uses it."""
        return dict(self._claims)

    # --- service ---

    def startService(self) -> None:
        if self.ctx.reactor is None:
            raise ConfigError("conn/rs485 needs a reactor to open its tty or tunnel")
        super().startService()
        self._open()
        self._state_loop = task.LoopingCall(self._write_state)
        self._state_loop.clock = self.ctx.clock
        self._state_loop.start(self.state_interval_s, now=False)

    def stopService(self):
        super().stopService()
        if self._reopen is not None and self._reopen.active():
            self._reopen.cancel()
        self._reopen = None
        if self._state_loop is not None and self._state_loop.running:
            self._state_loop.stop()
        self._state_loop = None
        self.bus.close()
        if self._serial is not None:
            self._closing = d = defer.Deferred()
            self._serial.loseConnection()
            return d
        if self._connector is not None:
            self._closing = d = defer.Deferred()
            self._connector.disconnect()
            return d
        return None

    # --- the link ---

    @property
    def link_state(self) -> str:
        """"up", "connecting" or "down"."""
        return self.bus.link_state

    @property
    def via(self) -> str | None:
        """How the bus is (or was last) reached: "local /dev/..." or "remote host:port"."""
        return self._via

    def _open(self) -> None:
        self._reopen = None
        cfg = self.config
        if cfg.local and os.path.exists(cfg.local):
            self._open_local(cfg.local)
        elif cfg.remote:
            self._open_remote(cfg.remote)
        else:
            self._down(f"local {cfg.local}", f"{cfg.local} does not exist on this host (adapter unplugged?)")
            self._schedule_reopen()

    def _open_local(self, path: str) -> None:
        from twisted.internet.serialport import SerialPort

        cfg, via = self.config, f"local {path}"
        self._via = via
        try:
            # The SerialPort calls connectionMade (-> _link_made) before it returns.
            self._serial = SerialPort(_LinkProtocol(self, via), path, self.ctx.reactor, baudrate=cfg.baud,
                                      bytesize=serial.EIGHTBITS, parity=PARITIES[cfg.parity],
                                      stopbits=STOPBITS[cfg.stopbits])
        except (serial.SerialException, OSError, ValueError) as e:
            self._serial = None
            self._down(via, f"cannot open {path}: {e}")
            self._schedule_reopen()

    def _open_remote(self, address: str) -> None:
        host, port = parse_host_port(address)
        via = f"remote {host}:{port}"
        self._via = via
        self.bus.link_connecting()
        self.ctx.state.set("link", "connecting")
        self.ctx.state.set("via", via)
        self._connector = self.ctx.reactor.connectTCP(host, port, _TunnelFactory(self, via),
                                                      timeout=self.connect_timeout_s)

    def _link_made(self, proto: _LinkProtocol) -> None:
        self._link = proto
        self._delay_s = self.reopen_min_s
        transport = proto.transport
        if self._connector is not None and hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)    # one small frame per transaction: never wait to coalesce
        log.info("{conn}: link up via {via}", conn=self.ctx.key, via=proto.via)
        self._down_logged = None
        self.ctx.state.update({"link": "up", "via": proto.via})
        self.ctx.state.delete("link_error")

    def _link_lost(self, proto: _LinkProtocol, reason: Failure | None) -> None:
        if proto is not self._link:
            return
        self._link = None
        tunnel = self._connector is not None
        self._serial = self._connector = None
        if self._closing is not None:
            d, self._closing = self._closing, None
            d.callback(None)
            return
        if not tunnel and (reason is None or reason.check(error.ConnectionDone)):
            # A tty reports an unplugged adapter as end of file: "closed cleanly" would mislead.
            why = "the device closed (adapter unplugged?)"
        else:
            why = reason.getErrorMessage() if reason is not None else "closed"
        self._down(proto.via, f"{proto.via} lost: {why}")
        self._schedule_reopen()

    def _connect_failed(self, via: str, reason: Failure) -> None:
        self._connector = None
        if self._closing is not None:
            d, self._closing = self._closing, None
            d.callback(None)
            return
        self._down(via, f"cannot connect ({reason.getErrorMessage()})")
        self._schedule_reopen()

    def _down(self, via: str, why: str) -> None:
        if why != self._down_logged:
            log.warn("{conn}: link down: {why}; reopening in {delay_s} s", conn=self.ctx.key, why=why,
                     delay_s=self._delay_s)
            self._down_logged = why
        self.ctx.state.update({"link": "down", "via": via, "link_error": why})
        if self._link is None:
            # last: failing the pending requests runs their callbacks
            self.bus.link_down(BusDisconnected(f"conn {self.ctx.name}: {why}"))

    def _schedule_reopen(self) -> None:
        if not self.running:
            return
        self._reopen = self.ctx.clock.callLater(self._delay_s, self._open)
        self._delay_s = min(self._delay_s * 2, self.reopen_max_s)

    def _check_local_path(self) -> None:
        # Some USB serial drivers leave an unplugged adapter's fd quiet (no read error) until it is written to;
        # the device node (or its udev link) going away is the surer sign.
        if self._serial is not None and self.config.local and not os.path.exists(self.config.local):
            log.warn("{conn}: {path} is gone; closing it", conn=self.ctx.key, path=self.config.local)
            self._serial.loseConnection()

    # --- state ---

    def _write_state(self) -> None:
        self._check_local_path()
        state, now = self.ctx.state, self.ctx.clock.seconds()
        write_ok = now - self._last_ok_write >= self.ok_every_s
        if write_ok:
            self._last_ok_write = now
        for unit in sorted(self._units_seen | set(self._claims)):
            c = self.bus.counters(unit)
            for name in ("timeouts", "exceptions", "bad_frames", "failed_fast", "backoff_s"):
                state.set(f"units/{unit}/{name}", c[name])
            if write_ok:
                state.set(f"units/{unit}/ok", c["ok"])
        state.set("bad_frames", self.bus.counters()["bad_frames"])
