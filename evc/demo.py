"""`make demo`: a whole simulated site (throwaway etcd, simulators, the seed's config) under `twistd -n evc`.

Every child runs in a process group of its own; whatever ends the demo (Ctrl-C, SIGTERM, twistd exiting, an error)
stops twistd, the simulators and the throwaway etcd, and leaves nothing running.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from evc.etcdserver import EtcdServer

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "seed-site.yaml"
DEMO_ETCD_PORT = 23790
SDM_PORT = 15020          # examples/seed-site.yaml: meter/m1 config/bus
RS485_TCP_PORT = 15485    # examples/seed-site.yaml: conn/s123 config/remote
BASE_LOAD_A = "4,2.5,3"   # what the simulated grid meter reads while no car charges


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


class Demo:
    def __init__(self, args):
        self.args = args
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.etcd: EtcdServer | None = None
        self.url = ""

    # -- children --

    def spawn(self, what: str, argv: list[str], **kw) -> subprocess.Popen:
        # stdin: the simulators read commands from a pipe or tty; they must not take the operator's keystrokes.
        proc = subprocess.Popen(argv, start_new_session=True, cwd=REPO, stdin=subprocess.DEVNULL, **kw)
        self.children.append((what, proc))
        print(f"demo: started {what} (pid {proc.pid})", flush=True)
        return proc

    def stop_all(self) -> None:
        """Stop children newest first (twistd before the simulators before etcd); each whole process group."""
        for what, proc in reversed(self.children):
            _stop_group(proc, what)
        self.children.clear()
        if self.etcd is not None:
            self.etcd.cleanup()
            print("demo: stopped the throwaway etcd", flush=True)
            self.etcd = None

    # -- steps --

    def start_etcd(self) -> None:
        url = os.environ.get("EVC_ETCD_URL")
        if url:
            self.url = url.rstrip("/")
            print(f"demo: using etcd at {self.url} (EVC_ETCD_URL); not starting one", flush=True)
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
            print(f"demo: port {DEMO_ETCD_PORT} is taken; using {server.client_port} for etcd", flush=True)
        self.etcd = server
        server.start()
        self.url = server.url
        print(f"demo: started a throwaway etcd at {self.url} (pid {server.proc.pid}, data in {server.data_dir})",
              flush=True)

    def start_simulators(self) -> None:
        for port, what in ((SDM_PORT, "meter/m1's bus"), (RS485_TCP_PORT, "conn/s123's remote")):
            if not port_free(port):
                raise RuntimeError(f"port {port} ({what} in {EXAMPLE.relative_to(REPO)}) is in use: "
                                   "is another demo running?")
        if importlib.util.find_spec("evc.sim.site") is not None and not self.args.sdm_only:
            # One EVSE (unit 1 = charger/s1's conn_port) with a car on the RS485 tunnel, the grid meter on Modbus
            # TCP, and a base load so that the meter shows something while no car charges.
            proc = self.spawn("the site simulator",
                              [sys.executable, "-m", "evc.sim.site", "--evses", "1", "--cars", "1",
                               "--tcp-port", str(RS485_TCP_PORT), "--meter-port", str(SDM_PORT),
                               "--base-load", BASE_LOAD_A])
            wait_for_port(SDM_PORT, proc, "the site simulator")
            wait_for_port(RS485_TCP_PORT, proc, "the site simulator")
            return
        proc = self.spawn("the SDM630 simulator", [sys.executable, "-m", "evc.sim.sdm", "--port", str(SDM_PORT),
                                                   "--A", BASE_LOAD_A, "--noise", "0.002"])
        wait_for_port(SDM_PORT, proc, "the SDM630 simulator")

    def evc_cli(self, *argv: str, capture: bool = False) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "evc.cli", "--etcd", self.url, "--root", self.args.root, *argv]
        return subprocess.run(cmd, cwd=REPO, capture_output=capture, text=True, timeout=60)

    def load_config(self) -> None:
        print(f"demo: loading {EXAMPLE.relative_to(REPO)} into {self.args.root}", flush=True)
        # --replace: a demo root left over from an earlier run gets exactly the example's config.
        r = self.evc_cli("config", "load", "--replace", str(EXAMPLE.relative_to(REPO)))
        if r.returncode != 0:
            raise RuntimeError(f"loading {EXAMPLE} failed (exit {r.returncode})")

    def print_help(self) -> None:
        evc = os.path.relpath(venv_tool("evc"), os.getcwd()) if (Path(sys.executable).parent / "evc").exists() else "evc"
        etcd_port = self.url.rsplit(":", 1)[-1]
        print(f"""
demo: the site runs. Watch it from a second shell:

    {evc} --etcd {self.url} --root {self.args.root} status
    ETCDCTL_API=3 etcdctl --endpoints {self.url} get --prefix {self.args.root}/meter/m1/state/
    ETCDCTL_API=3 etcdctl --endpoints {self.url} watch --prefix {self.args.root}/

and change it live, e.g.:

    ETCDCTL_API=3 etcdctl --endpoints {self.url} put {self.args.root}/meter/m1/config/interval_s 2

(the etcd client port is {etcd_port}). Ctrl-C stops everything.
""", flush=True)

    def wait_ready(self, timeout: float) -> None:
        """Until `evc status` shows meter/m1 with live values (polled with a deadline)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            r = self.evc_cli("status", "--json", capture=True)
            if r.returncode in (0, 1) and r.stdout.strip():
                try:
                    rows = {row["instance"]: row for row in json.loads(r.stdout)}
                except ValueError:
                    rows = {}
                m1 = rows.get("meter/m1", {})
                last = f"meter/m1 status {m1.get('status')!r}, error {m1.get('error')!r}"
                if m1.get("status") == "running" and "W" in m1.get("state", {}):
                    print("demo: ready (meter/m1 has live values)", flush=True)
                    return
            else:
                last = (r.stderr or r.stdout).strip()
            self.check_children()
            time.sleep(0.2)
        raise TimeoutError(f"the site is not ready after {timeout:.0f} s: {last}")

    def check_children(self) -> None:
        for what, proc in self.children:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with status {proc.returncode}")

    def run(self) -> int:
        self.start_etcd()
        self.start_simulators()
        self.load_config()
        if self.args.no_twistd:
            print("demo: --no-twistd: not starting EVC; start it with\n\n"
                  f"    {venv_tool('twistd')} -n evc --etcd {self.url} --root {self.args.root}\n", flush=True)
        else:
            twistd = self.spawn("twistd -n evc", [venv_tool("twistd"), "-n", "--pidfile=", "evc",
                                                  "--etcd", self.url, "--root", self.args.root])
        self.print_help()
        if self.args.exit_after_ready:
            if not self.args.no_twistd:
                self.wait_ready(self.args.ready_timeout)
            return 0
        if self.args.no_twistd:
            print("demo: simulators and etcd run until Ctrl-C", flush=True)
            while True:
                self.check_children()
                time.sleep(0.5)
        while True:
            # twistd runs in the foreground in effect: the demo lives exactly as long as it does.
            code = twistd.poll()
            if code is not None:
                print(f"demo: twistd exited with status {code}"
                      + (" (docs/troubleshooting.md says why it may not start)" if code else ""), flush=True)
                return code or 0
            self.check_children()
            time.sleep(0.2)


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
    p.add_argument("--no-twistd", action="store_true", help="start etcd and the simulators and load the config only")
    p.add_argument("--exit-after-ready", action="store_true",
                   help="stop everything once `evc status` shows meter/m1 with live values (for tests)")
    p.add_argument("--ready-timeout", type=float, default=60.0, help="seconds --exit-after-ready waits")
    p.add_argument("--sdm-only", action="store_true", help="run only the SDM630 simulator, not the whole site's")
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
