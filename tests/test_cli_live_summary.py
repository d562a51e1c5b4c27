"""`evc status`'s LIVE column for chargers and control: what an operator watching the demo looks at."""
from evc import cli


def test_a_charger_shows_its_car_setpoint_draw_and_session():
    inst = cli.InstanceStatus("charger", "s1", state={
        "status": "running", "vehicle": "charging", "online": True, "mode": "ON", "setpoint_A": 20.0,
        "actual_A/L1": 19.96, "actual_A/L2": 20.0, "actual_A/L3": 20.04, "session/id": "20250301T120000000Z-abc",
        "session/state": "charging", "session/energy_Wh": 1234})
    assert cli.live_summary(inst) == "charging, setpoint 20 A, drawing 20.0/20.0/20.0 A, session charging 1234 Wh"


def test_an_offline_charger_in_mode_off_says_both():
    inst = cli.InstanceStatus("charger", "s1", state={"vehicle": "plugged", "online": False, "mode": "OFF",
                                                      "setpoint_A": 0})
    assert cli.live_summary(inst) == "offline (last: plugged), mode OFF, setpoint 0 A"


def test_control_shows_its_mode_headroom_and_every_allocation_with_its_reason():
    inst = cli.InstanceStatus("control", "master", state={
        "status": "running", "mode": "normal", "headroom/L1": 1.0, "headroom/L2": 2.5, "headroom/L3": 2.0,
        "base/L1": 4.0, "allocations/s1/A": 20, "allocations/s1/reason": "share of L1",
        "allocations/s2/A": 0, "allocations/s2/reason": "no car"})
    assert cli.live_summary(inst) == ("mode normal, headroom 1.0/2.5/2.0 A, s1 20 A (share of L1), "
                                      "s2 0 A (no car)")


def test_a_charger_without_state_yet_shows_nothing():
    assert cli.live_summary(cli.InstanceStatus("charger", "s1", state={"status": "running"})) == ""
