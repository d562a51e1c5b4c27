"""A car plugged at a site with room charges at once and keeps charging, with control/builtin at its defaults.

The field report of issue "Field-ready" §4 on real components: `twistd -n evc` on a real etcd, an EVCC_manual EVSE
on a pty RS485 bus, the EVSE's own SDM630 and the grid's SDM630 on Modbus TCP, all simulated by SimSite in this
process. Every meter is polled at its default interval (1 s) at its own moment, so the grid meter sees the car
before the charger's own meter does. control/builtin keeps every default: interval_s 5, min_on_s/min_off_s 120,
ramp_s 5. A pause caused by the car's own start would lock it out for min_off_s: it must never happen.
"""
import pytest_twisted
from twisted.internet import reactor, task

from evc.sim.site import SimSite
from evc.testing import wait_for

from tests.test_e2e import Client, Evc

A_MAX = 25          # per phase at the connection
BASE_A = 4          # the site's other loads: 4 A + a 16 A car fit in 25 A


async def _configure(c, site, endpoints, **control):
    await c.put("conn/bus1/type", "rs485")
    await c.put("conn/bus1/config/local", endpoints["buses"]["bus1"]["tty"])
    await c.put("conn/bus1/config/baud", "9600")
    for name, port in (("grid", endpoints["meter"]["port"]), ("m1", endpoints["evse_meters"]["s1"]["port"])):
        await c.put(f"meter/{name}/type", "SDM630")
        await c.put(f"meter/{name}/config/bus", f"127.0.0.1:{port}")
        await c.put(f"meter/{name}/config/bus_addr", "1")
    await c.put("charger/s1/type", "EVCC_manual")
    for key, value in (("conn", "bus1"), ("conn_port", "1"), ("mode", "ON"), ("A_max", "16"), ("meter", "m1")):
        await c.put(f"charger/s1/config/{key}", value)
    await c.put("control/master/type", "builtin")
    for key, value in dict(meter="grid", A_max=str(A_MAX), **control).items():
        await c.put(f"control/master/config/{key}", value)


@pytest_twisted.ensureDeferred
async def test_a_car_plugged_at_a_site_with_room_charges_at_once_and_keeps_charging_at_the_defaults(
        etcd_session, etcd_root, tmp_path):
    site = SimSite(reactor, base_load_A=(BASE_A,) * 3, tick_s=0.1)
    site.add_bus("bus1", baud=9600, tty_link=True)
    evse = site.add_evse("s1", bus="bus1", unit=1, default_current_A=0)
    site.add_evse_meter("s1", unit=1, port=0)
    site.add_car("car1", max_current_A=16)
    endpoints = site.start(meter_port=0)
    c = Client(etcd_session.url, etcd_root)
    await _configure(c, site, endpoints)
    evc = Evc(etcd_session.url, etcd_root, tmp_path)
    offered = []                                        # (reactor time, the EVSE's offered current)
    watch = task.LoopingCall(lambda: offered.append((reactor.seconds(), evse.set_current_A)))
    try:
        await wait_for(lambda: c.get("meter/grid/state/A/L1"), 30, "the grid meter's first reading")
        await wait_for(lambda: c.get("charger/s1/state/online"), 30, "charger s1 online")
        watch.start(0.05)
        plugged_at = reactor.seconds()
        site.plug("car1", "s1")
        await wait_for(lambda: site.cars["car1"].current_A >= 6, 5 + 10, "the car drawing current")
        started_s = reactor.seconds() - plugged_at
        # It charges at once: within control's interval plus the polls that see the car.
        assert started_s <= 5 + 5, f"the car waited {started_s:.1f} s for current"
        # ... and keeps charging: three control intervals and the ramp of the meters behind it.
        start = reactor.seconds()
        await wait_for(lambda: reactor.seconds() - start > 20 or next(
            (t for t, a in offered if t > start and a == 0), None), 30, "20 s of charging")
        paused = [t - plugged_at for t, a in offered if t > start and a == 0]
        reason = await c.get("control/master/state/allocations/s1/reason")
        assert not paused, f"s1 paused {paused[0]:.1f} s after the car was plugged ({reason})"
        assert site.cars["car1"].current_A >= 6
        assert float(await c.get("control/master/state/allocations/s1/A")) >= 6
        assert "paused" not in (reason or ""), reason
        assert max(site.grid_current_A) <= A_MAX
    finally:
        if watch.running:
            watch.stop()
        assert evc.stop(), evc.text()[-4000:]
        await site.stop()
        await c.store.close()
