"""The same scheduler with RTU framing: Modbus RTU over a ser2net-style TCP tunnel to a simulated RS485 line."""
import pytest
import pytest_twisted
from twisted.internet import task

from evc.bus import codec
from evc.bus.errors import ModbusException, ModbusTimeout
from evc.bus.tcp import ModbusTcpClient
from evc.sim.rs485 import SimRs485Bus
from evc.sim.sdm import SimSdm120, SimSdm630


@pytest_twisted.ensureDeferred
async def test_rtu_over_a_tunnel_with_two_meters_and_a_gap():
    from twisted.internet import reactor
    a, b = SimSdm630(1), SimSdm120(2)
    a.set(A=(1, 2, 3))
    b.set(A=7)
    line = SimRs485Bus(reactor, [a, b])
    port = line.listen()
    client = ModbusTcpClient(reactor, reactor, "127.0.0.1", port, framing=codec.RtuFraming(), timeout_s=0.2,
                             gap_s=0.02)
    client.start()
    try:
        regs_a = await client.read_input_registers(1, 0x06, 6)
        regs_b = await client.read_input_registers(2, 0x06, 2)
        assert [codec.registers_to_float32(regs_a, i) for i in (0, 2, 4)] == [1, 2, 3]
        assert codec.registers_to_float32(regs_b) == 7
        with pytest.raises(ModbusException):
            await client.read_input_registers(1, 0x01, 2)            # splits a float
        b.set_fault("garbage")                                      # framed garbage: function code 0
        with pytest.raises(ModbusTimeout):
            await client.read_input_registers(2, 0, 2)
        assert client.counters(2)["bad_frames"] >= 2
        assert (await client.read_input_registers(1, 0, 2)) is not None   # the other unit still answers
    finally:
        await client.stop()
        await line.stop_listening()
