"""A throwaway etcd server (Debian's etcd-server) for the demo, the tests and the benchmarks."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EtcdServer:
    """Runs `etcd` on free loopback ports in its own data dir. stop()/start() keep the data (a restart);
    cleanup() removes it. Blocking calls: use it from fixtures and scripts, not from the reactor."""

    def __init__(self, binary: str | None = None, data_dir: str | None = None, extra_args: tuple = ()):
        self.binary = binary or shutil.which("etcd") or "/usr/bin/etcd"
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="evc-etcd-")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0) -> "EtcdServer":
        if self.proc and self.proc.poll() is None:
            return self
        log = open(os.path.join(self.data_dir, "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--name", "evc-test", "--data-dir", os.path.join(self.data_dir, "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
             "--initial-cluster", f"evc-test=http://127.0.0.1:{self.peer_port}",
             "--logger", "zap", "--log-outputs", "stderr", *self.extra_args],
            stdout=log, stderr=log, start_new_session=True)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.data_dir}/etcd.log")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if json.load(r).get("health") == "true":
                        return
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise TimeoutError(f"etcd at {self.url} not healthy after {timeout}s: {last}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def etcdctl(self, *args: str, input: bytes | None = None) -> str:
        """Run etcdctl against this server (v3 API); returns stdout."""
        env = dict(os.environ, ETCDCTL_API="3")
        out = subprocess.run(["etcdctl", "--endpoints", self.url, *args], env=env, input=input,
                             capture_output=True, check=True, timeout=30)
        return out.stdout.decode()

    def __enter__(self) -> "EtcdServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
