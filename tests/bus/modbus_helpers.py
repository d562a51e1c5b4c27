"""Test helpers: a ModbusBus on a StringTransport with a fake device answering by hand or automatically."""
from __future__ import annotations

from twisted.internet import task
from twisted.internet.testing import StringTransport

from evc.bus import codec
from evc.bus.client import ModbusBus, ModbusClientProtocol


class Harness:
    def __init__(self, framing_cls=codec.TcpFraming, **bus_options):
        self.framing_cls = framing_cls
        self.clock = task.Clock()
        self.bus = ModbusBus(self.clock, framing_cls(), name="test", **bus_options)
        self.proto = ModbusClientProtocol(self.bus)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self._server = framing_cls(server=True)
        self._encoder = framing_cls(server=True)

    def sent(self) -> list:
        """The requests written since the last call, decoded."""
        data, out = self.transport.value(), []
        self.transport.clear()
        while data:
            used, pdu = self._server.decode(data)
            assert pdu is not None, "the client wrote a bad frame"
            out.append(pdu)
            data = data[used:]
        return out

    def feed(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def answer(self, request, registers=None) -> None:
        if request.function_code in (codec.FC_READ_INPUT, codec.FC_READ_HOLDING):
            regs = registers if registers is not None else [request.address + i for i in range(request.count)]
            self.feed(self._encoder.encode(codec.read_response(request, regs)))
        else:
            self.feed(self._encoder.encode(codec.write_response(request)))

    def answer_exception(self, request, code) -> None:
        self.feed(self._encoder.encode(codec.exception_reply(request, code)))


class AutoTransport(StringTransport):
    """A transport whose device answers every request for the units in `alive` at once (re-entrantly)."""

    def __init__(self, harness_framing_cls, alive: set[int]):
        super().__init__()
        self.alive = alive
        self.proto = None
        self.seen: list[int] = []
        self._server = harness_framing_cls(server=True)

    def write(self, data):
        used, req = self._server.decode(data)
        self.seen.append(req.dev_id)
        if req.dev_id in self.alive:
            regs = [0] * req.count
            self.proto.dataReceived(self._server.encode(codec.read_response(req, regs)))
