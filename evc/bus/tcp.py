"""Modbus over a TCP connection that reconnects by itself: a Modbus TCP gateway, or an RTU tunnel (ser2net)."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from evc.bus import codec
from evc.bus.client import ModbusBus, ModbusClientProtocol
from evc.bus.errors import BusDisconnected

log = Logger(namespace="evc.bus.tcp")

MODBUS_TCP_PORT = 502


def parse_host_port(text: str, default_port: int = MODBUS_TCP_PORT) -> tuple[str, int]:
    """"host:port", "host" (default port) or "[v6addr]:port" -> (host, port); ValueError says what is wrong."""
    text = text.strip()
    has_port = True
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not host:port")
        has_port, port_text = bool(rest), rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:                                   # a bare host name or IPv6 address
        host, port_text, has_port = text, "", False
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not has_port:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: port must be 1..65535")
    return host, int(port_text)


class _Factory(ClientFactory):
    def __init__(self, owner: "ModbusTcpClient"):
        self.owner = owner

    def buildProtocol(self, addr):
        return ModbusClientProtocol(self.owner, self.owner.framing, name=self.owner.name)

    def clientConnectionFailed(self, connector, reason):
        self.owner._connection_failed(reason)

    def clientConnectionLost(self, connector, reason):
        self.owner._connection_lost(reason)


class ModbusTcpClient(ModbusBus):
    """An IModbusBus over one TCP connection to host:port, kept up with exponential reconnect delays.

    While a connection attempt runs, requests wait for it; while the link is down between attempts they
    fail fast with BusDisconnected (a poller asks again at its next interval). A lost connection fails the
    requests in flight and queued with BusDisconnected naming host:port.
    """

    def __init__(self, reactor: IReactorTCP, clock: IReactorTime, host: str, port: int = MODBUS_TCP_PORT, *,
                 framing: codec.Framing | None = None, timeout_s: float = 1.0, connect_timeout_s: float = 5.0,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0, **bus_options: Any):
        super().__init__(clock, framing or codec.TcpFraming(), timeout_s=timeout_s, name=f"{host}:{port}",
                         **bus_options)
        self._reactor = reactor
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self._delay_s = reconnect_min_s
        self._factory = _Factory(self)
        self._connector: Any = None
        self._reconnect: IDelayedCall | None = None
        self._running = False
        self._in_progress = False    # from connectTCP until the attempt fails or the connection is lost
        self._stopped: defer.Deferred | None = None

    @classmethod
    def from_address(cls, reactor, clock, address: str, **options) -> "ModbusTcpClient":
        host, port = parse_host_port(address)
        return cls(reactor, clock, host, port, **options)

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._connect()

    def stop(self) -> defer.Deferred:
        """Disconnect and stop reconnecting; pending requests fail with BusClosed. Fires when the socket is closed."""
        self._running = False
        if self._reconnect is not None and self._reconnect.active():
            self._reconnect.cancel()
        self._reconnect = None
        self.close()
        if self._in_progress:
            # disconnecting may report the loss at once, firing (and clearing) _stopped before it returns
            self._stopped = d = defer.Deferred()
            self._connector.disconnect()
            return d
        return defer.succeed(None)

    def link_up(self, link) -> None:
        self._delay_s = self.reconnect_min_s
        super().link_up(link)

    def _connect(self) -> None:
        self._reconnect = None
        self.link_connecting()
        self._in_progress = True
        self._connector = self._reactor.connectTCP(self.host, self.port, self._factory,
                                                   timeout=self.connect_timeout_s)

    def _connection_failed(self, reason: Failure) -> None:
        self.link_down(BusDisconnected(f"cannot connect to {self.name}: {reason.getErrorMessage()}"))
        self._retry_later(reason)

    def _connection_lost(self, reason: Failure) -> None:
        self.link_down(BusDisconnected(f"connection to {self.name} lost: {reason.getErrorMessage()}"))
        self._retry_later(reason)

    def _retry_later(self, reason: Failure) -> None:
        self._in_progress = False
        if self._stopped is not None:
            d, self._stopped = self._stopped, None
            d.callback(None)
        if not self._running:
            return
        log.info("{bus}: {reason}; reconnecting in {delay_s} s", bus=self.name,
                 reason=reason.getErrorMessage(), delay_s=self._delay_s)
        self._reconnect = self._clock.callLater(self._delay_s, self._connect)
        self._delay_s = min(self._delay_s * 2, self.reconnect_max_s)
