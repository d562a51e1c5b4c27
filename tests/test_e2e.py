"""`twistd evc` end to end: a real etcd, a simulated SDM630 over Modbus TCP, EVC as its own process."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from evc.sim.modbus import listen_tcp
from evc.sim.sdm import SimSdm630
from evc.store.etcd import EtcdStore
from evc.testing import wait_for

TWISTD = str(Path(sys.executable).with_name("twistd"))


class Evc:
    """`twistd -n evc` as a child process, started from a folder outside the repo (the plugin must still be found)."""

    def __init__(self, etcd_url, root, tmp_path):
        self.log = tmp_path / "twistd.log"
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "evc", "--etcd", etcd_url, "--root", root, "--tick", "0.1",
             "--lease-ttl", "5"],
            cwd=tmp_path, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k not in ("EVC_ROOT", "EVC_ETCD_URL")})

    def text(self):
        return self.log.read_text(errors="replace")

    def stop(self):
        """SIGTERM; True when EVC shut down cleanly (twistd re-raises the signal after a clean shutdown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode in (0, -signal.SIGTERM) and "Server Shut Down." in self.text()


@pytest.fixture
def meter_sim():
    sim = SimSdm630(unit=1)
    sim.set(V=(230, 231, 229), A=(10, 12, 8), energy_Wh=12345)
    port = listen_tcp(reactor, [sim, SimSdm630(unit=2)], 0)     # unit 2: a second meter behind the same gateway
    yield sim, port.getHost().port
    port.stopListening()


class Client:
    def __init__(self, url, root):
        self.store = EtcdStore(url, reactor)
        self.root = root

    async def put(self, key, value):
        await self.store.put(f"{self.root}/{key}", value.encode())

    async def get(self, key):
        r = await self.store.range(f"{self.root}/{key}")
        return r.kvs[0].value.decode() if r.kvs else None

    async def keys(self, prefix):
        r = await self.store.range(f"{self.root}/{prefix}", prefix=True)
        return {kv.key[len(self.root) + 1:]: kv.value.decode() for kv in r.kvs}


async def configure_meter(c, port, name="m1", seed_form=True, bus_addr=1):
    await c.put(f"meter/{name}/{'config/' if seed_form else ''}type", "SDM630")
    await c.put(f"meter/{name}/config/bus", f"127.0.0.1:{port}")
    await c.put(f"meter/{name}/config/bus_addr", str(bus_addr))
    await c.put(f"meter/{name}/config/interval_s", "0.2")


@pytest_twisted.ensureDeferred
async def test_meter_state_appears_live_and_config_errors_name_the_leaf(etcd_session, etcd_root, meter_sim, tmp_path):
    sim, port = meter_sim
    c = Client(etcd_session.url, etcd_root)
    await configure_meter(c, port)
    await c.put("charger/s1/type", "EVCC_nosuch")
    evc = Evc(etcd_session.url, etcd_root, tmp_path)
    try:
        await wait_for(lambda: c.get("meter/m1/state/A/L2"), 20, "meter state in etcd")
        assert float(await c.get("meter/m1/state/A/L2")) == pytest.approx(12, abs=0.05)
        assert await c.get("meter/m1/state/energy_Wh") == "12345"
        assert await c.get("meter/m1/state/stale") == "false"
        assert "unknown charger type 'EVCC_nosuch'" in await c.get("charger/s1/state/error")

        sim.set(A=(20, 12, 8))                          # the site changes: etcd follows
        await wait_for(lambda: _near(c, "meter/m1/state/A/L1", 20), 10, "new current in etcd")

        await c.put("meter/m1/config/bus_addr", "300")  # invalid: the last good config keeps running
        await wait_for(lambda: c.get("meter/m1/state/error"), 10, "state/error")
        assert (await c.get("meter/m1/state/error")).startswith("config/bus_addr: 300 is greater than the maximum")
        sim.set(A=(7, 12, 8))
        await wait_for(lambda: _near(c, "meter/m1/state/A/L1", 7), 10, "polling continues with the last good config")

        await c.put("meter/m1/config/bus_addr", "1")    # fixed: the error clears
        await wait_for(lambda: _is_none(c, "meter/m1/state/error"), 10, "error cleared")
    finally:
        assert evc.stop(), evc.text()
    # The state was leased: a clean stop takes it away, config stays.
    await wait_for(lambda: _no_state(c), 10, "state gone after stop")
    assert await c.get("meter/m1/config/bus") == f"127.0.0.1:{port}"
    await c.store.close()


@pytest_twisted.ensureDeferred
async def test_evc_waits_for_etcd_at_start_and_runs_once_it_comes(etcd_own, meter_sim, tmp_path):
    sim, port = meter_sim
    root = "/evc/late"
    c = Client(etcd_own.url, root)
    await configure_meter(c, port)
    etcd_own.stop()
    evc = Evc(etcd_own.url, root, tmp_path)
    try:
        await wait_for(lambda: "unreachable" in evc.text(), 20, "EVC logging that etcd is unreachable")
        assert evc.proc.poll() is None
        etcd_own.start()
        await wait_for(lambda: c.get("meter/m1/state/W_total"), 20, "meter state once etcd came")
    finally:
        assert evc.stop(), evc.text()
    await c.store.close()


@pytest_twisted.ensureDeferred
async def test_etcd_killed_and_restarted_under_a_running_evc(etcd_own, meter_sim, tmp_path):
    sim, port = meter_sim
    root = "/evc/restart"
    c = Client(etcd_own.url, root)
    await configure_meter(c, port)
    evc = Evc(etcd_own.url, root, tmp_path)
    try:
        await wait_for(lambda: c.get("meter/m1/state/W_total"), 20, "meter state")
        etcd_own.kill()
        sim.set(A=(25, 12, 8))                           # happens while etcd is away
        await wait_for(lambda: "not written to etcd" in evc.text(), 20, "EVC noticing etcd is gone")
        assert evc.proc.poll() is None
        etcd_own.start()
        # State resumes with what the meter measured meanwhile, and later config changes apply.
        await wait_for(lambda: _near(c, "meter/m1/state/A/L1", 25), 30, "state resumed after etcd restart")
        await configure_meter(c, port, name="m2", seed_form=False, bus_addr=2)   # one address, one meter
        await wait_for(lambda: c.get("meter/m2/state/W_total"), 20, "a meter added after the restart runs")
    finally:
        assert evc.stop(), evc.text()
    await c.store.close()


async def _near(c, key, want, tol=0.1):
    v = await c.get(key)
    return v is not None and abs(float(v) - want) <= tol


async def _is_none(c, key):
    return await c.get(key) is None


async def _no_state(c):
    return not any("/state/" in k for k in await c.keys(""))
