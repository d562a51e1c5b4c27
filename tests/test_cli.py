"""The `evc` command: load/dump/validate a site document, status, errors that name file, line and leaf."""
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
import yaml

from evc import cli
from evc.registry import KINDS, PLANNED, Registry
from evc.schema import Catalog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Type:
    pass


def _schema(props, required=()):
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "description": "test type", "type": "object",
            "additionalProperties": False, "required": list(required), "properties": props}


@pytest.fixture
def catalog(tmp_path):
    """Types of our own, so these tests pin the CLI's behaviour whatever the real schemas say."""
    regs = {k: Registry(k) for k in KINDS}
    for kind, name in (("conn", "tconn"), ("meter", "tmeter"), ("charger", "tcharger"), ("token", "token")):
        regs[kind].register(name)(type(f"{kind}_{name}", (_Type,), {}))
    files = {
        "conn/tconn.json": _schema({"remote": {"type": "string", "description": "host:port"}}),
        "meter/tmeter.json": _schema({
            "type": {"type": "string", "description": "the seed's form"},
            "bus": {"type": "string", "description": "host:port", "examples": ["127.0.0.1:502"]},
            "bus_addr": {"type": "integer", "minimum": 1, "maximum": 247, "default": 1, "description": "address"},
            "conn": {"type": "string", "x-ref": "conn", "description": "the conn"}}, ["bus"]),
        "charger/tcharger.json": _schema({
            "meter": {"type": "string", "x-ref": "meter", "description": "its meter"},
            "mode": {"enum": ["OFF", "ON"], "default": "OFF", "description": "mode"},
            "A_max": {"type": "number", "minimum": 6, "maximum": 80, "default": 16, "description": "limit"},
            "label": {"type": "string", "description": "a name"},
            "phase_map": {"type": "object", "description": "phases",
                          "properties": {"L1": {"type": "integer", "description": "grid phase of L1"}}}},
            ["meter"]),
        "token/token.json": _schema({"note": {"type": "string", "description": "who"}}),
    }
    (tmp_path / "etcd").mkdir()
    (tmp_path / "etcd" / "root.json").write_text("{}")
    for rel, body in files.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(body))
    return Catalog(registries=regs, directory=tmp_path)


GOOD = """\
meter:
  m1:
    config:
      type: tmeter          # the seed's form
      bus: 10:20
      bus_addr: 3
charger:
  s1:
    type: tcharger
    config:
      meter: m1
      mode: OFF
      A_max: 32
      label: "0123"
"""


def write(tmp_path, text, name="site.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def validate(catalog, path):
    out, err = io.StringIO(), io.StringIO()
    args = cli.build_parser().parse_args(["config", "validate", path])
    code = cli.cmd_validate(args, out, err, catalog)
    return code, out.getvalue(), err.getvalue()


# --- reading files ---

def test_yaml_keeps_seed_strings_as_strings():
    """YAML 1.1 would make OFF false and 10:20 the number 620; site files read them as the text."""
    doc = yaml.load("mode: OFF\nbus: 10:20\non: yes\nn: 0x10\nf: 1.5\nb: true\n", Loader=cli._SiteLoader)
    assert doc == {"mode": "OFF", "bus": "10:20", "on": "yes", "n": 16, "f": 1.5, "b": True}


def test_valid_file_passes(tmp_path, catalog):
    code, out, err = validate(catalog, write(tmp_path, GOOD))
    assert (code, err) == (0, "")
    assert "2 instances, valid" in out


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, catalog):
    path = write(tmp_path, "meter:\n  m1:\n    config: {bus: [1, 2}\n")
    code, _, err = validate(catalog, path)
    assert code == 1
    assert f"{path}:3:" in err and "not valid YAML" in err
    assert "Traceback" not in err


def test_json_syntax_error_names_file_line_and_column(tmp_path, catalog):
    path = write(tmp_path, '{"meter": {\n  "m1": {"config": {"bus": 1,}}\n}}\n', "site.json")
    code, _, err = validate(catalog, path)
    assert code == 1
    assert f"{path}:2:" in err and "not valid JSON" in err


def test_key_given_twice_is_an_error_naming_both_lines(tmp_path, catalog):
    path = write(tmp_path, "meter:\n  m1:\n    config:\n      bus: a:1\n      bus: b:2\n")
    code, _, err = validate(catalog, path)
    assert code == 1
    assert f"{path}:5:" in err and "given twice (first on line 4)" in err


def test_missing_file_is_a_sentence(tmp_path, catalog):
    code, _, err = validate(catalog, str(tmp_path / "nope.yaml"))
    assert code == 1 and "nope.yaml: cannot read it" in err


@pytest.mark.parametrize("text, expect", [
    ("- a\n- b\n", "must hold a mapping of kinds"),
    ("meters:\n  m1: {}\n", "meters: not a kind"),
    ("meter: [m1]\n", "meter: must map instance names"),
    ("meter:\n  m1: tmeter\n", "meter/m1: must be a mapping"),
    ("meter:\n  m1:\n    type: tmeter\n    state:\n      W: 1\n", "meter/m1/state: only `type` and `config`"),
    ("meter:\n  m1:\n    type: tmeter\n    config: 3\n", "meter/m1/config: must be a mapping"),
])
def test_wrong_shape_names_the_path(tmp_path, catalog, text, expect):
    path = write(tmp_path, text)
    code, _, err = validate(catalog, path)
    assert code == 1
    assert expect in err and path in err


def test_every_schema_error_is_printed_with_its_leaf_and_line(tmp_path, catalog):
    path = write(tmp_path, """\
        meter:
          m1:
            type: tmeter
            config:
              bus_addr: 300
        charger:
          s1:
            type: tcharger
            config:
              meter: m1
              A_max: 90
              colour: red
        """)
    code, _, err = validate(catalog, path)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"error: {path}:4: meter/m1/config/bus: missing (required)" in lines
    assert f"error: {path}:5: meter/m1/config/bus_addr: 300 is greater than the maximum of 247" in lines
    assert f"error: {path}:11: charger/s1/config/A_max: 90 is greater than the maximum of 80" in lines
    assert f"error: {path}:12: charger/s1/config/colour: not a known setting" in lines
    assert len(lines) == 4
    assert err.rstrip().endswith("4 errors")


def test_dangling_reference_is_an_error(tmp_path, catalog):
    path = write(tmp_path, GOOD.replace("meter: m1", "meter: m9"))
    code, _, err = validate(catalog, path)
    assert code == 1
    assert f"{path}:11: charger/s1/config/meter: meter 'm9' is not configured" in err


def test_unknown_type_names_the_leaf_and_known_types(tmp_path, catalog):
    path = write(tmp_path, GOOD.replace("type: tmeter", "type: tmeterr"))
    code, _, err = validate(catalog, path)
    assert code == 1
    assert f"{path}:4: meter/m1/config/type: unknown meter type 'tmeterr' (known: tmeter)" in err


def test_missing_type_is_an_error(tmp_path, catalog):
    code, _, err = validate(catalog, write(tmp_path, "meter:\n  m1:\n    config:\n      bus: a:1\n"))
    assert code == 1 and "meter/m1/type: missing" in err


def test_token_needs_no_type(tmp_path, catalog):
    code, _, err = validate(catalog, write(tmp_path, "token:\n  04A2B3:\n    config:\n      note: Anna\n"))
    assert code == 0, err


def test_planned_type_is_a_warning_not_an_error(tmp_path, catalog, monkeypatch):
    from evc import registry
    monkeypatch.setitem(registry.PLANNED, "reader", {"holo"})      # a type the design names before it lands
    path = write(tmp_path, GOOD + "reader:\n  r9:\n    type: holo\n    config:\n      charger: s1\n")
    code, out, err = validate(catalog, path)
    assert code == 0
    assert "warning:" in err and "reader/r9/type: reader type 'holo' is not available yet" in err
    assert "1 warning" in out


def test_leaf_decoding_error_names_the_leaf(tmp_path, catalog):
    """A leaf that holds text where the schema wants a number is refused as the running EVC would."""
    path = write(tmp_path, GOOD.replace("A_max: 32", "A_max: lots"))
    code, _, err = validate(catalog, path)
    assert code == 1 and "charger/s1/config/A_max" in err


# --- against etcd ---

def run(catalog, etcd, root, *argv):
    from twisted.internet import reactor
    out, err = io.StringIO(), io.StringIO()
    d = cli.run_async(["--etcd", etcd.url, "--root", root, *argv], reactor, out, err, catalog)
    return d, out, err


async def call(catalog, etcd, root, *argv):
    d, out, err = run(catalog, etcd, root, *argv)
    code = await d
    return code, out.getvalue(), err.getvalue()


def etcd_get(etcd, root):
    out = etcd.etcdctl("get", "--prefix", root + "/")
    lines = out.splitlines()
    return dict(zip(lines[0::2], lines[1::2]))


@pytest_twisted.ensureDeferred
async def test_load_writes_one_key_per_leaf(tmp_path, catalog, etcd_session, etcd_root):
    code, out, err = await call(catalog, etcd_session, etcd_root, "config", "load", write(tmp_path, GOOD))
    assert code == 0, err
    assert etcd_get(etcd_session, etcd_root) == {
        f"{etcd_root}/charger/s1/config/A_max": "32",
        f"{etcd_root}/charger/s1/config/label": "0123",
        f"{etcd_root}/charger/s1/config/meter": "m1",
        f"{etcd_root}/charger/s1/config/mode": "OFF",
        f"{etcd_root}/charger/s1/type": "tcharger",
        f"{etcd_root}/meter/m1/config/bus": "10:20",
        f"{etcd_root}/meter/m1/config/bus_addr": "3",
        f"{etcd_root}/meter/m1/config/type": "tmeter",
    }
    assert "8 leaves written, 0 unchanged, 0 deleted (2 instances" in out
    code, out, err = await call(catalog, etcd_session, etcd_root, "config", "load", write(tmp_path, GOOD))
    assert "0 leaves written, 8 unchanged" in out


@pytest_twisted.ensureDeferred
async def test_invalid_file_writes_nothing_unless_forced(tmp_path, catalog, etcd_session, etcd_root):
    path = write(tmp_path, GOOD.replace("bus_addr: 3", "bus_addr: 0"))
    code, out, err = await call(catalog, etcd_session, etcd_root, "config", "load", path)
    assert code == 1
    assert "meter/m1/config/bus_addr: 0 is less than the minimum of 1" in err and "nothing written" in err
    assert etcd_get(etcd_session, etcd_root) == {}
    code, out, err = await call(catalog, etcd_session, etcd_root, "config", "load", "--force", path)
    assert code == 0
    assert etcd_get(etcd_session, etcd_root)[f"{etcd_root}/meter/m1/config/bus_addr"] == "0"


@pytest_twisted.ensureDeferred
async def test_reference_may_name_an_instance_already_in_etcd(tmp_path, catalog, etcd_session, etcd_root):
    etcd_session.etcdctl("put", f"{etcd_root}/meter/m2/type", "tmeter")
    path = write(tmp_path, "charger:\n  s2:\n    type: tcharger\n    config:\n      meter: m2\n")
    code, _, err = await call(catalog, etcd_session, etcd_root, "config", "load", path)
    assert code == 0, err
    code, _, err = await call(catalog, etcd_session, etcd_root, "config", "load", "--replace", path)
    assert code == 1 and f"charger/s2/config/meter: meter 'm2' is not configured (it is not in {path} nor" in err


@pytest_twisted.ensureDeferred
async def test_replace_deletes_config_not_in_the_file_but_never_state_or_data(tmp_path, catalog, etcd_session,
                                                                              etcd_root):
    for key, value in (("meter/old/type", "tmeter"), ("meter/old/config/bus", "x:1"), ("meter/old/state/W", "5"),
                       ("charger/s1/config/colour", "red"), ("charger/s1/data/sessions/1", "{}"),
                       ("charger/s1/state/status", "running"), ("unrelated/key", "stays")):
        etcd_session.etcdctl("put", f"{etcd_root}/{key}", value)
    code, out, err = await call(catalog, etcd_session, etcd_root, "config", "load", "--replace",
                                write(tmp_path, GOOD))
    assert code == 0, err
    kv = etcd_get(etcd_session, etcd_root)
    assert f"{etcd_root}/meter/old/type" not in kv and f"{etcd_root}/meter/old/config/bus" not in kv
    assert f"{etcd_root}/charger/s1/config/colour" not in kv
    assert kv[f"{etcd_root}/meter/old/state/W"] == "5"
    assert kv[f"{etcd_root}/charger/s1/data/sessions/1"] == "{}"
    assert kv[f"{etcd_root}/charger/s1/state/status"] == "running"
    assert kv[f"{etcd_root}/unrelated/key"] == "stays"
    assert "3 deleted" in out


@pytest_twisted.ensureDeferred
async def test_load_of_more_leaves_than_one_txn_takes(tmp_path, catalog, etcd_session, etcd_root):
    doc = {"token": {f"tag{i:03}": {"config": {"note": f"user {i}"}} for i in range(300)}}
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(doc))
    code, out, err = await call(catalog, etcd_session, etcd_root, "config", "load", str(path))
    assert code == 0, err
    kv = etcd_get(etcd_session, etcd_root)
    assert len(kv) == 300 and kv[f"{etcd_root}/token/tag299/config/note"] == "user 299"


@pytest_twisted.ensureDeferred
async def test_dump_gives_back_what_was_loaded(tmp_path, catalog, etcd_session, etcd_root):
    path = write(tmp_path, GOOD)
    await call(catalog, etcd_session, etcd_root, "config", "load", path)
    etcd_session.etcdctl("put", f"{etcd_root}/meter/m1/state/W", "230")
    code, out, err = await call(catalog, etcd_session, etcd_root, "config", "dump")
    assert code == 0, err
    dumped = yaml.load(out, Loader=cli._SiteLoader)
    assert dumped == yaml.load(GOOD, Loader=cli._SiteLoader)
    assert dumped["charger"]["s1"]["config"]["label"] == "0123"    # a string by its schema, not the number 123
    code, out, err = await call(catalog, etcd_session, etcd_root, "config", "dump", "--format", "json")
    assert json.loads(out) == dumped
    assert list(json.loads(out)) == ["charger", "meter"]


@pytest_twisted.ensureDeferred
async def test_status_shows_every_instance_with_live_values_and_errors(catalog, etcd_session, etcd_root):
    for key, value in (("meter/m1/config/type", "tmeter"), ("meter/m1/state/status", "running"),
                       ("meter/m1/state/W_total", "2300.4"), ("meter/m1/state/W/L1", "700"),
                       ("meter/m1/state/A/L1", "3.31"), ("meter/m1/state/A/L2", "3.3"),
                       ("meter/m1/state/A/L3", "3.4"), ("meter/m1/state/stale", "false"),
                       ("charger/s1/type", "EVCC_manual"), ("charger/s1/state/status", "error"),
                       ("charger/s1/state/error", "type: charger type 'EVCC_manual' is not available yet"),
                       ("reader/r1/type", "line")):
        etcd_session.etcdctl("put", f"{etcd_root}/{key}", value)
    code, out, err = await call(catalog, etcd_session, etcd_root, "status")
    assert code == 1     # an instance is in error
    lines = out.splitlines()
    assert lines[0].split() == ["INSTANCE", "TYPE", "STATUS", "LIVE", "ERROR"]
    assert lines[1].split()[:3] == ["charger/s1", "EVCC_manual", "error"]
    assert lines[1].endswith("type: charger type 'EVCC_manual' is not available yet")
    assert lines[2].split()[:3] == ["meter/m1", "tmeter", "running"]
    assert "2300 W, 3.3/3.3/3.4 A" in lines[2]
    assert lines[3].split() == ["reader/r1", "line", "—"]
    code, out, err = await call(catalog, etcd_session, etcd_root, "status", "--json")
    rows = {r["instance"]: r for r in json.loads(out)}
    assert rows["meter/m1"]["state"]["A/L1"] == 3.31 and rows["meter/m1"]["state"]["W_total"] == 2300.4
    assert rows["meter/m1"]["status"] == "running" and rows["meter/m1"]["error"] is None
    assert rows["charger/s1"]["error"].startswith("type: charger type")
    assert rows["reader/r1"]["status"] is None


@pytest_twisted.ensureDeferred
async def test_status_of_an_empty_root_says_so(catalog, etcd_session, etcd_root):
    code, out, err = await call(catalog, etcd_session, etcd_root, "status")
    assert code == 0 and f"nothing under {etcd_root}" in out


def test_stale_meter_and_its_error_counters_are_shown():
    inst = cli.InstanceStatus("meter", "m1", state={"W_total": 10, "stale": True, "status": "running",
                                                    "errors/timeouts": 4, "errors/exceptions": 0})
    assert cli.live_summary(inst) == "10 W, STALE, errors: timeouts 4"


# --- the command as users run it ---

def evc(*argv, env=None):
    e = dict(os.environ)
    e.pop("EVC_ETCD_URL", None)
    e.pop("EVC_ROOT", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "evc.cli", *argv], capture_output=True, text=True, env=e,
                          cwd=REPO, timeout=60)


@pytest.mark.parametrize("argv, expect", [
    ((), "required: COMMAND"),
    (("config",), "required: ACTION"),
    (("status",), "--root is required"),
    (("--root", "evc/x", "status"), "must start with '/'"),
    (("--root", "/evc/x", "--etcd", "127.0.0.1:2379", "status"), "must be an http:// or https:// URL"),
    (("config", "dump", "--format", "xml"), "invalid choice: 'xml'"),
])
def test_usage_errors_exit_2(argv, expect):
    r = evc(*argv)
    assert r.returncode == 2 and expect in r.stderr, r.stderr


def test_unreachable_etcd_is_a_sentence_and_no_password_is_printed(tmp_path):
    from evc.etcdserver import free_port
    url = f"http://127.0.0.1:{free_port()}"
    r = evc("--etcd", url, "--root", "/evc/x", "--etcd-user", "root", "status",
            env={"EVC_ETCD_PASSWORD": "s3cret-pw"})
    assert r.returncode == 1
    assert f"etcd at {url} unreachable" in r.stderr and "is etcd running" in r.stderr
    assert "Traceback" not in r.stderr and "s3cret-pw" not in r.stderr + r.stdout


def test_user_without_password_is_explained():
    r = evc("--root", "/evc/x", "--etcd-user", "root", "status")
    assert r.returncode == 1 and "EVC_ETCD_PASSWORD" in r.stderr


def test_env_gives_url_and_root(etcd_session, etcd_root):
    etcd_session.etcdctl("put", f"{etcd_root}/meter/m9/config/type", "SDM630")
    r = evc("config", "dump", "--format", "json", env={"EVC_ETCD_URL": etcd_session.url, "EVC_ROOT": etcd_root})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"meter": {"m9": {"config": {"type": "SDM630"}}}}


@pytest_twisted.ensureDeferred
async def test_planned_type_loads_with_a_warning(tmp_path, catalog, etcd_session, etcd_root):
    kind, name = _a_planned_type()
    path = write(tmp_path, GOOD + f"{kind}:\n  x1:\n    type: {name}\n    config:\n      chargers: '*'\n")
    code, out, err = await call(catalog, etcd_session, etcd_root, "config", "load", path)
    assert code == 0, err
    assert f"{kind}/x1/type: {kind} type '{name}' is not available yet" in err and "error:" not in err
    assert etcd_get(etcd_session, etcd_root)[f"{etcd_root}/{kind}/x1/type"] == name


def _a_planned_type():
    from evc.registry import REGISTRIES
    planned = sorted((k, n) for k, names in PLANNED.items() for n in names if n not in REGISTRIES[k].names())
    if not planned:
        pytest.skip("every type of the design is available")
    return planned[0]


def test_the_seeds_old_placeholder_reader_type_is_now_simply_unknown(tmp_path):
    """reader "serial" was the seed's stand-in until the real reader types landed: now it is a typo like any other."""
    path = write(tmp_path, "reader:\n  r1:\n    type: serial\n    config:\n      charger: s1\n")
    code, _, err = validate(Catalog(), path)
    assert code == 1
    assert "reader/r1/type: unknown reader type 'serial' (known: PN532, QUIO, RDM6300, line)" in err


def test_types_lists_settings_and_what_is_not_available_yet(catalog):
    out = io.StringIO()
    assert cli.cmd_types(cli.build_parser().parse_args(["types"]), out, io.StringIO(), catalog) == 0
    text = out.getvalue()
    assert "meter/tmeter\n" in text and "  bus_addr: integer (≥ 1, ≤ 247) (default 1)\n" in text
    assert "  bus: string (required)\n" in text
    assert "reader/serial" not in text
    for kind, name in [(k, n) for k, names in PLANNED.items() for n in names]:
        assert f"{kind}/{name} (not available yet)\n" in text
