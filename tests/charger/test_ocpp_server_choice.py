"""charger/ocpp without config/server: it uses the site's only server/ocpp, followed live as servers come and go."""
import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from ocpp.v16 import call
from twisted.internet import task

from cs_fakes import FakeServer, FakeState, ROOT, T0
from cs_rig import Site, asyncio_test, close_cp, connect_cp, until, wait
from evc.charger.ocpp import OcppCharger, OcppChargerConfig
from evc.errors import ConfigError
from evc.events import EventBus
from evc.instance import Context, Problem
from evc.ocpp.bridge import to_deferred
from evc.schema import Catalog


@pytest.fixture
def site():
    s = Site()
    yield s
    pytest_twisted.blockon(to_deferred(s.stop()))


def charger_without_server(site, name="cp1", **config):
    settings = {"A_max": 16, "mode": "ON", "meter_interval_s": 0}
    settings.update(config)
    return site.configure("charger", name, "ocpp", **settings)


def test_the_schema_and_the_config_accept_a_charger_without_server():
    doc = Catalog().validate("charger", "ocpp", {"A_max": 16})
    assert "server" not in doc
    assert OcppChargerConfig(A_max=16).server is None


@asyncio_test
async def test_a_charger_without_server_uses_the_sites_only_server(site):
    site.server()
    charger_without_server(site)
    await site.start()
    charger = site.instance("charger", "cp1")
    await until(lambda: site.leaf("charger/cp1/state/server") == "cs", "the server it uses in state")
    cp = await connect_cp(site.url("cp1"), "cp1")
    assert (await cp.boot()).status == "Accepted"
    await until(lambda: charger.conn is not None, "the charger has its connection")
    await wait(site.state.flush())
    assert site.leaf("charger/cp1/state/error") is None
    await close_cp(cp)


@asyncio_test
async def test_a_second_server_makes_it_ask_for_config_server_without_dropping_the_charge_point(site):
    site.server()
    charger_without_server(site)
    await site.start()
    charger = site.instance("charger", "cp1")
    cp = await connect_cp(site.url("cp1"), "cp1")
    await cp.boot()
    await until(lambda: charger.conn is not None, "connected")

    site.server("cs2")
    error = await until(lambda: site.leaf("charger/cp1/state/error"), "the error once a second server runs")
    assert error.startswith("config/server: missing; the site has 2 server/ocpp (cs, cs2): name one")
    assert site.instance("charger", "cp1") is charger and charger.conn is not None   # the car is not paused
    assert (await cp.call(call.Heartbeat())).current_time

    await wait(site.delete("server/cs2"))
    await until(lambda: site.leaf("charger/cp1/state/error") is None, "the error cleared with one server again")
    assert charger.conn is not None and site.leaf("charger/cp1/state/server") == "cs"

    site.server("cs2")
    await until(lambda: site.leaf("charger/cp1/state/error"), "the error again")
    await wait(site.put("charger/cp1/config/server", "cs"))                 # naming one fixes it
    await until(lambda: site.instance("charger", "cp1") not in (None, charger), "restarted with config/server")
    await until(lambda: site.leaf("charger/cp1/state/error") is None, "no error with config/server given")
    await close_cp(cp)


@asyncio_test
async def test_without_a_server_the_error_says_so_and_a_server_added_later_is_used(site):
    charger_without_server(site)
    await site.start()
    error = await until(lambda: site.leaf("charger/cp1/state/error"), "the error")
    assert error.startswith("config/server: missing; the site has no server/ocpp")
    site.server()
    await until(lambda: site.leaf("charger/cp1/state/server") == "cs", "the new server is used")
    await until(lambda: site.leaf("charger/cp1/state/error") is None, "the error cleared")
    cp = await connect_cp(site.url("cp1"), "cp1")
    assert (await cp.boot()).status == "Accepted"
    await close_cp(cp)


@asyncio_test
async def test_with_two_servers_from_the_start_it_uses_none_and_names_both(site):
    site.server("cs")
    site.server("cs2")
    charger_without_server(site)
    await site.start()
    error = await until(lambda: site.leaf("charger/cp1/state/error"), "the error")
    assert error == "config/server: missing; the site has 2 server/ocpp (cs, cs2): name one"
    assert site.instance("charger", "cp1").server is None
    assert site.instance("server", "cs").chargers == {} and site.instance("server", "cs2").chargers == {}


@asyncio_test
async def test_a_restarted_server_is_used_again(site):
    site.server()
    charger_without_server(site)
    await site.start()
    charger = site.instance("charger", "cp1")
    old = site.instance("server", "cs")
    await until(lambda: charger.server is old, "bound")
    await wait(site.put("server/cs/config/heartbeat_interval_s", 60))       # restarts the server only
    await until(lambda: site.instance("server", "cs") not in (None, old), "the server restarted")
    new = site.instance("server", "cs")
    await until(lambda: charger.server is new and new.chargers.get("cp1") is charger, "registered again")
    assert site.instance("charger", "cp1") is charger
    cp = await connect_cp(site.url("cp1"), "cp1")
    assert (await cp.boot()).interval == 60
    await wait(site.state.flush())
    assert site.leaf("charger/cp1/state/error") is None
    await close_cp(cp)


@asyncio_test
async def test_the_only_server_needing_a_password_is_an_error_naming_password_hash(site):
    site.server(security_profile=1)
    charger_without_server(site)
    await site.start()
    error = await until(lambda: site.leaf("charger/cp1/state/error"), "the error")
    assert error.startswith("config/password_hash: server cs uses security profile 1")
    await wait(site.put("charger/cp1/config/password", "0123456789abcdef"))
    await until(lambda: site.leaf("charger/cp1/state/server") == "cs", "bound once the password is given")
    await until(lambda: site.leaf("charger/cp1/state/error") is None, "the error cleared")


@asyncio_test
async def test_a_cp_id_taken_on_the_only_server_is_an_error_until_the_other_charger_goes(site):
    site.server()
    charger_without_server(site, "a", cp_id="X")
    charger_without_server(site, "b", cp_id="X")
    await site.start()
    server = site.instance("server", "cs")
    await until(lambda: "X" in server.chargers, "one of them has X")
    holder = server.chargers["X"].ctx.name
    other = "b" if holder == "a" else "a"
    error = await until(lambda: site.leaf(f"charger/{other}/state/error"), "the other's error")
    assert error == f"config/cp_id: 'X' is already used by charger/{holder} on server cs"
    await wait(site.delete(f"charger/{holder}"))
    await until(lambda: server.chargers.get("X") is site.instance("charger", other), "the other one takes X")
    await until(lambda: site.leaf(f"charger/{other}/state/error") is None, "its error cleared")


# --- on a task.Clock: when the error is written ---

class Servers:
    """The site's running servers as ctx.find sees them, and the events the supervisor would publish."""

    def __init__(self, events):
        self.events = events
        self.running: dict = {}

    def start(self, name, server):
        server.type_name = "ocpp"
        server.connections = {}
        self.running[name] = server
        self.events.publish(("instance", "server", name), ("started", server))

    def stop(self, name):
        server = self.running.pop(name)
        self.events.publish(("instance", "server", name), ("stopped", server))


def clock_rig(problems=None):
    clock = task.Clock()
    clock.advance(T0)
    events, state = EventBus(), FakeState()
    servers = Servers(events)
    written = []
    state_set = state.set
    state.set = lambda path, value, deadband=None: (written.append((path, value)), state_set(path, value))

    def resolve(kind, name):
        raise ConfigError(f"{kind} {name!r} is not running")

    ctx = Context(kind="charger", name="cp1", clock=clock, state=state, resolve=resolve, root=ROOT, events=events,
                  find=lambda kind: dict(servers.running) if kind == "server" else {},
                  problems=lambda kind: (problems or {}).get(kind, {}))
    charger = OcppCharger(ctx, OcppChargerConfig(A_max=16, meter_interval_s=0, local_list=False))
    return clock, servers, state, written, charger


def test_a_server_that_starts_in_the_same_tick_leaves_no_passing_error():
    """At site start the chargers start before the servers (nothing orders them): no 'no server' error flashes."""
    clock, servers, state, written, charger = clock_rig()
    charger.startService()
    server = FakeServer()
    servers.start("cs", server)
    clock.advance(0)
    assert [w for w in written if w[0] == "error"] == []
    assert server.registered == {"cp1": charger} and charger.server is server and state.values["server"] == "cs"
    charger.stopService()
    assert server.registered == {}


def test_a_server_that_stops_is_let_go_and_the_error_says_none_runs():
    clock, servers, state, written, charger = clock_rig(
        problems={"server": {"cs": Problem("ocpp", "config/listen: cannot listen on ...", {})}})
    charger.startService()
    server = FakeServer()
    servers.start("cs", server)
    clock.advance(0)
    servers.stop("cs")
    clock.advance(0)
    assert charger.server is None and server.registered == {} and "server" not in state.values
    assert state.values["error"] == ("config/server: missing; the site has no running server/ocpp (configured but "
                                     "not running: cs; see their state/error)")
    charger.stopService()
    assert "error" not in state.values           # a stopped charger leaves no error of its own behind


def test_among_several_servers_the_one_holding_its_connection_is_kept():
    """A charger restarted by a config change while two servers run keeps the server its charge point is on."""
    clock, servers, state, written, charger = clock_rig()
    a, b = FakeServer(), FakeServer()
    servers.start("cs", a)
    servers.start("cs2", b)
    b.connections["cp1"] = object()            # parked by cs2 for the restarting charger
    charger.startService()
    clock.advance(0)
    assert charger.server is b and b.registered == {"cp1": charger}
    assert state.values["error"] == ("config/server: missing; the site has 2 server/ocpp (cs, cs2): name one "
                                     "(it keeps using cs2 meanwhile)")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["start", "stop", "tick"]), st.sampled_from(["cs", "cs2", "cs3"])),
                max_size=25))
def test_any_sequence_of_servers_coming_and_going_leaves_one_consistent_choice(ops):
    """After each tick: one server → used, no error; none → error says so; several → error names them all, and the
    charger is registered with at most one running server, the one it uses."""
    clock, servers, state, written, charger = clock_rig()
    charger.startService()
    made = []
    for op, name in ops + [("tick", "")]:
        if op == "start" and name not in servers.running:
            made.append(server := FakeServer())
            servers.start(name, server)
        elif op == "stop" and name in servers.running:
            servers.stop(name)
        if op != "tick":
            continue
        clock.advance(0)
        running = servers.running
        error = state.values.get("error")
        assert [s for s in made if s.registered] == ([charger.server] if charger.server is not None else [])
        if len(running) == 1:
            assert charger.server is next(iter(running.values())) and error is None
            assert state.values["server"] == next(iter(running))
        elif not running:
            assert charger.server is None and error.startswith("config/server: missing; the site has no server/ocpp")
        else:
            assert error.startswith(f"config/server: missing; the site has {len(running)} server/ocpp "
                                    f"({', '.join(sorted(running))}): name one")
            assert charger.server is None or charger.server in running.values()
    charger.stopService()
    assert not any(s.registered for s in made) and "error" not in state.values
