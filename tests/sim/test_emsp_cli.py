"""`python -m evc.sim.emsp`, the demo's eMSP, as a process: it listens, answers its versions with token A, refuses
other tokens, and authorizes the cards given with --allow."""
import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from evc.front.ocpi.objects import errors_of


@pytest.fixture
def emsp():
    proc = subprocess.Popen([sys.executable, "-m", "evc.sim.emsp", "--token-a", "DEMO-A", "--allow", "04a1b2c3dd"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()          # the process prints its port once it listens
    assert line.startswith("PORT "), proc.stderr.read()
    yield int(line.split()[1]), proc
    proc.kill()
    proc.wait(10)


def get(port, path, token):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": "Token " + base64.b64encode(token.encode()).decode()})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_demo_emsp_serves_its_versions_to_token_a_only(emsp):
    port, _ = emsp
    code, doc = get(port, "/ocpi/versions", "DEMO-A")
    assert code == 200 and doc["status_code"] == 1000
    assert [v["version"] for v in doc["data"]] == ["2.2.1", "2.1.1"]
    assert get(port, "/ocpi/versions", "WRONG")[0] == 401


def test_allowed_cards_have_a_valid_authorization_info():
    from evc.sim.emsp import allowed_token
    info = allowed_token("04A1B2C3DD")
    assert info["allowed"] == "ALLOWED" and errors_of("Token", info["token"], "2.2.1") == []
