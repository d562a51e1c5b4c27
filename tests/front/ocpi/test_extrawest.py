"""Against an eMSP that is not EVC's code, in a separate process: extrawest-ocpi (FastAPI, pydantic 1) in a venv of
its own, with the glue in xw_emsp.py. Registration, the Location, a roaming card authorized in real time, the
Session and its CDR, in 2.2.1 and 2.1.1. extrawest is lax (it lowercases ids, accepts what EVC's rules refuse), so
what it received is checked here with EVC's object rules too.

The venv is built once per machine (extrawest-ocpi and uvicorn from PyPI) at $EVC_EMSP_VENV, default
~/.cache/evc/emsp-venv; where it cannot be built (no registry), the tests are skipped and say so.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import defer

from evc.etcdserver import free_port
from evc.front.ocpi.objects import errors_of
from evc.testing import wait_for
from ocpi_rig import Rig

HERE = Path(__file__).parent
VENV = Path(os.environ.get("EVC_EMSP_VENV") or Path.home() / ".cache" / "evc" / "emsp-venv")
PACKAGES = ["extrawest-ocpi==2025.7.16", "uvicorn"]


def emsp_python() -> Path:
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    if marker.exists() and python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=120)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True, capture_output=True,
                       timeout=300)
    except (subprocess.SubprocessError, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        why = f"the extrawest-ocpi venv could not be built at {VENV}: {e} {detail[-300:]!r}"
        if os.environ.get("EVC_EMSP_VENV"):
            pytest.fail(why + " (`make emsp` builds it; `make test` sets EVC_EMSP_VENV)")
        pytest.skip(why)
    marker.write_text(" ".join(PACKAGES))
    return python


class Extrawest:
    def __init__(self, tmp_path):
        self.port = free_port()
        self.token_a = "XW-TOKEN-A-0123456789"
        self.record = tmp_path / "extrawest.jsonl"
        self.proc = None

    @property
    def versions_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ocpi/versions"

    def start(self):
        python = emsp_python()
        self.proc = subprocess.Popen([str(python), str(HERE / "xw_emsp.py"), "--port", str(self.port), "--record",
                                      str(self.record), "--token-a", self.token_a],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    async def up(self):
        async def answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"extrawest exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                r = await treq.get(self.versions_url, persistent=False)
                await r.content()
                return True
            except Exception:
                return False
        await wait_for(answers, 30, "extrawest listening")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def lines(self, kind=None, module=None) -> list[dict]:
        if not self.record.exists():
            return []
        out = []
        for line in self.record.read_text().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if (kind is None or doc.get("kind") == kind) and (module is None or doc.get("module") == module):
                out.append(doc)
        return out


@pytest.fixture
def xw(tmp_path):
    made = Extrawest(tmp_path).start()
    yield made
    made.stop()


@pytest.fixture
def rig(etcd_session, etcd_root):
    made = Rig(etcd_session.url, etcd_root)
    yield made
    pytest_twisted.blockon(defer.ensureDeferred(made.stop()))


async def _drive(rig, xw, version):
    await xw.up()
    s1 = await rig.site.charger("s1", meter_Wh=2000.0)
    # A tariff: its id goes into the connectors (extrawest wants a 2.1.1 connector's tariff_id, which OCPI makes
    # optional).
    await rig.start_front(versions_url=xw.versions_url, token_a=xw.token_a, version=version,
                          tariff={"price_per_kWh": 0.3})
    creds = await rig.registered(15)
    assert creds.version == version
    reg = xw.lines("registered")
    assert len(reg) == 1 and reg[0]["credentials"]["token"] == creds.token_b and creds.token_c == reg[0]["token_c"]
    await wait_for(lambda: xw.lines(module="locations"), 10, "the Location at extrawest")
    await rig.delivered()
    # A roaming card, authorized in real time by extrawest, starts a session; it charges 6.4 kWh.
    s1.plug()
    from evc.auth import authorize
    result = await defer.ensureDeferred(authorize(rig.site.ctx("charger", "s1"), "XW0001", "s1"))
    assert result.accepted, result
    s1.authorize("XW0001")
    sid = s1.sessions.session.id
    s1.charge(16.0, 6400)
    s1.unplug()
    await wait_for(lambda: xw.lines(module="cdrs"), 10, "the CDR at extrawest")
    await rig.delivered()
    assert rig.state.values.get("last_given_up") is None, rig.state.values.get("last_given_up")
    return sid


@pytest_twisted.ensureDeferred
async def test_against_extrawest_in_2_2_1(rig, xw):
    sid = await _drive(rig, xw, "2.2.1")
    assert xw.lines("authorize")[0]["data"]["location_reference"]["location_id"].upper() == "SITE1"
    sessions = [l["data"] for l in xw.lines(module="sessions")]
    assert sessions and errors_of("Session", {**sessions[0], **rig.front.roaming[sid]["doc"]}, "2.2.1") == []
    cdr = rig.front.roaming[sid]["cdr"]
    assert errors_of("CDR", cdr, "2.2.1") == [] and cdr["total_energy"] == 6.4
    received = xw.lines("create", "cdrs")[0]["data"]
    assert received["total_energy"] == 6.4 and received["id"].upper() == sid.upper()
    assert rig.front.roaming[sid]["token"]["contract_id"].upper() == "NL-XWE-XW0001"     # it lowercases CiStrings


@pytest_twisted.ensureDeferred
async def test_against_extrawest_in_2_1_1(rig, xw):
    sid = await _drive(rig, xw, "2.1.1")
    cdr = rig.front.roaming[sid]["cdr"]
    assert errors_of("CDR", cdr, "2.1.1") == [] and cdr["total_energy"] == 6.4 and "stop_date_time" in cdr
    received = xw.lines("create", "cdrs")[0]["data"]
    assert received["total_energy"] == 6.4


@pytest_twisted.ensureDeferred
async def test_a_command_result_reaches_extrawest(rig, xw):
    """START_SESSION sent with the token B extrawest got; its CommandResult goes to extrawest's commands module."""
    await xw.up()
    s1 = await rig.site.charger("s1")
    await rig.start_front(versions_url=xw.versions_url, token_a=xw.token_a)
    creds = await rig.registered(15)
    reg = xw.lines("registered")[0]
    commands = creds.endpoints["commands"]          # what extrawest announced
    s1.plug()
    body = {"response_url": commands.rstrip("/") + "/CMD-1",
            "token": {"country_code": "NL", "party_id": "XWE", "uid": "XWAPP1", "type": "APP_USER",
                      "contract_id": "NL-XWE-APP1", "issuer": "extrawest", "valid": True, "whitelist": "NEVER",
                      "last_updated": "2026-01-01T00:00:00Z"},
            "location_id": "SITE1", "evse_uid": "s1"}
    code, _, doc = await rig.emsp.call_evc("POST", f"{rig.evc}/2.2.1/commands/START_SESSION", body,
                                           token=reg["credentials"]["token"])
    assert code == 200 and doc["data"]["result"] == "ACCEPTED"
    await wait_for(lambda: xw.lines("update", "commands"), 10, "the CommandResult at extrawest")
    assert xw.lines("update", "commands")[0]["data"]["result"] == "ACCEPTED"
    assert xw.lines("update", "commands")[0]["id"] == "CMD-1"
    await wait_for(lambda: xw.lines(module="sessions"), 10, "the Session at extrawest")
    assert s1.sessions.session.authorized and creds.token_b == reg["credentials"]["token"]
