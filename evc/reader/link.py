"""The serial link of a serial reader: a local tty (pyserial through Twisted's SerialPort) or a serial-over-TCP
tunnel (ser2net raw mode), chosen at every (re)open as conn/rs485 does, reopened with growing delays when it goes.

The link knows nothing of the reader's protocol: every connection gets a fresh driver from `make_driver()`, an
object with `connected(write)`, `data(bytes)` and `disconnected()`. The link reports through `on_state(up, via,
why)`: up True when bytes can flow, False with a sentence naming the leaf when not.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import serial
from twisted.internet import defer, error, task
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from evc.bus.tcp import parse_host_port

log = Logger(namespace="evc.reader.link")


class _LinkProtocol(Protocol):
    def __init__(self, link: "SerialLink", via: str):
        self.link = link
        self.via = via
        self.driver: Any = None

    def connectionMade(self) -> None:
        self.driver = self.link.make_driver()
        self.link._made(self)
        self.driver.connected(self.transport.write)

    def dataReceived(self, data: bytes) -> None:
        if self.driver is not None:
            self.driver.data(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        driver, self.driver = self.driver, None
        if driver is not None:
            driver.disconnected()
        self.link._lost(self, reason)


class _TunnelFactory(ClientFactory):
    noisy = False

    def __init__(self, link: "SerialLink", via: str):
        self.link = link
        self.via = via

    def buildProtocol(self, addr):
        return _LinkProtocol(self.link, self.via)

    def clientConnectionFailed(self, connector, reason):
        self.link._connect_failed(self.via, reason)


class SerialLink:
    """One reader's line. `local`/`remote` as in the reader's config; `baud` 8N1 (readers use no parity)."""

    reopen_min_s = 0.5
    reopen_max_s = 5.0
    connect_timeout_s = 5.0
    check_s = 1.0          # how often a local path is checked (a vanished adapter may leave its fd quiet)

    def __init__(self, reactor, clock, local: str | None, remote: str | None, baud: int,
                 make_driver: Callable[[], Any], on_state: Callable[[bool, str, str | None], None], name: str = ""):
        self.reactor = reactor
        self.clock = clock
        self.local = local
        self.remote = remote
        self.baud = baud
        self.make_driver = make_driver
        self.on_state = on_state
        self.name = name
        self.up = False
        self.via: str | None = None
        self._proto: _LinkProtocol | None = None
        self._serial: Any = None
        self._connector: Any = None
        self._reopen = None
        self._delay_s = self.reopen_min_s
        self._check: task.LoopingCall | None = None
        self._closing: defer.Deferred | None = None
        self._running = False
        self._said: str | None = None

    def start(self) -> None:
        self._running = True
        self._open()
        self._check = task.LoopingCall(self._check_local_path)
        self._check.clock = self.clock
        self._check.start(self.check_s, now=False)

    def stop(self) -> defer.Deferred | None:
        self._running = False
        if self._reopen is not None and self._reopen.active():
            self._reopen.cancel()
        self._reopen = None
        if self._check is not None and self._check.running:
            self._check.stop()
        if self._serial is not None:
            self._closing = d = defer.Deferred()
            self._serial.loseConnection()
            return d
        if self._connector is not None:
            self._closing = d = defer.Deferred()
            self._connector.disconnect()
            return d
        return None

    def _open(self) -> None:
        self._reopen = None
        if self.local and os.path.exists(self.local):
            self._open_local(self.local)
        elif self.remote:
            self._open_remote(self.remote)
        else:
            self._down(f"local {self.local}", f"config/local: {self.local} does not exist on this host "
                                              "(reader unplugged?)")

    def _open_local(self, path: str) -> None:
        from twisted.internet.serialport import SerialPort

        via = self.via = f"local {path}"
        try:
            self._serial = SerialPort(_LinkProtocol(self, via), path, self.reactor, baudrate=self.baud,
                                      bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE,
                                      stopbits=serial.STOPBITS_ONE)
        except (serial.SerialException, OSError, ValueError) as e:
            self._serial = None
            self._down(via, f"config/local: cannot open {path}: {e}")

    def _open_remote(self, address: str) -> None:
        host, port = parse_host_port(address)
        self.via = f"remote {host}:{port}"
        self._connector = self.reactor.connectTCP(host, port, _TunnelFactory(self, self.via),
                                                  timeout=self.connect_timeout_s)

    def _made(self, proto: _LinkProtocol) -> None:
        self._proto = proto
        self._delay_s = self.reopen_min_s
        self.up = True
        if self._said is not None:
            log.info("{reader}: link up again via {via}", reader=self.name, via=proto.via)
        self._said = None
        self.on_state(True, proto.via, None)

    def _lost(self, proto: _LinkProtocol, reason: Failure | None) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        self.up = False
        tunnel = self._connector is not None
        self._serial = self._connector = None
        if self._closing is not None:
            d, self._closing = self._closing, None
            d.callback(None)
            return
        if not tunnel and (reason is None or reason.check(error.ConnectionDone)):
            why = "the device closed (reader unplugged?)"
        else:
            why = reason.getErrorMessage() if reason is not None else "closed"
        leaf = "config/remote" if tunnel else "config/local"
        self._down(proto.via, f"{leaf}: {proto.via.split(' ', 1)[1]} lost: {why}")

    def _connect_failed(self, via: str, reason: Failure) -> None:
        self._connector = None
        if self._closing is not None:
            d, self._closing = self._closing, None
            d.callback(None)
            return
        self._down(via, f"config/remote: cannot connect to {via.split(' ', 1)[1]} ({reason.getErrorMessage()})")

    def _down(self, via: str, why: str) -> None:
        self.up = False
        if why != self._said:
            log.warn("{reader}: link down: {why}; reopening in {delay_s} s", reader=self.name, why=why,
                     delay_s=self._delay_s)
            self._said = why
        self.on_state(False, via, why)
        if self._running:
            self._reopen = self.clock.callLater(self._delay_s, self._open)
            self._delay_s = min(self._delay_s * 2, self.reopen_max_s)

    def _check_local_path(self) -> None:
        if self._serial is not None and self.local and not os.path.exists(self.local):
            log.warn("{reader}: {path} is gone; closing it", reader=self.name, path=self.local)
            self._serial.loseConnection()
