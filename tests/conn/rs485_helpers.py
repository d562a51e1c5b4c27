"""Test helpers for conn/rs485 and charger/EVCC_manual: a recording state sink, Contexts, in-memory and real buses."""
from __future__ import annotations

from twisted.internet import task
from twisted.internet.testing import StringTransport

from evc.bus.client import ModbusBus, ModbusClientProtocol
from evc.bus.codec import RtuFraming
from evc.conn.rs485 import Rs485Conn
from evc.events import EventBus
from evc.instance import Context
from evc.sim.rs485 import SimRs485Bus
from evc.testing import RecordingState as FakeState


def make_ctx(kind="charger", name="s1", clock=None, reactor=None, refs=None, events=None):
    """A Context whose resolve() answers from `refs` {(kind, name): instance}."""
    refs = refs if refs is not None else {}

    def resolve(k, n):
        return refs[(k, n)]
    return Context(kind=kind, name=name, clock=clock or task.Clock(), state=FakeState(), resolve=resolve,
                   reactor=reactor, events=events if events is not None else EventBus())


class _Pipe(StringTransport):
    def __init__(self, deliver):
        super().__init__()
        self._deliver = deliver

    def write(self, data):
        self._deliver(data)


def memory_rtu_bus(clock, sim: SimRs485Bus, **options) -> ModbusBus:
    """A ModbusBus (RTU) wired in memory to a simulated RS485 bus driven by the same task.Clock."""
    options.setdefault("timeout_s", 0.3)
    bus = ModbusBus(clock, RtuFraming(), name="memory-rs485", **options)
    proto = ModbusClientProtocol(bus)
    port = sim.attach(lambda data: proto.dataReceived(data), name="memory")
    proto.makeConnection(_Pipe(port.feed))
    return bus


def start_conn(reactor, name="s123", **config) -> Rs485Conn:
    """A running conn/rs485 on the real reactor (fast reopen delays for tests)."""
    ctx = make_ctx(kind="conn", name=name, clock=reactor, reactor=reactor)
    conn = Rs485Conn(ctx, Rs485Conn.Config(**config))
    conn.reopen_min_s = 0.05
    conn.reopen_max_s = 0.2
    conn.state_interval_s = 0.05
    conn.startService()
    return conn
