"""Test helpers for meters: a recording state sink, an in-memory Modbus link to simulators, a Context."""
from __future__ import annotations

from twisted.internet import task
from twisted.internet.testing import StringTransport

from evc.bus import codec
from evc.bus.client import ModbusBus, ModbusClientProtocol
from evc.instance import Context
from evc.sim.modbus import ModbusServerFactory
from evc.testing import RecordingState as FakeState


class _Pipe(StringTransport):
    def __init__(self, deliver):
        super().__init__()
        self._deliver = deliver

    def write(self, data):
        self._deliver(data)


def memory_bus(clock, devices, **options) -> ModbusBus:
    """A ModbusBus whose link is an in-memory pipe to a Modbus TCP server serving `devices`."""
    bus = ModbusBus(clock, codec.TcpFraming(), name="memory", **options)
    server = ModbusServerFactory(devices).buildProtocol(None)
    client = ModbusClientProtocol(bus)
    server.makeConnection(_Pipe(lambda data: client.dataReceived(data)))
    client.makeConnection(_Pipe(lambda data: server.dataReceived(data)))
    return bus


def make_ctx(clock=None, resolve=None, reactor=None, name="m1"):
    clock = clock or task.Clock()

    def no_refs(kind, ref):
        raise AssertionError(f"unexpected resolve({kind}, {ref})")
    return Context(kind="meter", name=name, clock=clock, state=FakeState(), resolve=resolve or no_refs,
                   reactor=reactor)


class RecordingDevice:
    """Wraps a SimDevice and records the clock time of every request it gets."""

    def __init__(self, device, clock):
        self.device, self.clock, self.times, self.requests = device, clock, [], []
        self.unit = device.unit

    def handle(self, request):
        self.times.append(self.clock.seconds())
        self.requests.append((request.address, request.count))
        return self.device.handle(request)
