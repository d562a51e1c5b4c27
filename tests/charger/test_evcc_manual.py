"""charger/EVCC_manual against the simulated EVSE on one task.Clock: start-up, polls, setpoints, faults, auth."""
import dataclasses

import pytest
from zope.interface import implementer

from evc.bus.errors import ModbusTimeout
from evc.charger.base import ChargerStatus, ICharger
from evc.charger.evcc_manual import EvccManual, EvccManualConfig
from evc.errors import ConfigError
from evc.meter.base import IMeter, Reading
from evc.sim.evse import (CFG_ALLOW_STATE_D, CFG_DISABLE_AFTER_CHARGE, CFG_DISABLED, CFG_PRECISE, REG_CONFIG_BITS,
                          SimEvse)

from evse_rig import Rig

FC03 = 3


def test_is_an_icharger():
    assert ICharger.implementedBy(EvccManual)


# -- start-up ------------------------------------------------------------------------------------------

def test_start_reads_firmware_and_config_once_and_clears_the_disable_bits_once():
    evse = SimEvse("s1", unit=1, config_bits=CFG_DISABLED | CFG_DISABLE_AFTER_CHARGE | CFG_ALLOW_STATE_D,
                   firmware=20, default_current_A=0)
    rig = Rig(evse=evse).start(run_s=5)
    assert evse.read_register(REG_CONFIG_BITS) == CFG_ALLOW_STATE_D
    assert rig.spy.writes_to(REG_CONFIG_BITS) == [(CFG_ALLOW_STATE_D,)]
    assert rig.spy.reads_of(1005, 1) == 1 and rig.spy.reads_of(2000, 18) == 1
    assert rig.spy.reads_of(1000, 8) >= 8, "then 1000x8 every interval"
    assert rig.charger.firmware == 20 and rig.state["firmware"] == 20
    assert rig.status.online and rig.state["online"] is True


def test_start_is_retried_until_the_evse_answers():
    rig = Rig()
    rig.sim.mute(1)
    rig.start(run_s=3)
    assert not rig.status.online and rig.state["online"] is False
    rig.sim.mute(1, False)
    rig.run_until(lambda: rig.status.online, what="the first good poll after the backoff")
    assert rig.spy.reads_of(2000, 18) >= 1 and rig.charger.firmware == 18


def test_precise_boards_count_hundredths_of_an_amp():
    rig = Rig(evse=SimEvse("s1", unit=1, config_bits=CFG_PRECISE, default_current_A=0)).start()
    assert rig.charger.precise
    d = rig.apply(10)
    rig.run(1)
    assert rig.spy.writes_to(1000)[-1] == (1000,) and rig.evse.set_current_A == 10
    assert rig.outcome(d) == 10 and rig.status.setpoint_A == 10 and rig.state["setpoint_A"] == 10


def test_mode_off_pauses_at_once_and_never_charges():
    rig = Rig(mode="OFF")                       # the board starts at 32 A (register 2000)
    rig.charger.startService()
    assert rig.spy.requests[0] == (16, 1000, (0,)), "the pause is the first thing on the wire"
    rig.run(1)
    assert rig.evse.set_current_A == 0 and rig.status.setpoint_A == 0
    d = rig.apply(16)
    rig.run(1)
    assert rig.evse.set_current_A == 0 and rig.outcome(d) == 0
    rig.car.plug(rig.evse)
    rig.run(1)
    assert rig.status.vehicle == "plugged" and not rig.charger.wants_current()


def test_a_board_above_A_max_is_lowered_before_control_speaks():
    rig = Rig(A_max=16).start()                 # power-up default 32 A
    assert rig.evse.set_current_A == 16 and rig.status.setpoint_A == 16


def test_a_board_within_A_max_is_left_alone_until_control_speaks():
    rig = Rig(evse=SimEvse("s1", unit=1, default_current_A=10)).start(run_s=3)
    assert rig.spy.writes_to(1000) == [] and rig.status.setpoint_A == 10


# -- polls ---------------------------------------------------------------------------------------------

def test_vehicle_states_reach_status_subscribers_events_and_state():
    rig = Rig(evse=SimEvse("s1", unit=1, default_current_A=0)).start()
    assert rig.status.vehicle == "none" and rig.state["vehicle"] == "none"
    rig.car.charge_enabled = False
    rig.car.plug(rig.evse)
    rig.run(1)
    assert rig.status.vehicle == "plugged" and rig.charger.wants_current()
    rig.car.charge_enabled = True
    rig.apply(16)
    rig.run(1)
    assert rig.status.vehicle == "charging" and rig.status.offered_A == 16 and rig.state["offered_A"] == 16
    rig.car.unplug()
    rig.run(1)
    vehicles = [s.vehicle for s in rig.statuses]
    assert [v for i, v in enumerate(vehicles) if i == 0 or v != vehicles[i - 1]] == [
        "none", "plugged", "charging", "none"]
    assert [e for _, e in rig.published] == rig.statuses
    assert all(topic == ("charger", "s1") for topic, _ in rig.published)
    assert all(isinstance(e, ChargerStatus) for _, e in rig.published)


def test_status_is_published_on_changes_only():
    rig = Rig(evse=SimEvse("s1", unit=1, default_current_A=0)).start()
    n = len(rig.statuses)
    rig.run(5)
    assert len(rig.statuses) == n, "ten more polls with nothing new publish nothing"


def test_cable_limit_and_board_minimum_bound_the_setpoint():
    rig = Rig(A_max=20, evse=SimEvse("s1", unit=1, pp_limit_A=13, min_current_A=8, default_current_A=0)).start()
    assert rig.status.limit_A == 13 and rig.state["cable_A"] == 13
    for asked, held in ((32, 13), (10, 10), (7, 0), (5, 0), (0, 0)):
        d = rig.apply(asked)
        rig.run(1)
        assert rig.evse.set_current_A == held and rig.outcome(d) == held, f"apply({asked})"
    rig.evse.pp_limit_A = 32
    rig.apply(32)
    rig.run(1)
    assert rig.evse.set_current_A == 20, "A_max caps it"
    with pytest.raises(ValueError):
        rig.charger.apply(-1)


@pytest.mark.parametrize("fault, words", [("rcd", "RCD"), ("diode", "diode check")])
def test_evse_faults_are_reported_and_stop_the_demand(fault, words):
    rig = Rig(evse=SimEvse("s1", unit=1, default_current_A=0)).start()
    rig.car.plug(rig.evse)
    rig.run(1)
    assert rig.charger.wants_current()
    rig.evse.inject_charge_fault(fault)
    rig.run(1)
    assert rig.status.vehicle == "fault" and words in rig.status.fault and words in rig.state["fault"]
    assert not rig.charger.wants_current()
    rig.evse.clear_charge_fault()
    rig.run(1)
    assert rig.status.fault == "" and "fault" not in rig.state and rig.charger.wants_current()


def test_an_evse_that_stops_answering_goes_offline_and_comes_back():
    rig = Rig(evse=SimEvse("s1", unit=1, default_current_A=0)).start()
    rig.apply(16)
    rig.run(1)
    rig.sim.mute(1)
    rig.run(3)
    assert not rig.status.online and rig.state["online"] is False
    assert rig.status.setpoint_A == 16, "its last setpoint still counts while it does not answer"
    assert not rig.charger.wants_current()
    rig.sim.mute(1, False)
    rig.run_until(lambda: rig.status.online, what="online again")
    assert rig.state["online"] is True


def test_a_board_that_changed_its_setpoint_by_itself_gets_the_newest_value_again():
    rig = Rig(check_invariant=False).start()       # the board's power-up current (2000) is 32 A
    rig.apply(10)
    rig.run(1)
    rig.evse.power_cycle()                        # 1000 is 32 again (register 2000)
    assert rig.evse.set_current_A == 32
    rig.run(2)
    assert rig.evse.set_current_A == 10 and rig.status.setpoint_A == 10


# -- writes that fail ------------------------------------------------------------------------------------

def test_a_lost_lowering_is_retried_and_never_reported_before_the_board_confirms_it():
    rig = Rig(evse=SimEvse("s1", unit=1, default_current_A=0)).start()
    rig.apply(16)
    rig.run(1)
    assert rig.evse.set_current_A == 16
    rig.spy.drop_writes = 2                       # the write and the bus's own retry are lost
    d = rig.apply(8)
    rig.run(0.3)
    assert isinstance(rig.outcome(d), ModbusTimeout), "the caller hears of the failure"
    assert rig.evse.set_current_A == 16 and rig.status.setpoint_A == 16
    assert "writing 8 A failed" in rig.state["write_error"]
    rig.run_until(lambda: rig.evse.set_current_A == 8, what="the retried write to land")
    rig.run(1)
    assert rig.status.setpoint_A == 8 and rig.state["setpoint_A"] == 8 and "write_error" not in rig.state
    assert all(s.setpoint_A >= held for s, held in rig.seen), "no status may claim less than the board held"
    first_8 = next(i for i, (s, _) in enumerate(rig.seen) if s.setpoint_A == 8)
    assert rig.seen[first_8][1] == 8, "8 A is claimed only once the board holds it"
    assert rig.spy.writes_to(1000)[-3:] == [(8,), (8,), (8,)]


def test_a_newer_value_replaces_the_one_that_failed():
    rig = Rig(evse=SimEvse("s1", unit=1, default_current_A=0)).start()
    rig.apply(16)
    rig.run(1)
    rig.spy.drop_writes = 2
    rig.apply(10)
    rig.run(0.3)
    rig.apply(6)
    rig.run(3)
    assert rig.evse.set_current_A == 6 and rig.status.setpoint_A == 6
    writes = rig.spy.writes_to(1000)
    assert (10,) not in writes[writes.index((6,)):], "once 6 A is asked, 10 A is never written again"


def test_a_raise_counts_at_once_so_control_never_undercounts():
    rig = Rig(evse=SimEvse("s1", unit=1, default_current_A=0)).start()
    rig.apply(6)
    rig.run(1)
    rig.spy.drop_writes = 2                       # the raise may or may not have landed: nobody knows
    rig.apply(16)
    assert rig.status.setpoint_A == 16
    rig.run(0.3)
    assert rig.evse.set_current_A == 6 and rig.status.setpoint_A == 16
    rig.run_until(lambda: rig.evse.set_current_A == 16, what="the raise to land")


def test_a_value_the_board_refuses_becomes_a_pause():
    rig = Rig(evse=SimEvse("s1", unit=1, max_current_A=16, default_current_A=10)).start()
    d = rig.apply(20)
    rig.run(1)
    assert rig.evse.set_current_A == 0 and rig.status.setpoint_A == 0
    assert "refused 20 A" in rig.state["write_error"]
    assert rig.outcome(d).code == 3
    d = rig.apply(16)
    rig.run(1)
    assert rig.evse.set_current_A == 16 and rig.outcome(d) == 16 and "write_error" not in rig.state


def test_stop_cancels_waiting_applies_and_leaves_the_board_as_it_is():
    rig = Rig(evse=SimEvse("s1", unit=1, default_current_A=0))
    rig.charger.startService()
    d = rig.apply(16)                     # before the config is known: it waits
    rig.charger.stopService()
    assert rig.outcome(d).__class__.__name__ == "CancelledError"
    rig.run(2)
    assert rig.evse.set_current_A == 0
    assert rig.outcome(rig.apply(10)).__class__.__name__ == "CancelledError", "a stopped charger takes nothing"


# -- authorization ---------------------------------------------------------------------------------------

def test_token_auth_charges_only_after_a_token_and_until_the_car_leaves():
    rig = Rig(auth="token", evse=SimEvse("s1", unit=1, default_current_A=0)).start()
    assert rig.state["authorized"] is False
    rig.car.plug(rig.evse)
    rig.apply(16)
    rig.run(1)
    assert rig.evse.set_current_A == 0 and not rig.charger.wants_current()
    rig.charger.authorize("04A1B2C3")
    rig.run(1)
    assert rig.evse.set_current_A == 16 and rig.charger.wants_current() and rig.state["authorized"] is True
    assert rig.auth_events[-1] == (("authorization", "s1"), {"authorized": True, "id_tag": "04A1B2C3"})
    rig.car.unplug()
    rig.run(1)
    assert not rig.charger.authorized and rig.evse.set_current_A == 0 and rig.state["authorized"] is False
    rig.car.plug(rig.evse)
    rig.charger.authorize("04A1B2C3")
    rig.run(1)
    assert rig.evse.set_current_A == 16
    rig.charger.deauthorize()
    rig.run(1)
    assert rig.evse.set_current_A == 0 and rig.auth_events[-1][1] == {"authorized": False, "id_tag": None}


# -- the charger's meter ----------------------------------------------------------------------------------

@implementer(IMeter)
class FakeMeter:
    def __init__(self):
        self.reading = Reading()
        self.callbacks = []

    def subscribe(self, callback):
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def set(self, **values):
        self.reading = dataclasses.replace(self.reading, **values)
        for cb in list(self.callbacks):
            cb(self.reading)


def test_actual_current_comes_from_the_meter_on_the_chargers_phases():
    meter = FakeMeter()
    rig = Rig(meter_instance=meter, meter="m1", phases=1, phase_map=["L2"]).start()
    assert rig.status.actual_A == (None,), "a stale meter tells nothing"
    meter.set(A=(5.0, 6.25, 7.0), stale=False, updated=1.0)
    assert rig.status.actual_A == (6.25,) and rig.state["actual_A/L2"] == 6.25
    assert rig.published[-1][1].actual_A == (6.25,)
    meter.set(stale=True)
    assert rig.status.actual_A == (None,) and "actual_A/L2" not in rig.state
    rig.charger.stopService()
    assert meter.callbacks == []


def test_without_a_meter_the_draw_is_unknown():
    rig = Rig().start()
    assert rig.status.actual_A == (None, None, None)


# -- config ----------------------------------------------------------------------------------------------

def test_config_defaults_and_phase_map():
    assert EvccManualConfig(conn="c", A_max=16).phase_map == ("L1", "L2", "L3")
    assert EvccManualConfig(conn="c", A_max=16, phases=1).phase_map == ("L1",)
    assert EvccManualConfig(conn="c", A_max=16, phases=3, phase_map=["L2", "L3", "L1"]).phase_map == ("L2", "L3", "L1")
    with pytest.raises(ConfigError, match=r"^config/phase_map: 1 entries for 3 phase\(s\)$"):
        EvccManualConfig(conn="c", A_max=16, phase_map=["L1"])
    with pytest.raises(ConfigError, match=r"^config/phase_map: "):
        EvccManualConfig(conn="c", A_max=16, phases=1, phase_map=["L4"])
