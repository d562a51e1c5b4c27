"""`python -m evc.sim.rfid`: a simulated reader someone can run by hand, driven by commands on stdin."""
import json
import os
import subprocess
import sys
import socket

import pytest

from evc.reader import rdm6300
from evc.sim.rfid import SimLineReader, SimPn532, SimRdm6300, run_command


@pytest.mark.parametrize("cls", [SimRdm6300, SimLineReader, SimPn532])
def test_control_commands(cls):
    from twisted.internet import task
    sim = cls(task.Clock())
    assert run_command(sim, "present 1C78F2BF00" if cls is SimRdm6300 else "present 1C78F2BF")["ok"]
    assert run_command(sim, "status")["card"] is not None
    assert run_command(sim, "remove") == {"ok": True}
    assert run_command(sim, "bogus")["ok"] is False
    assert run_command(sim, "present")["ok"] is False


def test_the_rdm6300_simulator_process_sends_frames_over_tcp():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "evc.sim.rfid", "RDM6300", "--tcp-port", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            text=True)
    try:
        endpoints = json.loads(proc.stdout.readline())
        host, port = endpoints["tcp"].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            proc.stdin.write("present 6F007B3972\n")
            proc.stdin.flush()
            assert json.loads(proc.stdout.readline()) == {"ok": True}
            s.settimeout(10)
            data = b""
            while data.count(b"\x03") < 2:
                data += s.recv(100)
        assert rdm6300.encode(bytes.fromhex("6F007B3972")) in data
    finally:
        proc.terminate()
        proc.wait(10)
