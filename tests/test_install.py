"""EVC as an operator installs it: `python -m build` (an sdist, then a wheel built from that sdist), the wheel
installed into a fresh venv outside the clone, and the installed `twistd evc` and `evc` run from a folder that
is not the clone: the schemas ship inside the package and ocpp/websockets come with a plain install."""
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import reactor

from evc.sim.modbus import listen_tcp
from evc.sim.sdm import SimSdm630
from evc.store.etcd import EtcdStore
from evc.testing import wait_for

REPO = Path(__file__).resolve().parent.parent
# What a checkout has beside the sources; none of it may reach the package.
NOT_SOURCES = shutil.ignore_patterns(".venv", ".emsp-venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                     ".hypothesis", ".pytest_cache", ".demo", "_trial_temp", "dropin.cache",
                                     "twistd.pid", "twistd.log")
SCHEMAS = sorted(p.relative_to(REPO / "schema").as_posix() for p in (REPO / "schema").glob("*/*.json"))


def _env():
    """The environment of an operator's shell: nothing that points back at the clone or at the test venv."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "EVC_SCHEMA_DIR", "EVC_ROOT", "EVC_ETCD_URL")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(args, cwd, timeout=180):
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build from a copy of the source tree (so no build/ or egg-info of the clone is used or left behind),
    install the wheel into a fresh venv, and hand back the venv's bin/ and an empty working folder."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCES)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "build", "--outdir", dist, src], cwd=tmp)   # sdist, then a wheel from the sdist
    [sdist] = dist.glob("evc-*.tar.gz")
    [wheel] = dist.glob("evc-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    # The test venv's pip installs into the fresh venv (its dependencies from the index, through pip's cache).
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", wheel], cwd=tmp)
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    return SimpleNamespace(sdist=sdist, wheel=wheel, bin=venv / "bin", cwd=cwd)


def test_the_sdist_carries_the_schemas_and_the_twistd_plugin(installed):
    with tarfile.open(installed.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {f"schema/{s}" for s in SCHEMAS} <= names
    assert {"twisted/plugins/evc_plugin.py", "setup.py", "pyproject.toml", "examples/seed-site.yaml"} <= names


def test_the_wheel_carries_each_schema_as_in_schema_folder_and_the_plugin_without_init(installed):
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        for s in SCHEMAS:
            assert whl.read(f"evc/_schema/{s}") == (REPO / "schema" / s).read_bytes(), s
        requires = [line for line in whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode().splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert "twisted/plugins/evc_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names and "twisted/__init__.py" not in names
    assert any(r.startswith("Requires-Dist: ocpp") for r in requires), requires
    assert any(r.startswith("Requires-Dist: websockets") for r in requires), requires


def test_installed_twistd_finds_the_evc_plugin(installed):
    out = _run([installed.bin / "twistd", "evc", "--help"], cwd=installed.cwd).stdout
    assert "--root" in out and "--etcd" in out


def test_installed_cli_validates_the_seed_site(installed):
    p = _run([installed.bin / "evc", "config", "validate", REPO / "examples" / "seed-site.yaml"], cwd=installed.cwd)
    assert "valid" in p.stdout, p.stdout + p.stderr


def test_installed_package_has_every_type_with_its_schema(installed):
    """A plain install runs every type EVC has: each registered module imports (ocpp, websockets are there)
    and each type's schema is found inside the installed package."""
    code = ("from evc.registry import REGISTRIES\n"
            "from evc.schema import Catalog, schema_dir\n"
            "c = Catalog()\n"
            "n = [c.validator(k, t) for k, r in REGISTRIES.items() for t in r.names()]\n"
            "print(schema_dir(), len(n))\n")
    out = _run([installed.bin / "python", "-c", code], cwd=installed.cwd).stdout.split()
    assert Path(out[0]).is_relative_to(installed.bin.parent), out      # the package's copy, not the clone's
    assert int(out[1]) >= len(SCHEMAS) - 1                              # etcd/root.json is no type


@pytest.fixture
def meter_sim():
    sim = SimSdm630(unit=1)
    sim.set(V=(230, 231, 229), A=(10, 12, 8), energy_Wh=12345)
    port = listen_tcp(reactor, [sim], 0)
    yield port.getHost().port
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_installed_twistd_evc_reads_a_meter_into_etcd(installed, etcd_session, etcd_root, meter_sim):
    store = EtcdStore(etcd_session.url, reactor)
    for key, value in (("type", "SDM630"), ("bus", f"127.0.0.1:{meter_sim}"), ("bus_addr", "1"),
                       ("interval_s", "0.2")):
        await store.put(f"{etcd_root}/meter/m1/config/{key}", value.encode())
    log = installed.cwd / "twistd.log"
    proc = subprocess.Popen(
        [str(installed.bin / "twistd"), "-n", "--pidfile=", "evc", "--etcd", etcd_session.url, "--root", etcd_root,
         "--lease-ttl", "5"],
        cwd=installed.cwd, env=_env(), stdout=open(log, "wb"), stderr=subprocess.STDOUT)

    async def reading():
        assert proc.poll() is None, f"twistd exited {proc.returncode}:\n{log.read_text(errors='replace')}"
        r = await store.range(f"{etcd_root}/meter/m1/state/A/L2")
        return r.kvs[0].value.decode() if r.kvs else None

    try:
        assert float(await wait_for(reading, 30, "meter/m1/state/A/L2 from the installed EVC")) == pytest.approx(12, abs=0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await store.close()


def test_schema_dir_from_the_environment_must_hold_the_root_schema(monkeypatch, tmp_path):
    from evc.schema import schema_dir
    monkeypatch.setenv("EVC_SCHEMA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"EVC_SCHEMA_DIR={tmp_path}: no etcd/root.json there"):
        schema_dir()


def test_schema_dir_of_a_clone_is_its_top_level_schema_folder(monkeypatch):
    """The test venv's compat-editable install has no evc/_schema/: the clone's schema/ is the one source."""
    from evc.schema import schema_dir
    monkeypatch.delenv("EVC_SCHEMA_DIR", raising=False)
    assert schema_dir() == REPO / "schema"
    assert not (REPO / "evc" / "_schema").exists()       # no second copy in the tree
