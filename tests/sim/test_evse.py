"""The simulated EVSE-DIN: register map, exceptions, pause with 0, and vehicle states driven by a car."""
import pytest
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)
from twisted.internet import task

from evc.sim.car import SimCar
from evc.sim.evse import SimEvse
from evc.sim.rs485 import SimRs485Bus, rtu_frame


def read(evse, address, count=1):
    return evse.handle(ReadHoldingRegistersRequest(address=address, count=count, dev_id=evse.unit))


def regs(evse, address, count=1):
    response = read(evse, address, count)
    assert not response.isError(), response
    return response.registers


def write(evse, address, *values):
    return evse.handle(WriteMultipleRegistersRequest(address=address, registers=list(values), dev_id=evse.unit))


def write6(evse, address, value):
    return evse.handle(WriteSingleRegisterRequest(address=address, registers=[value], dev_id=evse.unit))


def exception_code(response):
    assert isinstance(response, ExceptionResponse), response
    return response.exception_code


@pytest.fixture
def evse():
    return SimEvse("s1", unit=1, default_current_A=16, pp_limit_A=20, max_current_A=32)


def test_whole_map_reads_in_two_blocks_with_power_up_values(evse):
    runtime = regs(evse, 1000, 8)
    assert runtime == [16, 16, 1, 20, 0, 18, 1, 0]
    config = regs(evse, 2000, 18)
    assert config[0] == 16 and config[1] == 1 and config[2] == 6 and config[5] == 0
    assert config[10:18] == [6, 10, 16, 25, 32, 48, 63, 80]


@pytest.mark.parametrize("address,count", [(999, 1), (1007, 2), (1008, 1), (2017, 2), (1500, 1), (0, 1)])
def test_read_outside_the_map_is_exception_02(evse, address, count):
    assert exception_code(read(evse, address, count)) == 2


def test_input_register_read_is_exception_01(evse):
    response = evse.handle(ReadInputRegistersRequest(address=1000, count=1, dev_id=1))
    assert response.function_code == 0x84 and exception_code(response) == 1


def test_advertised_current_is_capped_by_the_cable(evse):
    assert write(evse, 1000, 32).function_code == 16
    assert regs(evse, 1000, 2) == [32, 20]
    write6(evse, 1000, 10)
    assert regs(evse, 1000, 2) == [10, 10]


@pytest.mark.parametrize("value", [1, 5, 33, 0xFFFF])
def test_set_current_between_1_and_min_or_above_max_is_exception_03(evse, value):
    assert exception_code(write(evse, 1000, value)) == 3
    assert exception_code(write6(evse, 1000, value)) == 3
    assert regs(evse, 1000) == [16], "a refused write changes nothing"


def test_minimum_follows_register_2002(evse):
    write(evse, 2002, 5)
    assert write(evse, 1000, 5).function_code == 16
    assert regs(evse, 1000) == [5]


@pytest.mark.parametrize("address", [1001, 1002, 1003, 1005, 1006, 1007, 2009])
def test_write_to_a_read_only_register_is_exception_02(evse, address):
    assert exception_code(write6(evse, address, 1)) == 2


def test_multi_register_write_is_all_or_nothing(evse):
    assert exception_code(write(evse, 2000, 10, 1, 6, 1, 0, 1 << 15)) == 3
    assert regs(evse, 2000) == [16]
    assert exception_code(write(evse, 1000, 10, 1)) == 2
    assert regs(evse, 1000) == [16]


def test_precise_mode_uses_centiamps(evse):
    write6(evse, 2005, 1 << 7)
    assert regs(evse, 1000, 2) == [1600, 1600]
    assert write6(evse, 1000, 1234).registers == [1234]
    assert regs(evse, 1000, 2) == [1234, 1234]
    assert evse.set_current_A == pytest.approx(12.34)
    assert exception_code(write6(evse, 1000, 500)) == 3


def test_car_drives_vehicle_state_and_zero_pauses(evse):
    car = SimCar("c", phases=3, max_current_A=16, soc=0.2)
    assert regs(evse, 1002) == [1]
    car.plug(evse)
    assert regs(evse, 1002) == [3] and regs(evse, 1006) == [2] and regs(evse, 1007) == [1]
    assert car.draw_A == (16.0, 16.0, 16.0)
    write6(evse, 1000, 0)
    assert regs(evse, 1000, 8)[:3] == [0, 0, 2]
    assert regs(evse, 1006) == [1] and regs(evse, 1007) == [0]
    assert car.draw_A == (0.0, 0.0, 0.0)
    write6(evse, 1000, 8)
    assert regs(evse, 1002) == [3] and car.draw_A == (8.0, 8.0, 8.0)
    car.unplug()
    assert regs(evse, 1002) == [1] and regs(evse, 1007) == [0]


def test_full_car_leaves_charging_for_ev_present(evse):
    car = SimCar("c", capacity_Wh=1000, soc=0.999, taper_floor_A=16)
    car.plug(evse)
    assert regs(evse, 1002) == [3]
    car.step(60)
    assert car.full
    assert regs(evse, 1002) == [2] and regs(evse, 1007) == [0]


def test_disable_bit14_stops_pwm_and_clearing_it_resumes(evse):
    car = SimCar("c", soc=0.2)
    car.plug(evse)
    write6(evse, 2005, 1 << 14)
    assert regs(evse, 1001, 7)[:6] == [0, 2, 20, 0, 18, 3]
    assert car.current_A == 0
    write6(evse, 2005, 0)
    assert regs(evse, 1002) == [3]


def test_disable_after_charge_bit13_disables_on_unplug_after_a_session(evse):
    write6(evse, 2005, 1 << 13)
    car = SimCar("c", soc=0.2)
    car.plug(evse)
    car.unplug()
    assert regs(evse, 2005) == [1 << 13], "no energy flowed, so the session did not count"
    car.plug(evse)
    car.step(10)
    car.unplug()
    assert regs(evse, 2005) == [(1 << 13) | (1 << 14)]
    assert regs(evse, 1006) == [3]


def test_command_bit0_turns_off_until_cleared(evse):
    car = SimCar("c", soc=0.2)
    car.plug(evse)
    write6(evse, 1004, 1)
    assert regs(evse, 1004) == [1] and regs(evse, 1006) == [3] and regs(evse, 1002) == [2]
    write6(evse, 1004, 0)
    assert regs(evse, 1006) == [2] and regs(evse, 1002) == [3]
    assert exception_code(write6(evse, 1004, 8)) == 3


def test_self_test_opens_the_relay_for_its_duration():
    clock = task.Clock()
    evse = SimEvse("s1", clock=clock, selftest_s=30)
    SimCar("c", soc=0.2).plug(evse)
    write6(evse, 1004, 2)
    assert regs(evse, 1004) == [2] and regs(evse, 1007)[0] & 0b10001 == 0b10000
    clock.advance(30)
    assert regs(evse, 1004) == [0] and regs(evse, 1007) == [1]


def test_faults_report_state_5_and_rcd_clears_by_command(evse):
    car = SimCar("c", soc=0.2)
    car.plug(evse)
    evse.inject_charge_fault("rcd")
    assert regs(evse, 1002) == [5] and regs(evse, 1007) == [1 << 5] and car.current_A == 0
    write6(evse, 1004, 4)
    assert regs(evse, 1002) == [3]
    evse.inject_charge_fault("diode")
    assert regs(evse, 1007) == [1 << 1]
    car.unplug()
    car.plug(evse)
    assert regs(evse, 1002) == [3]


def test_ventilation_needs_bit3(evse):
    car = SimCar("c", soc=0.2, needs_ventilation=True)
    car.plug(evse)
    assert regs(evse, 1002) == [4] and regs(evse, 1007) == [1 << 2] and car.current_A == 0
    write6(evse, 2005, 1 << 3)
    assert regs(evse, 1007) == [1] and car.current_A == 16


def test_power_cycle_restores_the_default_current(evse):
    write6(evse, 1000, 0)
    write6(evse, 2000, 6)
    evse.power_cycle()
    assert regs(evse, 1000) == [6]


def test_evse_answers_on_the_rs485_bus():
    clock = task.Clock()
    bus = SimRs485Bus(clock, [SimEvse("s1", unit=3, default_current_A=0)])
    out = []
    bus.attach(out.append).feed(rtu_frame(3, bytes([0x10, 0x03, 0xE8, 0, 1, 2, 0, 13])))
    assert out == [rtu_frame(3, bytes([0x10, 0x03, 0xE8, 0, 1]))]
    out.clear()
    bus.attach(out.append).feed(rtu_frame(3, bytes([0x03, 0x03, 0xE8, 0, 2])))
    assert out == [rtu_frame(3, bytes([0x03, 4, 0, 13, 0, 13]))]
    out.clear()
    bus.attach(out.append).feed(rtu_frame(3, bytes([0x06, 0x03, 0xE8, 0, 3])))
    assert out == [rtu_frame(3, bytes([0x86, 3]))]
