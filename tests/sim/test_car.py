"""The simulated car: draw limited by offer, own maximum and taper; phases; full battery; clock-driven steps."""
import pytest
from pymodbus.pdu.register_message import WriteSingleRegisterRequest
from twisted.internet import task

from evc.sim.car import SimCar
from evc.sim.evse import SimEvse


def plugged(car_kw=None, evse_kw=None, offered_A=16):
    evse = SimEvse("s1", default_current_A=offered_A, **(evse_kw or {}))
    car = SimCar("c", **(car_kw or {}))
    car.plug(evse)
    return car, evse


def test_draw_is_the_least_of_offer_and_car_maximum():
    car, evse = plugged({"max_current_A": 11, "soc": 0.3}, offered_A=16)
    assert car.draw_A == (11.0, 11.0, 11.0)
    evse.handle(WriteSingleRegisterRequest(address=1000, registers=[8], dev_id=1))
    assert car.draw_A == (8.0, 8.0, 8.0)


def test_one_phase_car_draws_on_l1_only():
    car, _ = plugged({"phases": 1, "soc": 0.3})
    assert car.draw_A == (16.0, 0.0, 0.0)


def test_three_phase_car_on_a_one_phase_charger_draws_one_phase():
    car, _ = plugged({"phases": 3, "soc": 0.3}, {"phases": 1})
    assert car.draw_A == (16.0, 0.0, 0.0)


def test_unplugged_car_draws_nothing():
    car = SimCar("c")
    assert car.draw_A == (0.0, 0.0, 0.0) and not car.wants_charge


def test_taper_reduces_the_draw_near_full():
    car, _ = plugged({"max_current_A": 16, "soc": 0.8, "taper_start_soc": 0.8})
    assert car.current_A == 16
    car.soc = 0.9
    assert car.current_A == pytest.approx(8.0)
    car.soc = 0.95
    assert car.current_A == pytest.approx(4.0)
    car.soc = 0.9999
    assert car.current_A == pytest.approx(car.taper_floor_A)


def test_charging_fills_the_battery_by_power_times_time():
    car, _ = plugged({"capacity_Wh": 100_000, "soc": 0.1, "voltage_V": 230})
    car.step(3600)
    assert car.session_Wh == pytest.approx(3 * 16 * 230)
    assert car.energy_Wh == pytest.approx(10_000 + 3 * 16 * 230)


def test_battery_stops_at_full_and_the_car_stops_asking():
    car, evse = plugged({"capacity_Wh": 1000, "soc": 0.95, "taper_floor_A": 1})
    for _ in range(3600):
        car.step(1)
    assert car.full and car.soc == 1.0
    assert car.draw_A == (0.0, 0.0, 0.0)
    assert not car.wants_charge and evse.vehicle_state == 2


def test_driver_can_hold_charging_while_plugged():
    car, evse = plugged({"soc": 0.3})
    car.charge_enabled = False
    assert car.current_A == 0 and evse.vehicle_state == 2


def test_run_steps_on_the_injected_clock():
    clock = task.Clock()
    car, _ = plugged({"capacity_Wh": 100_000, "soc": 0.1, "phases": 1})
    car.run(clock, interval_s=10)
    clock.advance(10)
    clock.advance(10)
    assert car.session_Wh == pytest.approx(16 * 230 * 20 / 3600)
    car.stop()
    clock.advance(100)
    assert car.session_Wh == pytest.approx(16 * 230 * 20 / 3600)


def test_soc_outside_0_to_1_is_refused():
    with pytest.raises(ValueError, match="fraction"):
        SimCar("c", soc=50)
