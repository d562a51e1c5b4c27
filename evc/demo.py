"""`make demo`: the seed's site and an OCPP charger sharing one fuse under `twistd -n evc`, with a scenario printed as it happens.

What runs: a throwaway etcd (unless EVC_ETCD_URL is set), the site simulator of examples/sim/seed-site.yaml (s1's
EVSE on an RS485 tunnel with a car plugged in, s1's own SDM630 = meter/m1, the grid SDM630 = meter/grid), a line
reader simulator as reader/r1 (evc.sim.rfid on a serial-over-TCP tunnel), the seed's configuration plus an OCPP
charger (examples/seed-site.yaml), `twistd -n evc`, and once EVC is up the OCPP 1.6J charge point simulator as
charger cp2. Then the scenario: switch s1 on live through etcd; its car charges;
a car plugs into cp2 and shows the demo's card (s1 and cp2 share the fuse); the base load rises (control lowers
both); it falls again (control raises both). The site keeps running until Ctrl-C.

Every child runs in a process group of its own; whatever ends the demo (Ctrl-C, SIGTERM, twistd exiting, an error)
stops twistd, the simulator and the throwaway etcd, and leaves nothing running.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from evc import cli
from evc.etcdserver import EtcdServer, free_port

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "seed-site.yaml"
SIM_CONFIG = REPO / "examples" / "sim" / "seed-site.yaml"
DEMO_ETCD_PORT = 23790
# The endpoints both files name (examples/seed-site.yaml and examples/sim/seed-site.yaml), and server/cs's.
OCPP_PORT = 19000
# reader/r1's simulator: a line reader (python -m evc.sim.rfid line) behind a serial-over-TCP tunnel.
READER_PORT = 15487
# The roaming network: a simulated eMSP (python -m evc.sim.emsp) and front/plugsurfing's own OCPI endpoints.
EMSP_PORT = 19100
OCPI_PORT = 19101
EMSP_TOKEN_A = "DEMO-EMSP-TOKEN-A"
PORTS = {15020: "meter/m1's bus", 15021: "meter/grid's bus", 15485: "conn/s123's remote",
         READER_PORT: "reader/r1's remote", OCPP_PORT: "server/cs's listen", EMSP_PORT: "the demo's eMSP",
         OCPI_PORT: "front/plugsurfing's listen"}
# The OCPP charger of examples/seed-site.yaml (charger/cp2 on server/cs) and the card of its token list.
OCPP_URL = f"ws://127.0.0.1:{OCPP_PORT}/ocpp"
CP_ID = "cp2"
# front/local of examples/seed-site.yaml: the page and the API (front/manual's default listen).
PAGE_URL = "http://127.0.0.1:8080/"
DEMO_TAG = "DEMO1234"
# The card the demo adds to the token list for reader/r1 (a 13.56 MHz card's UID in the OCPP form).
DEMO_CARD = "1C78F2BF"
# A roaming driver's card: not in the site's token list; the eMSP authorizes it in real time.
ROAMING_CARD = "04A1B2C3DD"
CHARGERS = ("s1", CP_ID)
# The scenario's base loads (A on L1, L2, L3): the sim config's, then a rise that leaves the two cars 18 A of the
# 32 A per phase that control/master may use on L1: 9 A each.
BASE_LOAD_A = (4, 2.5, 3)
RAISED_BASE_LOAD_A = (14, 12, 13)
GRID_PHASES = ("L1", "L2", "L3")


class Stop(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived: end the demo."""


def _on_signal(signum, frame):
    raise Stop(signal.Signals(signum).name)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} is not listening on 127.0.0.1:{port} after {timeout:.0f} s")


def venv_tool(name: str) -> str:
    """A console script next to this Python (the venv's), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH; run `make venv` first")
    return found


def _phases(values) -> str:
    return "/".join(f"{v:g}" for v in values)


# -- etcd, from this blocking script --
# The demo is a launcher, not part of EVC: a few blocking calls to etcd's JSON gateway are all it needs, where
# EVC's own store client would need a running reactor.

def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def etcd_call(url: str, path: str, body: dict, timeout: float = 5.0) -> dict:
    req = urllib.request.Request(f"{url}/v3/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def etcd_put(url: str, key: str, value: str) -> None:
    etcd_call(url, "kv/put", {"key": _b64(key), "value": _b64(value)})


def etcd_tree(url: str, root: str) -> dict[str, str]:
    """Every key under `root`, relative to it, with its text."""
    prefix = (root + "/").encode()
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    doc = etcd_call(url, "kv/range", {"key": _b64(root + "/"), "range_end": base64.b64encode(end).decode()})
    return {base64.b64decode(kv["key"]).decode()[len(root) + 1:]: base64.b64decode(kv.get("value", "")).decode()
            for kv in doc.get("kvs", [])}


def _num(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


class View:
    """The few leaves the scenario is about, from one read of the tree."""

    def __init__(self, kv: dict[str, str]):
        self.kv = kv

    def __getitem__(self, key: str) -> str | None:
        return self.kv.get(key)

    def phases(self, key: str) -> tuple[float | None, ...]:
        return tuple(_num(self.kv.get(f"{key}/L{i}")) for i in (1, 2, 3))

    @property
    def meters_live(self) -> bool:
        return all(self.kv.get(f"meter/{m}/state/status") == "running" and self.kv.get(f"meter/{m}/state/stale")
                   == "false" for m in ("m1", "grid"))

    @property
    def limit_A(self) -> float | None:
        return _num(self.kv.get("control/master/config/A_max"))

    def setpoint_A(self, charger: str = "s1") -> float | None:
        return _num(self.kv.get(f"charger/{charger}/state/setpoint_A"))

    def allocated_A(self, charger: str = "s1") -> float | None:
        return _num(self.kv.get(f"control/master/state/allocations/{charger}/A"))

    def drawing_A(self, charger: str = "s1") -> float:
        return max((a for a in self.phases(f"charger/{charger}/state/actual_A") if a is not None), default=0.0)

    def charging(self, charger: str) -> bool:
        return (self.setpoint_A(charger) or 0) >= 6 and self.drawing_A(charger) >= 6

    def session_state(self, charger: str) -> str | None:
        """The charger's current session: state/session/state, else its record in data/sessions/."""
        state = self[f"charger/{charger}/state/session/state"]
        current = self[f"charger/{charger}/data/sessions/current"]
        if state is None and current:
            try:
                state = json.loads(self[f"charger/{charger}/data/sessions/{current}"] or "{}").get("state")
            except ValueError:
                state = None
        return state

    @property
    def cp_connected(self) -> bool:
        return (self[f"charger/{CP_ID}/state/connection"] == "connected"
                and self[f"charger/{CP_ID}/state/online"] == "true")

    def key(self) -> tuple:
        """What, when it changes, is worth a line: the cars, the setpoints, control's decisions and the sessions."""
        return (self["control/master/state/mode"],) + tuple(
            (self[f"charger/{c}/state/vehicle"], self[f"charger/{c}/state/online"], self.setpoint_A(c),
             self.allocated_A(c), self[f"control/master/state/allocations/{c}/reason"],
             self.session_state(c)) for c in CHARGERS)

    def charger_text(self, charger: str) -> str | None:
        if charger == CP_ID and self[f"charger/{CP_ID}/state/connection"] is None:
            return None     # not started yet
        vehicle = self[f"charger/{charger}/state/vehicle"] or "?"
        if self[f"charger/{charger}/state/online"] == "false":
            vehicle += " (offline)"
        setpoint = self.setpoint_A(charger)
        text = f"{charger} {vehicle}" + (f" {setpoint:g} A" if setpoint is not None else "")
        drawing = self.drawing_A(charger)
        if drawing:
            text += f" (draws {drawing:.1f})"
        session = self.session_state(charger)
        if session:
            text += f", session {session}"
        return text

    def line(self) -> str:
        def amps(key):
            values = self.phases(key)
            return "?" if None in values else "/".join(f"{a:.1f}" for a in values)
        text = " | ".join(t for t in map(self.charger_text, CHARGERS) if t)
        limit = self.limit_A
        text += f" | grid {amps('meter/grid/state/A')} A (limit {limit:g})" if limit is not None else ""
        allocated = [(c, self.allocated_A(c)) for c in CHARGERS if self.allocated_A(c) is not None]
        if allocated:
            text += f" | control {self['control/master/state/mode']}: " + ", ".join(
                f"{c} {a:g} A ({self[f'control/master/state/allocations/{c}/reason']})" for c, a in allocated)
        return text


class ChargePoint:
    """The OCPP charge point simulator as the demo's child: commands on its stdin, one JSON answer per line on its
    stdout (its log goes to stderr, the demo's terminal)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._buffer = b""

    def command(self, line: str, timeout: float = 5.0) -> dict:
        os.write(self.proc.stdin.fileno(), line.encode() + b"\n")
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"the OCPP charger simulator did not answer {line!r} within {timeout:g} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the OCPP charger simulator closed its output")
            self._buffer += chunk
        answer, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(answer)


def _cp2_phase_map() -> tuple[str, ...]:
    """The grid phase of each of cp2's conductors, as examples/seed-site.yaml wires it."""
    config = cli.read_site_file(str(EXAMPLE)).doc["charger"][CP_ID]["config"]
    return tuple(config.get("phase_map") or (GRID_PHASES if config.get("phases", 3) == 3 else ("L1",)))


class Demo:
    def __init__(self, args):
        self.args = args
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.etcd: EtcdServer | None = None
        self.url = ""
        self.control_port = 0
        self.reader_control_port = 0
        self.twistd: subprocess.Popen | None = None
        self.cp: ChargePoint | None = None
        self._cp_phase_map = _cp2_phase_map()
        self._external_A: tuple[float, float, float] | None = None
        self._started = time.monotonic()
        self._shown: tuple | None = None

    # -- children --

    def spawn(self, what: str, argv: list[str], **kw) -> subprocess.Popen:
        # stdin: the simulators read commands from a pipe or tty; they must not take the operator's keystrokes.
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, start_new_session=True, cwd=REPO, **kw)
        self.children.append((what, proc))
        self.say(f"started {what} (pid {proc.pid})")
        return proc

    def stop_all(self) -> None:
        """Stop children newest first (twistd before the simulator before etcd); each whole process group."""
        for what, proc in reversed(self.children):
            _stop_group(proc, what)
        self.children.clear()
        if self.etcd is not None:
            self.etcd.cleanup()
            print("demo: stopped the throwaway etcd", flush=True)
            self.etcd = None

    def check_children(self) -> None:
        for what, proc in self.children:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with status {proc.returncode}")

    def say(self, text: str) -> None:
        print(f"demo: {text}", flush=True)

    # -- set-up --

    def start_etcd(self) -> None:
        url = os.environ.get("EVC_ETCD_URL")
        if url:
            self.url = url.rstrip("/")
            self.say(f"using etcd at {self.url} (EVC_ETCD_URL); not starting one")
            return
        server = EtcdServer()
        if not os.path.exists(server.binary):
            raise RuntimeError("etcd is not installed: `make etcd` installs Debian's etcd-server "
                               "(or set EVC_ETCD_URL to use a running etcd)")
        if port_free(DEMO_ETCD_PORT):
            server.client_port = DEMO_ETCD_PORT
            if server.peer_port == DEMO_ETCD_PORT:
                server.peer_port = DEMO_ETCD_PORT + 1
        else:
            self.say(f"port {DEMO_ETCD_PORT} is taken; using {server.client_port} for etcd")
        self.etcd = server
        server.start()
        self.url = server.url
        self.say(f"started a throwaway etcd at {self.url} (pid {server.proc.pid}, data in {server.data_dir})")

    def start_simulator(self) -> None:
        for port, what in PORTS.items():
            if not port_free(port):
                raise RuntimeError(f"port {port} ({what} in {EXAMPLE.relative_to(REPO)}) is in use: "
                                   "is another demo running?")
        self.control_port = free_port()
        proc = self.spawn("the site simulator",
                          [sys.executable, "-m", "evc.sim.site", "--config", str(SIM_CONFIG.relative_to(REPO)),
                           "--control-port", str(self.control_port)], stdout=subprocess.DEVNULL)
        for port in (*(p for p in PORTS if p not in (OCPP_PORT, READER_PORT, EMSP_PORT, OCPI_PORT)),
                     self.control_port):
            wait_for_port(port, proc, "the site simulator")
        self.start_reader()
        self.start_emsp()

    def start_reader(self) -> None:
        """reader/r1's device: a simulated line reader (one card per ASCII line) behind a ser2net-style TCP tunnel;
        a card is presented with `present UID` on its control port, or from the page (front/local's present_cards)."""
        self.reader_control_port = free_port()
        proc = self.spawn("the line reader simulator as reader/r1",
                          [sys.executable, "-m", "evc.sim.rfid", "line", "--tcp-port", str(READER_PORT),
                           "--control-port", str(self.reader_control_port)], stdout=subprocess.DEVNULL)
        for port in (READER_PORT, self.reader_control_port):
            wait_for_port(port, proc, "the line reader simulator")

    def start_emsp(self) -> None:
        """The roaming network's side: a simulated eMSP that front/plugsurfing registers with; what it receives from
        EVC (the Location, real-time authorizations, Sessions, the CDR) is printed as it arrives."""
        proc = self.spawn("the eMSP simulator (OCPI, for front/plugsurfing)",
                          [sys.executable, "-m", "evc.sim.emsp", "--port", str(EMSP_PORT), "--token-a", EMSP_TOKEN_A,
                           "--allow", ROAMING_CARD], stdout=subprocess.PIPE, text=True, bufsize=1)
        first = proc.stdout.readline()
        if not first.startswith("PORT "):
            raise RuntimeError(f"the eMSP simulator did not start: {first!r}")
        self.cdrs: list[dict] = []
        self._session_seen: dict[str, tuple] = {}
        threading.Thread(target=self._emsp_events, args=(proc,), daemon=True).start()

    def _emsp_events(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind, obj = event.get("event"), event.get("object") or {}
            if kind == "location" and event.get("method") == "PUT" and "/" not in event.get("path", "/"):
                self.say(f"eMSP: received the Location {obj.get('id')} with "
                         f"{len(obj.get('evses') or [])} EVSEs from front/plugsurfing")
            elif kind == "authorize":
                answer = (event.get("answer") or {}).get("allowed", "unknown card")
                self.say(f"eMSP: real-time authorization of card {event.get('uid')}: {answer}")
            elif kind == "session":
                key = (obj.get("status"), round(float(obj.get("kwh") or 0), 1))
                if self._session_seen.get(obj.get("id")) != key:
                    self._session_seen[obj.get("id")] = key
                    self.say(f"eMSP: session {obj.get('id')} {obj.get('status')}, {obj.get('kwh', 0)} kWh")
            elif kind == "cdr":
                cost = (obj.get("total_cost") or {}).get("incl_vat", (obj.get("total_cost") or {}).get("excl_vat"))
                self.say(f"eMSP: CDR {obj.get('id')}: {obj.get('total_energy')} kWh, {cost} "
                         f"{obj.get('currency')} (the charger's own meter difference)")
                self.cdrs.append(obj)

    def start_charge_point(self) -> None:
        """The OCPP charger simulator as charger cp2; it connects to EVC's server/cs (and retries until it is up)."""
        proc = self.spawn(f"the OCPP charger simulator as {CP_ID}",
                          [sys.executable, "-m", "evc.sim.ocpp_cp", "--url", OCPP_URL, "--id", CP_ID,
                           "--max-current-a", "32", "--car-max-a", "16", "--soc", "0.3", "--backoff-max-s", "5"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.cp = ChargePoint(proc)

    def feed_grid(self) -> None:
        """Put what cp2's car draws into the grid meter.

        The site simulator's grid meter adds up the base load and the cars of its own EVSEs; cp2's car lives in
        another process (the OCPP simulator), so the demo reads its draw per conductor from that simulator's
        `status`, puts each conductor on the grid phase cp2's phase_map names, and hands the sum to the site
        simulator as its external load (`external L1 L2 L3`). Then the grid meter sees both cars and the base
        load, as a real meter at the site's connection would, and control's base-load estimate (grid meter
        minus each car's measured draw) stays right. It runs every 0.1 s: a real meter sees a change at once, and
        a grid reading that still shows cp2's old current after control lowered it would make the other loads look
        larger than they are (docs/control.md, "The moment of a reading").
        """
        if self.cp is None or self.cp.proc.poll() is not None:
            return
        try:
            status = self.cp.command("status")
        except (TimeoutError, RuntimeError, OSError, ValueError) as e:
            self.say(f"reading the OCPP charger simulator: {e}")
            return
        load = dict.fromkeys(GRID_PHASES, 0.0)
        connector = status["connectors"][0]
        for phase, current_A in zip(self._cp_phase_map, connector["draw_A"]):
            load[phase] += current_A
        external = tuple(round(load[p], 2) for p in GRID_PHASES)
        if external != self._external_A:
            answer = self.sim_command("external " + " ".join(f"{a:g}" for a in external))
            if answer.get("ok"):
                self._external_A = external

    def evc_cli(self, *argv: str, capture: bool = False) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "evc.cli", "--etcd", self.url, "--root", self.args.root, *argv]
        return subprocess.run(cmd, cwd=REPO, capture_output=capture, text=True, timeout=60)

    def load_config(self) -> None:
        self.say(f"loading {EXAMPLE.relative_to(REPO)} into {self.args.root}")
        # --replace: a demo root left over from an earlier run gets exactly the example's config.
        r = self.evc_cli("config", "load", "--replace", str(EXAMPLE.relative_to(REPO)))
        if r.returncode != 0:
            raise RuntimeError(f"loading {EXAMPLE} failed (exit {r.returncode})")
        # The demo's own additions, beside the seed: a card for reader/r1 in the token list, and the page's
        # "present a card" (front/manual's present_cards: for demos and commissioning, off on a working site).
        root = self.args.root
        etcd_put(self.url, f"{root}/token/{DEMO_CARD}/config/owner", "the demo's card at reader r1")
        etcd_put(self.url, f"{root}/front/local/config/present_cards", "true")
        self.say(f"added token/{DEMO_CARD} (a card for reader/r1) and turned on the page's \"present a card\" "
                 f"(front/local/config/present_cards true)")
        # front/plugsurfing registers with the demo's eMSP (a real site is given Plugsurfing's versions URL and
        # token A by its partner support; docs/ocpi.md).
        roaming = {
            "versions_url": f"http://127.0.0.1:{EMSP_PORT}/ocpi/versions", "token_a": EMSP_TOKEN_A,
            "country_code": "DE", "party_id": "EVC", "business_name": "EVC demo site",
            "listen": f"127.0.0.1:{OCPI_PORT}", "public_url": f"http://127.0.0.1:{OCPI_PORT}",
            "location/id": "SEED", "location/name": "EVC seed site", "location/address": "Demo street 1",
            "location/city": "Berlin", "location/postal_code": "10115", "location/country": "DEU",
            "location/coordinates/latitude": "52.52", "location/coordinates/longitude": "13.405",
            "tariff/currency": "EUR", "tariff/price_per_kWh": "0.39", "tariff/vat_percent": "19",
            "session_update_s": "5", "retry_min_s": "0.5", "retry_max_s": "5"}
        for leaf, value in roaming.items():
            etcd_put(self.url, f"{root}/front/plugsurfing/config/{leaf}", value)
        self.say(f"configured front/plugsurfing for the demo's eMSP at 127.0.0.1:{EMSP_PORT} (versions_url, "
                 f"token_a, its party DE*EVC and the site's Location)")

    def sim_command(self, line: str) -> dict:
        """One command to the site simulator's control port; its JSON answer."""
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=5) as s:
            s.sendall(line.encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return json.loads(answer or b"{}")

    # -- what the operator sees --

    def etcdctl(self, *words: str) -> str:
        return f"ETCDCTL_API=3 etcdctl --endpoints {self.url} " + " ".join(words)

    def evc_command(self) -> str:
        evc = Path(sys.executable).parent / "evc"
        shown = os.path.relpath(evc, os.getcwd()) if evc.exists() else "evc"
        return f"{shown} --etcd {self.url} --root {self.args.root}"

    def print_help(self) -> None:
        root = self.args.root
        print(f"""
demo: the site runs. Watch it from a second shell:

    {self.evc_command()} status
    {self.etcdctl("get --prefix", root + "/charger/s1/state/")}
    {self.etcdctl("get --prefix", root + f"/charger/{CP_ID}/state/")}
    {self.etcdctl("get --prefix", root + "/control/master/state/")}
    {self.etcdctl("watch --prefix", root + "/")}

change it live (EVC applies a config change at once, restarting only what changed), e.g.:

    {self.etcdctl("put", root + f"/charger/{CP_ID}/config/mode OFF")}      # s1 gets the whole fuse
    {self.etcdctl("put", root + "/control/master/config/A_max 25")}

The site's own page (front/local, type manual): {PAGE_URL}  (no login on 127.0.0.1; docs/front-manual.md)

{CP_ID} is the OCPP charger simulator (python -m evc.sim.ocpp_cp), connected to EVC's central system at
{OCPP_URL}/{CP_ID}; a real OCPP 1.6J charger connects there the same way (docs/ocpp.md).

and change the simulated site (one command per line on its control port: status, base L1 L2 L3, unplug car1,
plug car1 s1, soc car1 0.95, ...; evc/sim/site.py lists them):

    echo 'base 8 6 7' | nc -q1 127.0.0.1 {self.control_port}

reader/r1 (serving s1) is a simulated line reader on 127.0.0.1:{READER_PORT}; hold a card at it (token/{DEMO_CARD}),
or use the page's "present a card" (front/local's present_cards is on in the demo):

    echo 'present {DEMO_CARD}' | nc -q1 127.0.0.1 {self.reader_control_port}

front/plugsurfing (OCPI 2.2.1) is registered with a simulated eMSP at 127.0.0.1:{EMSP_PORT} (python -m evc.sim.emsp),
which authorizes the roaming card {ROAMING_CARD}; EVC's own OCPI endpoints: http://127.0.0.1:{OCPI_PORT}/ocpi/versions
(docs/ocpi.md). Lines starting "demo: eMSP:" are what the eMSP receives.

Ctrl-C stops everything.
""", flush=True)

    def show(self, force: bool = False) -> View | None:
        """Read the tree; print a line when what the scenario is about changed. None when etcd did not answer."""
        try:
            view = View(etcd_tree(self.url, self.args.root))
        except OSError as e:
            self.say(f"etcd did not answer ({e}); trying again")
            return None
        key = view.key()
        if force or key != self._shown:
            self._shown = key
            print(f"demo: [{time.monotonic() - self._started:6.1f} s] {view.line()}", flush=True)
        return view

    def watch(self, seconds: float, until=None, what: str = "") -> View | None:
        """Print changes for `seconds`, or until `until(view)` holds (then return that view); a deadline, never a
        blind sleep: a condition that does not come is reported."""
        deadline = time.monotonic() + seconds
        view = None
        while True:
            self.check_children()
            self.feed_grid()
            view = self.show() or view
            if until is not None and view is not None and until(view):
                return view
            if time.monotonic() >= deadline:
                if until is not None:
                    self.say(f"{what} has not happened after {seconds:g} s (docs/troubleshooting.md)")
                return view
            # The tree is read every 0.5 s; cp2's draw goes to the grid meter every 0.1 s (feed_grid says why).
            for _ in range(5):
                time.sleep(0.1)
                self.feed_grid()

    def wait_ready(self, timeout: float) -> View:
        """Until meter/m1 and meter/grid have live values, charger/s1 answers and control/master runs."""
        view = self.watch(timeout, lambda v: v.meters_live and v["charger/s1/state/online"] == "true"
                          and v["control/master/state/status"] == "running",
                          "meters m1 and grid live, charger s1 online and control running")
        if view is None or not view.meters_live or view["charger/s1/state/online"] != "true":
            raise TimeoutError(f"the site is not ready after {timeout:.0f} s: see `{self.evc_command()} status`")
        self.say("ready: meters m1 and grid read, charger s1 answers on conn s123, control/master runs")
        return view

    def wait_charge_point(self, timeout: float) -> View:
        """Until cp2 is connected to server/cs and has booted (EVC can limit it)."""
        view = self.watch(timeout, lambda v: v.cp_connected, f"{CP_ID} connected")
        if view is None or not view.cp_connected:
            raise TimeoutError(f"{CP_ID} has not connected to {OCPP_URL}/{CP_ID} after {timeout:.0f} s: see "
                               f"`{self.evc_command()} status` and server/cs/state/")
        self.say(f"{CP_ID} connected: the OCPP charger simulator booted at {OCPP_URL}/{CP_ID} and took EVC's "
                 f"charging profiles (a real charger connects the same way: docs/ocpp.md)")
        return view

    # -- the scenario --

    def scenario(self) -> None:
        step_s = self.args.step_s
        root = self.args.root
        limit = self._shown_limit()
        self.say(f"step 1: s1 is OFF (as the seed writes it) while car1 is plugged in. Switching it on live:\n\n"
                 f"    {self.etcdctl('put', root + '/charger/s1/config/mode ON')}\n")
        etcd_put(self.url, f"{root}/charger/s1/config/mode", "ON")
        view = self.watch(60, lambda v: v.charging("s1"), "s1 charging (setpoint and measured draw of 6 A or more)")
        alone_A = view.setpoint_A("s1") if view is not None else None
        self.say(f"car1 charges at {alone_A:g} A per phase: alone on the fuse, s1 gets what the {limit:g} A per "
                 f"phase leave beside the base load {_phases(BASE_LOAD_A)} A (less control's 1 A deadband)"
                 if alone_A else "car1 is not charging yet; the scenario goes on")
        self.watch(step_s)

        self.say(f"step 2: a car plugs into {CP_ID}, the OCPP charger, and its driver shows the card {DEMO_TAG} "
                 f"(token/{DEMO_TAG}). s1 and {CP_ID} are behind the same {limit:g} A fuse, with equal priority: "
                 f"control shares it between them")
        answer = self.cp.command(f"plug {DEMO_TAG}")
        if not answer.get("ok"):
            self.say(f"the OCPP charger simulator refused to plug: {answer.get('error')}")

        def shared(v):
            return v.charging("s1") and v.charging(CP_ID) and v.session_state(CP_ID) in ("authorized", "charging")
        view = self.watch(step_s + 30, shared, f"s1 and {CP_ID} both charging")
        before = {c: view.allocated_A(c) for c in CHARGERS} if view is not None and shared(view) else None
        if self.args.screenshot:
            self.screenshot(self.args.screenshot)
        if before:
            self.say(f"both charge: s1 {before['s1']:g} A, {CP_ID} {before[CP_ID]:g} A (its Authorize and "
                     f"StartTransaction accepted from the token list; a session in charger/{CP_ID}/data/sessions/)")
        self.watch(step_s)

        self.say(f"step 3: the base load rises to {_phases(RAISED_BASE_LOAD_A)} A (a heat pump starts):\n\n"
                 f"    echo 'base {' '.join(f'{a:g}' for a in RAISED_BASE_LOAD_A)}' | nc -q1 127.0.0.1 "
                 f"{self.control_port}\n\ncontrol must lower both chargers to keep every phase within {limit:g} A")
        self.sim_command("base " + " ".join(f"{a:g}" for a in RAISED_BASE_LOAD_A))
        started = time.monotonic()

        def lowered(v):
            return before is not None and all((v.allocated_A(c) or 0) < before[c] and (v.setpoint_A(c) or 0)
                                              < before[c] for c in CHARGERS)
        view = self.watch(step_s + 30, lowered, "s1 and cp2 lowered")
        low = {c: view.allocated_A(c) for c in CHARGERS} if view is not None and lowered(view) else None
        if low:
            self.say(f"control lowered s1 to {low['s1']:g} A and {CP_ID} to {low[CP_ID]:g} A "
                     f"({time.monotonic() - started:.1f} s after the rise)")
        self.watch(max(0.0, step_s - (time.monotonic() - started)))

        self.say(f"step 4: the base load falls back to {_phases(BASE_LOAD_A)} A; control raises both again")
        self.sim_command("base " + " ".join(f"{a:g}" for a in BASE_LOAD_A))
        started = time.monotonic()

        def raised(v):
            # Back to about their shares before the rise (the deadband may keep one 1 A lower).
            return before is not None and all((v.allocated_A(c) or 0) >= before[c] - 1 for c in CHARGERS)
        view = self.watch(step_s + 30, raised, "s1 and cp2 raised")
        if view is not None and raised(view):
            self.say(f"control raised s1 to {view.allocated_A('s1'):g} A and {CP_ID} to "
                     f"{view.allocated_A(CP_ID):g} A ({time.monotonic() - started:.1f} s after the fall)")
        self.watch(step_s)
        self.roaming_session(step_s)
        self.say("the scenario is done; the site keeps running (try the commands above). Ctrl-C stops it.")

    def roaming_session(self, step_s: float) -> None:
        self.say(f"step 5: the car at {CP_ID} leaves; a Plugsurfing driver plugs in and shows the card "
                 f"{ROAMING_CARD}, which the site's token list does not know: EVC asks the eMSP in real time "
                 f"(front/plugsurfing), the eMSP's driver charges, and the eMSP gets the Session and, at the end, "
                 f"the CDR")
        self.cp.command("unplug")
        self.watch(step_s + 15, lambda v: v.session_state(CP_ID) is None, f"{CP_ID}'s session ended")
        answer = self.cp.command(f"plug {ROAMING_CARD}")
        if not answer.get("ok"):
            self.say(f"the OCPP charger simulator refused to plug: {answer.get('error')}")
            return
        self.watch(step_s + 30, lambda v: v.charging(CP_ID), f"{CP_ID} charging the roaming driver's car")
        self.watch(max(step_s, 6.0))          # at least one Session update with energy
        cdrs = len(self.cdrs)
        self.say(f"the roaming driver unplugs at {CP_ID}")
        self.cp.command("unplug")
        deadline = time.monotonic() + step_s + 30
        while len(self.cdrs) == cdrs and time.monotonic() < deadline:
            self.watch(0.5)
        if len(self.cdrs) > cdrs:
            self.say("the roaming session is billed: the CDR went to the eMSP once, through front/plugsurfing's "
                     "durable queue (front/plugsurfing/data/queue/)")
        else:
            self.say("no CDR reached the eMSP yet: see front/plugsurfing/state/ (evc status)")

    def screenshot(self, path: str) -> None:
        """front/local's page in headless Chromium, as PNG (docs/img/page.png); skipped with a reason if it cannot."""
        from evc.front.manual import screenshot
        why = screenshot.missing()
        if why:
            self.say(f"no screenshot of the page: {why}")
            return
        try:
            screenshot.take(PAGE_URL, path)
            self.say(f"screenshot of the page written to {path}")
        except Exception as e:          # the demo goes on without it
            self.say(f"no screenshot of the page: {e}")

    def _shown_limit(self) -> float:
        view = self.show()
        return (view.limit_A if view is not None else None) or 0.0

    def run(self) -> int:
        self.start_etcd()
        self.start_simulator()
        self.load_config()
        if self.args.no_twistd:
            self.say("--no-twistd: not starting EVC; start it, then the OCPP charger simulator, with\n\n"
                     f"    {venv_tool('twistd')} -n evc --etcd {self.url} --root {self.args.root}\n"
                     f"    {sys.executable} -m evc.sim.ocpp_cp --url {OCPP_URL} --id {CP_ID} "
                     f"--plug-at 5 --id-tag {DEMO_TAG}\n\n"
                     f"(its car's draw does not reach the grid meter then: `external L1 L2 L3` on the site "
                     f"simulator's control port puts it there)")
        else:
            self.twistd = self.spawn("twistd -n evc", [venv_tool("twistd"), "-n", "--pidfile=", "evc",
                                                       "--etcd", self.url, "--root", self.args.root])
        self.print_help()
        if self.args.no_twistd:
            if self.args.exit_after_ready:
                return 0
            self.say("simulator and etcd run until Ctrl-C")
            while True:
                self.check_children()
                time.sleep(0.5)
        self.wait_ready(self.args.ready_timeout)
        # After EVC is up: its server/cs listens, so the charge point's first connection is the one that works.
        self.start_charge_point()
        self.wait_charge_point(self.args.ready_timeout)
        if self.args.exit_after_ready:
            return 0
        if not self.args.no_scenario:
            self.scenario()
        while True:
            # twistd runs in the foreground in effect: the demo lives exactly as long as it does.
            code = self.twistd.poll()
            if code is not None:
                self.say(f"twistd exited with status {code}"
                         + (" (docs/troubleshooting.md says why it may not start)" if code else ""))
                return code or 0
            self.watch(1.0)


def _stop_group(proc: subprocess.Popen, what: str, grace: float = 10.0) -> None:
    """SIGTERM the child's process group, then SIGKILL what is still there after `grace` seconds."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure nothing it started lingers in its group.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    print(f"demo: stopped {what}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evc.demo", description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/evc/seed", help="the demo site's root in etcd (default %(default)s)")
    p.add_argument("--step-s", type=float, default=20.0,
                   help="seconds between the scenario's steps (default %(default)s; the tests use a few)")
    p.add_argument("--no-scenario", action="store_true",
                   help="run the site as loaded (s1 OFF, no car at cp2), without switching s1 on, plugging a car "
                   "into cp2 or changing the base load")
    p.add_argument("--no-twistd", action="store_true", help="start etcd and the simulator and load the config only")
    p.add_argument("--exit-after-ready", action="store_true",
                   help="stop everything once the site is ready (meters live, s1 online, cp2 connected; for tests)")
    p.add_argument("--screenshot", metavar="PNG",
                   help="once both chargers charge, save a screenshot of the page (front/local) there, if chromium "
                   "and chromium-driver are installed")
    p.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for the site to be ready")
    args = p.parse_args(argv)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    demo = Demo(args)
    try:
        return demo.run()
    except Stop as e:
        print(f"\ndemo: {e}: stopping", flush=True)
        return 0
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"demo: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        # A second Ctrl-C must not interrupt the clean-up half-way.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        demo.stop_all()


if __name__ == "__main__":
    sys.exit(main())
