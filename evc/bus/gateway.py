"""Modbus TCP gateways as buses: one shared connection per gateway host:port, whatever number of devices use it.

A TCP -> RS485 gateway is one RS485 bus behind one TCP port. Many accept a single connection (a second one is
refused, or kicks the first), and whatever they accept ends on one pair of wires where two requests at once
collide. So every device configured with the same gateway `host:port` shares one `Gateway`: one
`evc.bus.tcp.ModbusTcpClient` (one connection, reconnecting with growing delays), hence one transaction in
flight, a FIFO, the bus gap between transactions, per-unit counters and per-unit backoff, exactly as on a
`conn/rs485`.

Users acquire the gateway when they start and release it when they stop; the connection opens with the first
user and closes with the last:

    gw = GATEWAYS.acquire(reactor, clock, "192.168.1.20:502", "meter/m1", gap_s=0.1, leaf="config/bus")
    release = gw.claim(1, "meter/m1", leaf="config/bus_addr")     # IBusAddresses, as on conn/rs485
    regs = await gw.read_input_registers(1, 0x0000, 76)
    ...
    release(); await gw.leave("meter/m1")

The registry is keyed by (reactor, host, port): the host as written, compared without case, so write one
gateway the same way everywhere (`gw1.local` and its IP address would be two connections). One gateway speaks
one framing (Modbus TCP, or RTU over TCP for "transparent" gateways): acquiring it with the other one is a
ConfigError. The bus gap is the largest `gap_s` any current user asks for.
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from evc.bus import codec
from evc.bus.client import IModbusBus
from evc.bus.tcp import ModbusTcpClient, parse_host_port
from evc.conn import IBusAddresses
from evc.errors import ConfigError

log = Logger(namespace="evc.bus.gateway")

FRAMINGS: dict[str, type] = {"tcp": codec.TcpFraming, "rtu": codec.RtuFraming}

# Reconnect delays, as conn/rs485 reopens its link: a rebooted gateway is back within seconds, and a long outage
# must still end within seconds of the gateway's return (every meter behind it is stale meanwhile).
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0


@implementer(IModbusBus, IBusAddresses)
class Gateway:
    """One gateway's shared bus. Requests and counters go to its ModbusTcpClient; users and claims live here."""

    def __init__(self, registry: "GatewayRegistry", key: tuple, client: ModbusTcpClient, framing: str):
        self._registry = registry
        self._key = key
        self.client = client
        self.framing = framing
        self.name = client.name                  # host:port
        self._users: dict[str, float] = {}       # user key -> the bus gap it asks for
        self._claims: dict[int, str] = {}

    # --- IModbusBus ---

    def read_input_registers(self, unit, address, count, timeout_s=None, priority=False):
        return self.client.read_input_registers(unit, address, count, timeout_s, priority)

    def read_holding_registers(self, unit, address, count, timeout_s=None, priority=False):
        return self.client.read_holding_registers(unit, address, count, timeout_s, priority)

    def write_registers(self, unit, address, values, priority=True, timeout_s=None):
        return self.client.write_registers(unit, address, values, priority, timeout_s)

    def write_register(self, unit, address, value, priority=True, timeout_s=None):
        return self.client.write_register(unit, address, value, priority, timeout_s)

    def counters(self, unit=None):
        return self.client.counters(unit)

    @property
    def link_state(self) -> str:
        return self.client.link_state

    @property
    def down_reason(self) -> str:
        return self.client.down_reason

    @property
    def gap_s(self) -> float:
        return self.client.gap_s

    # --- IBusAddresses ---

    def claim(self, unit: int, user_key: str, leaf: str = "config/bus_addr") -> Callable[[], None]:
        if not 1 <= unit <= 247:
            raise ConfigError(f"{leaf}: address {unit} is outside 1..247")
        holder = self._claims.get(unit)
        if holder is not None and holder != user_key:
            raise ConfigError(f"{leaf}: address {unit} on gateway {self.name} is already used by {holder}")
        self._claims[unit] = user_key
        return lambda: self.release(unit, user_key)

    def release(self, unit: int, user_key: str) -> None:
        if self._claims.get(unit) == user_key:
            del self._claims[unit]

    # --- users ---

    def leave(self, user_key: str) -> defer.Deferred:
        """`user_key` stops using the gateway (its claims go too). Fires when the connection is closed if it was
        the last user, at once otherwise."""
        return self._registry._release(self, user_key)

    @property
    def users(self) -> tuple[str, ...]:
        return tuple(self._users)

    @property
    def claims(self) -> dict[int, str]:
        return dict(self._claims)

    def _set_gap(self) -> None:
        self.client.gap_s = max(self._users.values(), default=0.0)


class GatewayRegistry:
    """Process-wide: (reactor, host, port) -> the Gateway every device configured with that address shares."""

    def __init__(self):
        self._gateways: dict[tuple, Gateway] = {}
        self._closing: dict[tuple, defer.Deferred] = {}

    def acquire(self, reactor, clock, address: str, user_key: str, *, framing: str = "tcp", gap_s: float = 0.0,
                timeout_s: float = 1.0, leaf: str = "config/bus", framing_leaf: str | None = None) -> Gateway:
        """The shared Gateway for `address` ("host:port"), opened on first use. ConfigError names `leaf` when
        the address is not host:port, `framing_leaf` (default: `leaf`) when the gateway is already used with
        another framing."""
        try:
            host, port = parse_host_port(address)
        except ValueError as e:
            raise ConfigError(f"{leaf}: {e}") from None
        if framing not in FRAMINGS:
            raise ConfigError(f"{framing_leaf or leaf}: framing {framing!r} is not one of {', '.join(FRAMINGS)}")
        key = (reactor, host.lower(), port)
        gw = self._gateways.get(key)
        if gw is None:
            gw = self._open(key, reactor, clock, host, port, framing, timeout_s)
        elif gw.framing != framing and user_key not in gw._users:
            raise ConfigError(f"{framing_leaf or leaf}: gateway {gw.name} is already used with {gw.framing} "
                              f"framing by {', '.join(gw.users)}; one gateway speaks one framing")
        gw._users[user_key] = gap_s
        gw._set_gap()
        return gw

    def get(self, reactor, address: str) -> Gateway | None:
        """The open Gateway for `address` on `reactor`, if any user holds it."""
        host, port = parse_host_port(address)
        return self._gateways.get((reactor, host.lower(), port))

    def __len__(self) -> int:
        return len(self._gateways)

    def _open(self, key, reactor, clock, host, port, framing, timeout_s) -> Gateway:
        client = ModbusTcpClient(reactor, clock, host, port, framing=FRAMINGS[framing](), timeout_s=timeout_s,
                                 reconnect_min_s=RECONNECT_MIN_S, reconnect_max_s=RECONNECT_MAX_S)
        gw = Gateway(self, key, client, framing)
        self._gateways[key] = gw
        closing = self._closing.get(key)
        if closing is None:
            client.start()
        else:
            # The last user of the previous connection just left and its socket is still closing: a gateway
            # that takes one connection would refuse the new one. Queue requests until it is closed.
            client.link_connecting()

            def start(_):
                if self._gateways.get(key) is gw:
                    client.start()
            closing.addBoth(start)
        log.info("gateway {gateway}: opened ({framing})", gateway=client.name, framing=framing)
        return gw

    def _release(self, gw: Gateway, user_key: str) -> defer.Deferred:
        if user_key not in gw._users:
            return defer.succeed(None)
        del gw._users[user_key]
        for unit, holder in list(gw._claims.items()):
            if holder == user_key:
                del gw._claims[unit]
        if gw._users:
            gw._set_gap()
            return defer.succeed(None)
        if self._gateways.get(gw._key) is gw:
            del self._gateways[gw._key]
        log.info("gateway {gateway}: last user gone, closing", gateway=gw.name)
        d = gw.client.stop()
        if d.called:
            return d
        key = gw._key
        closed = defer.Deferred()
        self._closing[key] = closed

        def done(result: Any):
            if self._closing.get(key) is closed:
                del self._closing[key]
            closed.callback(None)
            return result
        d.addBoth(done)
        return d


GATEWAYS = GatewayRegistry()
