"""A simulated serial line for a device that talks on its own tty: a pty and a raw TCP tunnel (as ser2net serves it).

The device side writes with `write(bytes)` (to the pty and to every tunnel client) and hears the host through
`on_data(bytes)`. `vanish()` / `reappear()` unplug and replug the adapter behind a stable path (a symlink, like a udev
name); `drop_tunnel()` cuts the tunnel's clients. Used by the reader simulators (evc.sim.rdm6300, .pn532, ...).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from evc.sim.rs485 import PtyReader, point_link, raw_pty

log = Logger(namespace="evc.sim.serial_line")


class _TunnelProtocol(Protocol):
    def __init__(self, line: "SimSerialLine"):
        self.line = line

    def connectionMade(self):
        self.line._tunnels.add(self)
        self.line.connections += 1

    def dataReceived(self, data):
        self.line._heard(data)

    def connectionLost(self, reason):
        self.line._tunnels.discard(self)


class SimSerialLine:
    def __init__(self, reactor, name: str = "reader", on_data: Callable[[bytes], None] | None = None):
        self.reactor = reactor
        self.name = name
        self.on_data = on_data or (lambda data: None)
        self.heard = b""                 # everything the host sent (tests read it)
        self.written = 0                 # bytes the device put on the line
        self.connections = 0             # tunnel clients accepted so far
        self._master: int | None = None
        self._slave: int | None = None
        self._reader: PtyReader | None = None
        self._link: str | None = None
        self._tmpdir: str | None = None
        self._listening = None
        self._tunnels: set[_TunnelProtocol] = set()
        self._memory: list[Callable[[bytes], None]] = []

    # -- the host's side --

    def attach(self, deliver: Callable[[bytes], None]) -> Callable[[bytes], None]:
        """An in-memory host (unit tests): the device's bytes go to `deliver`; returns the host's write function."""
        self._memory.append(deliver)
        return self._heard

    def _heard(self, data: bytes) -> None:
        self.heard += data
        self.on_data(data)

    def write(self, data: bytes) -> None:
        """The device sends `data` (to the pty and every tunnel client)."""
        self.written += len(data)
        if self._master is not None:
            try:
                os.write(self._master, data)
            except (BlockingIOError, OSError):
                pass        # nobody reads the pty: a real line does not buffer either
        for proto in list(self._tunnels):
            proto.transport.write(data)
        for deliver in list(self._memory):
            deliver(data)

    @property
    def attached(self) -> bool:
        """Whether a host can hear the device (a pty is open or a tunnel client is connected)."""
        return self._master is not None or bool(self._tunnels) or bool(self._memory)

    # -- pty --

    def open_pty(self, link_path: str | None = None) -> str:
        """Open a pty; returns a stable path (symlink to its slave) for the host to open."""
        if self._master is not None:
            raise RuntimeError(f"{self.name} already has a pty at {self._link}")
        if link_path is None:
            if self._link is None:
                self._tmpdir = tempfile.mkdtemp(prefix="evc-reader-")
                link_path = os.path.join(self._tmpdir, self.name)
            else:
                link_path = self._link
        master, slave = raw_pty()
        self._master, self._slave = master, slave
        self._reader = PtyReader(self.name, master, self._heard)
        self.reactor.addReader(self._reader)
        point_link(link_path, os.ttyname(slave))
        self._link = link_path
        return link_path

    @property
    def tty_path(self) -> str | None:
        return self._link

    def vanish(self) -> None:
        """The adapter is unplugged: the pty closes and its path disappears."""
        if self._master is None:
            return
        self.reactor.removeReader(self._reader)
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = self._reader = None
        if self._link and os.path.lexists(self._link):
            os.unlink(self._link)

    def reappear(self) -> str:
        """The adapter is plugged back in: a new pty behind the same path."""
        return self.open_pty(self._link)

    # -- TCP tunnel --

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> int:
        factory = Factory.forProtocol(lambda: _TunnelProtocol(self))
        factory.noisy = False
        self._listening = self.reactor.listenTCP(port, factory, interface=interface)
        return self._listening.getHost().port

    @property
    def tcp_port(self) -> int | None:
        return self._listening.getHost().port if self._listening is not None else None

    def drop_tunnel(self) -> None:
        for proto in list(self._tunnels):
            proto.transport.abortConnection()

    def close(self) -> defer.Deferred:
        self.vanish()
        self.drop_tunnel()
        d = defer.succeed(None)
        if self._listening is not None:
            listening, self._listening = self._listening, None
            d = defer.maybeDeferred(listening.stopListening)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self._link = None
        return d
