"""The SDM simulators answer like the meters: float layout, 02 for split floats and long reads, faults."""
import struct

import pytest
import pytest_twisted
from twisted.internet import defer, task

from evc.bus import codec
from evc.bus.errors import ModbusException, ModbusTimeout
from evc.bus.tcp import ModbusTcpClient
from evc.sim.modbus import Garbage, SimDevice, listen_tcp
from evc.sim.sdm import SimSdm120, SimSdm630, SimSdm72


def floats(registers):
    return list(struct.unpack(f">{len(registers) // 2}f", struct.pack(f">{len(registers)}H", *registers)))


def ask(device, request):
    return device.handle(request)


def test_sdm630_block_read_has_the_documented_layout():
    sim = SimSdm630(1)
    sim.set(V=(230, 231, 232), A=(10, 0, 5), frequency_Hz=49.9, energy_Wh=12_345_000)
    reply = ask(sim, codec.read_input(1, 0, 76))
    f = floats(reply.registers)
    assert f[0:3] == pytest.approx([230, 231, 232])
    assert f[3:6] == pytest.approx([10, 0, 5])
    assert f[6:9] == pytest.approx([2300, 0, 1160])
    assert f[0x34 // 2] == pytest.approx(3460)
    assert f[0x46 // 2] == pytest.approx(49.9)
    assert f[0x48 // 2] == pytest.approx(12345.0)


@pytest.mark.parametrize("address,count", [(1, 2), (0, 3), (0, 82), (0x1FE, 4)])
def test_sdm_answers_02_for_split_floats_and_long_reads(address, count):
    reply = ask(SimSdm630(1), codec.read_input(1, address, count))
    assert reply.function_code == 0x84 and reply.exception_code == 2


def test_strict_sdm_refuses_reads_across_undocumented_registers():
    assert ask(SimSdm630(1, strict=True), codec.read_input(1, 0, 76)).exception_code == 2
    assert ask(SimSdm630(1, strict=True), codec.read_input(1, 0, 36)).function_code == 4
    assert ask(SimSdm630(1, strict=False), codec.read_input(1, 0, 76)).function_code == 4


def test_sdm72_v1_has_only_power_and_energy():
    sim = SimSdm72(1, version=1)
    sim.set(W=(1000, 1000, 1000), energy_Wh=5000)
    assert ask(sim, codec.read_input(1, 0, 18)).exception_code == 2
    assert floats(ask(sim, codec.read_input(1, 0x34, 2)).registers) == pytest.approx([3000])
    assert floats(ask(sim, codec.read_input(1, 0x48, 2)).registers) == pytest.approx([5.0])


def test_sdm120_is_single_phase():
    sim = SimSdm120(3)
    sim.set(V=229, A=4)
    f = floats(ask(sim, codec.read_input(3, 0, 14)).registers)
    assert (f[0], f[3], f[6]) == pytest.approx((229, 4, 916))


def test_energy_follows_power_over_time():
    clock = task.Clock()
    sim = SimSdm630(1, clock=clock)
    sim.set(W=(1000, 1000, 1000), energy_Wh=0)
    clock.advance(3600)
    assert floats(ask(sim, codec.read_input(1, 0x48, 2)).registers)[0] == pytest.approx(3.0)


def test_noise_stays_within_its_bound():
    sim = SimSdm630(1, noise=0.01, seed=1)
    sim.set(V=230)
    values = [floats(ask(sim, codec.read_input(1, 0, 2)).registers)[0] for _ in range(50)]
    assert all(227.6 <= v <= 232.4 for v in values) and len(set(values)) > 1


def test_faults():
    sim = SimSdm630(1)
    req = codec.read_input(1, 0, 2)
    sim.set_fault("silent")
    assert ask(sim, req) is None
    sim.set_fault("exception", 4)
    assert ask(sim, req).exception_code == 4
    sim.set_fault("garbage")
    assert isinstance(ask(sim, req), Garbage)
    sim.set_fault(None)
    assert ask(sim, req).function_code == 4


def test_generic_device_banks_and_writes():
    dev = SimDevice(5, input_registers={0: 1, 1: 2}, holding_registers={10: 0, 11: 0})
    assert ask(dev, codec.read_input(5, 0, 2)).registers == [1, 2]
    assert ask(dev, codec.read_input(5, 1, 2)).exception_code == 2
    assert ask(dev, codec.write_multiple(5, 10, [7, 8])).function_code == 16
    assert dev.holding_registers == {10: 7, 11: 8}
    assert ask(dev, codec.write_single(5, 12, 1)).exception_code == 2


def test_holding_settings_read_as_floats():
    sim = SimSdm630(7)
    assert floats(ask(sim, codec.read_holding(7, 0x14, 2)).registers) == [7.0]


@pytest_twisted.ensureDeferred
async def test_sdm630_over_loopback_tcp_with_our_client():
    from twisted.internet import reactor
    sim = SimSdm630(1)
    sim.set(V=230, A=(6, 7, 8))
    port = listen_tcp(reactor, [sim])
    client = ModbusTcpClient(reactor, reactor, "127.0.0.1", port.getHost().port, timeout_s=0.2)
    client.start()
    try:
        regs = await client.read_input_registers(1, 0, 76)
        assert floats(regs)[3:6] == pytest.approx([6, 7, 8])
        with pytest.raises(ModbusException) as exc:
            await client.read_input_registers(1, 1, 2)
        assert exc.value.code == 2
        sim.set_fault("garbage")
        with pytest.raises(ModbusTimeout):
            await client.read_input_registers(1, 0, 2)
        assert client.counters(1)["bad_frames"] == 2
        sim.set_fault(None)
        with pytest.raises(ModbusTimeout):          # nobody answers for a unit that is not there
            await client.read_input_registers(2, 0, 2)
    finally:
        await client.stop()
        await port.stopListening()
