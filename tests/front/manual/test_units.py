"""front/manual without the network: config checks, the login limit and sessions on a task.Clock, the site view."""
import json

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import task

from evc.errors import ConfigError
from evc.front.manual.api import valid_id_tag
from evc.front.manual.auth import Authenticator, RateLimit, User, parse_users
from evc.front.manual.front import ManualFrontConfig
from evc.front.manual.site import SiteView
from evc.ocpp.cs_auth import hash_password
from evc.schema import Catalog
from evc.store.interface import Event


def test_no_users_only_on_loopback():
    assert ManualFrontConfig().listen == "127.0.0.1:8080"
    ManualFrontConfig(listen="[::1]:8080")
    with pytest.raises(ConfigError, match=r"^config/users: .*loopback.*0\.0\.0\.0:8080"):
        ManualFrontConfig(listen="0.0.0.0:8080")
    ManualFrontConfig(listen="0.0.0.0:8080", users={"ann": {"password": hash_password("pw", 1)}})


def test_config_errors_name_the_leaf():
    with pytest.raises(ConfigError, match=r"^config/users/ann/password: not a pbkdf2-sha256 hash"):
        ManualFrontConfig(users={"ann": {"password": "plain-text"}})
    with pytest.raises(ConfigError, match=r"^config/tls_key: give tls_cert and tls_key together"):
        ManualFrontConfig(tls_cert="/etc/evc/web.pem")
    with pytest.raises(ConfigError, match=r"^config/listen:"):
        ManualFrontConfig(listen="8080")
    with pytest.raises(ConfigError, match=r"^config/start_id_tag:"):
        ManualFrontConfig(start_id_tag="with space")
    # The schema refuses what the class would: a role that does not exist, a password that is not a hash.
    catalog = Catalog()
    with pytest.raises(ConfigError, match="role"):
        catalog.validate("front", "manual", {"users": {"ann": {"password": hash_password("pw", 1), "role": "boss"}}})
    with pytest.raises(ConfigError, match="password"):
        catalog.validate("front", "manual", {"users": {"ann": {"password": "secret"}}})


def test_users_parse_with_default_role_operator():
    users = parse_users({"ann": {"password": hash_password("pw", 1)}, "bo": {"password": hash_password("x", 1),
                                                                         "role": "viewer"}})
    assert users["ann"].role == "operator" and users["bo"].role == "viewer"
    assert "pw" not in repr(users["ann"]) and "pbkdf2" not in repr(users["ann"])


def test_login_limit_per_address_lets_go_after_the_window():
    clock = task.Clock()
    limit = RateLimit(clock, attempts=5, window_s=60)
    for _ in range(5):
        assert limit.retry_after_s("10.0.0.1") == 0
        limit.failed("10.0.0.1")
    assert limit.retry_after_s("10.0.0.1") == 60
    assert limit.retry_after_s("10.0.0.2") == 0             # another address is not affected
    clock.advance(30)
    assert limit.retry_after_s("10.0.0.1") == 30
    clock.advance(30)
    assert limit.retry_after_s("10.0.0.1") == 0


def test_a_flood_from_many_addresses_keeps_memory_bounded():
    clock = task.Clock()
    limit = RateLimit(clock, max_addresses=100)
    for i in range(1000):
        limit.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limit._failures) <= 100


@pytest.mark.parametrize("good", [True, False])
def test_sessions_expire_and_basic_logins_are_remembered_only_when_right(good):
    from twisted.internet import defer
    clock = task.Clock()
    auth = Authenticator({"ann": User("ann", hash_password("right", 1), "operator")}, clock, None, session_ttl_s=60)
    got = []
    defer.ensureDeferred(auth.check("ann", "right" if good else "wrong")).addCallback(got.append)
    login = got[0]                      # without a reactor the check runs inline
    if not good:
        assert login is None
        return
    s = auth.open_session(login)
    assert auth.session(s.token) is s and auth.session("forged") is None and auth.session(None) is None
    clock.advance(59)
    assert auth.session(s.token) is s
    clock.advance(1)
    assert auth.session(s.token) is None


@given(st.text(max_size=25))
@settings(max_examples=300, deadline=None)
def test_token_ids_are_ocpp_id_tags_and_never_a_path(text):
    ok = valid_id_tag(text)
    assert ok == (1 <= len(text) <= 20 and all(0x21 <= ord(ch) <= 0x7E and ch != "/" for ch in text))


def test_the_view_follows_the_tree_and_hides_chargers_of_other_fronts():
    clock = task.Clock()
    clock.advance(1_800_000_000 + 3600)          # 2027-01-15T09:00:00Z
    view = SiteView("/evc/x", ("s1",), clock)
    leaves = {
        "charger/s1/type": "EVCC_manual", "charger/s1/config/mode": "ON", "charger/s1/state/online": "true",
        "charger/s1/state/vehicle": "charging", "charger/s1/state/setpoint_A": "16.0",
        "charger/s1/state/actual_A/L1": "15.9", "charger/s1/data/sessions/current": "S1",
        "charger/s1/data/sessions/S1": json.dumps({"id": "S1", "state": "charging", "start_time":
                                                   "2027-01-15T08:00:00.000Z", "energy_Wh": 100}),
        "charger/s1/state/session/id": "S1", "charger/s1/state/session/energy_Wh": "250",
        "charger/s2/type": "EVCC_manual", "charger/s2/state/error": "config/conn: missing",
        "control/c/type": "builtin", "control/c/config/A_max/L1": "25", "control/c/config/A_max/L2": "25",
        "control/c/config/A_max/L3": "20", "control/c/state/allocations/s1/reason": "limited by L1",
        "meter/grid/type": "SDM630", "meter/grid/state/A/L2": "7.5", "meter/grid/state/stale": "false",
        "charger/s1/data/outbox/1": "ignored",
    }
    changed = view.apply([Event("put", f"/evc/x/{k}", v.encode(), 1) for k, v in leaves.items()])
    assert ("charger", "s1") in changed and ("charger", "s2") not in changed and ("error", "charger/s2") in changed
    assert "charger/s1/data/outbox/1" not in view.leaves
    c = view.charger("s1")
    assert c["status"] == "charging" and c["setpoint_A"] == 16.0 and c["current_A"] == [15.9, None, None]
    assert c["session"]["energy_Wh"] == 250 and c["session"]["duration_s"] == 3600     # the live energy
    assert c["reason"] == "limited by L1" and c["phases"] == 3
    assert view.control()["A_max"] == [25.0, 25.0, 20.0]
    assert view.meter("grid")["A"] == [None, 7.5, None]
    assert [ch["name"] for ch in view.site()["chargers"]] == ["s1"]
    assert view.errors() == []                                      # s2's error is another front's business
    # A leaf removed (the state lease ends): the charger goes unknown, its reason with control's state.
    changed = view.apply([Event("delete", "/evc/x/charger/s1/state/online", None, 2),
                          Event("delete", "/evc/x/charger/s1/state/vehicle", None, 2)])
    assert changed == {("charger", "s1")}
    assert view.charger("s1")["status"] == "unknown"


class FakeRequest:
    """What EventHub needs of a twisted.web request: write, finish, notifyFinish, and the transport's buffer."""

    def __init__(self):
        from twisted.internet import defer
        self.written = []
        self.finished = False
        self._finish = defer.Deferred()
        self.channel = type("Channel", (), {})()
        self.channel.transport = type("Transport", (), {"dataBuffer": b"", "_tempDataBuffer": [],
                                                        "aborted": False})()
        self.channel.transport.abortConnection = lambda: setattr(self.channel.transport, "aborted", True)

    def write(self, data):
        if self.finished:
            raise RuntimeError("write after finish")
        self.written.append(data)

    def finish(self):
        self.finished = True

    def notifyFinish(self):
        return self._finish

    def gone(self):
        self.finished = True
        self._finish.errback(Exception("connection lost"))


def _hub():
    from evc.front.manual.events import EventHub
    clock = task.Clock()
    built = []

    def build(kind, ident):
        built.append((kind, ident))
        return kind, {"name": ident}
    hub = EventHub(clock, build, tick_s=0.1)
    hub.start()
    return clock, hub, built


def test_changes_are_coalesced_per_tick_and_keepalives_flow():
    from evc.front.manual.auth import Login
    clock, hub, built = _hub()
    r = FakeRequest()
    hub.add(r, Login(None, "operator", "t"), b"event: site\ndata: {}\n\n")
    for _ in range(50):
        hub.changed({("charger", "s1")})
    hub.changed({("meter", "grid")})
    clock.advance(0.1)
    assert built == [("meter", "grid"), ("charger", "s1")]           # one event per object, meters first
    assert r.written[-1].count(b"event: ") == 2
    clock.advance(15)
    assert r.written[-1] == b": keepalive\n\n"


def test_a_client_that_goes_away_or_stops_reading_is_dropped():
    from evc.front.manual.auth import Login
    clock, hub, _ = _hub()
    gone, slow, fine = FakeRequest(), FakeRequest(), FakeRequest()
    for r in (gone, slow, fine):
        hub.add(r, Login(None, "operator", "t"), b"")
    gone.gone()
    assert len(hub.streams) == 2
    slow.channel.transport.dataBuffer = b"x" * (hub.max_buffer_bytes + 1)
    hub.changed({("charger", "s1")})
    clock.advance(0.1)
    assert slow.channel.transport.aborted and len(hub.streams) == 1 and hub.streams[0].request is fine
    assert b"event: charger" in fine.written[-1]
    hub.stop()
    assert fine.finished and hub.streams == []


_KEYS = st.sampled_from(["charger/s1/state/setpoint_A", "charger/s1/state/online", "charger/s1/config/mode",
                         "charger/s1/type", "meter/grid/state/A/L1", "control/c/state/allocations/s1/reason",
                         "charger/s1/data/sessions/current", "charger/s1/data/sessions/S1", "token/T1/config/owner",
                         "charger/s2/state/error", "charger/s1/data/outbox/9", "junk/x/y"])
_VALUES = st.one_of(st.none(), st.sampled_from(["16.0", "true", "false", "ON", "EVCC_manual", "S1", "{}", "[1]",
                                                "not json", '{"state": "charging", "start_time": "x"}', ""]))


@given(st.lists(st.tuples(_KEYS, _VALUES), max_size=40))
@settings(max_examples=200, deadline=None)
def test_the_view_of_any_sequence_of_changes_is_the_view_of_its_end_and_never_crashes(changes):
    """Puts and deletes in any order (a lease ending, a restart, garbage in a leaf): the view equals one built from
    the final tree, and building every object works whatever the leaves hold."""
    clock = task.Clock()
    live = SiteView("/r", ("s1",), clock)
    final: dict = {}
    for i, (key, value) in enumerate(changes):
        live.apply([Event("put" if value is not None else "delete", f"/r/{key}",
                          value.encode() if value is not None else None, i + 1)])
        if value is None:
            final.pop(key, None)
        else:
            final[key] = value
    fresh = SiteView("/r", ("s1",), clock)
    fresh.apply([Event("put", f"/r/{k}", v.encode(), 1) for k, v in final.items()])
    assert live.leaves == fresh.leaves
    assert live.site() == fresh.site()
    assert live.tokens() == fresh.tokens()
    live.sessions()
