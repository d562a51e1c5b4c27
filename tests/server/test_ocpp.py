"""server/ocpp on real loopback websockets: who may connect, how, and what the server keeps in state."""
import asyncio
import datetime
import ipaddress
import socket
import ssl

import pytest
import pytest_twisted
import websockets
from ocpp.v16 import call
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from websockets.exceptions import InvalidStatus

from cs_rig import (
    RawClient, Site, asyncio_test, close_cp, connect_cp, open_ws, until, wait,
)
from evc.ocpp.bridge import to_deferred
from evc.ocpp.cs_auth import hash_password
from evc.charger.ocpp import OcppCharger
from evc.server.ocpp import OcppServer, OcppServerConfig, host_port
from evc.errors import ConfigError
from evc.store import EtcdStore


@pytest.fixture
def site():
    s = Site()
    yield s
    pytest_twisted.blockon(to_deferred(s.stop()))


async def refused_with(coro) -> int:
    with pytest.raises(InvalidStatus) as e:
        ws = await coro
        await ws.close()
    return e.value.response.status_code


# --- handshakes ---

@asyncio_test
async def test_a_configured_charger_connects_and_the_server_shows_it(site):
    site.server()
    site.charger("cp1")
    await site.start()
    server = site.instance("server", "cs")
    cp = await connect_cp(site.url("cp1"), "cp1")
    assert cp._connection.subprotocol == "ocpp1.6"
    charger = site.instance("charger", "cp1")
    await until(lambda: charger.conn is not None, "the charger has its connection")
    await until(lambda: site.leaf("server/cs/state/connected") == '["cp1"]', "connected in state")
    assert site.leaf("server/cs/state/listening") == f"127.0.0.1:{server.port}"
    assert site.leaf("charger/cp1/state/connection") == "connected"
    await close_cp(cp)
    await until(lambda: site.leaf("server/cs/state/connected") == "[]", "disconnected in state")
    await until(lambda: site.leaf("charger/cp1/state/connection") == "disconnected", "charger disconnected")


@asyncio_test
async def test_a_client_offering_another_subprotocol_or_none_is_refused(site):
    site.server()
    site.charger("cp1")
    await site.start()
    assert await refused_with(open_ws(site.url("cp1"), "cp1", subprotocols=("ocpp2.0.1",))) == 400
    assert await refused_with(open_ws(site.url("cp1"), "cp1", subprotocols=None)) == 400
    # Offering several, ocpp1.6 among them, is fine: the server picks it.
    ws = await open_ws(site.url("cp1"), "cp1", subprotocols=("ocpp2.0.1", "ocpp1.6"))
    assert ws.subprotocol == "ocpp1.6"
    await ws.close()


@asyncio_test
async def test_an_unknown_charge_point_or_a_wrong_path_is_refused(site):
    site.server()
    site.charger("cp1")
    await site.start()
    assert await refused_with(open_ws(site.url("nobody"), "nobody")) == 404
    port = site.instance("server", "cs").port
    assert await refused_with(open_ws(f"ws://127.0.0.1:{port}/other/cp1", "cp1")) == 404
    assert await refused_with(open_ws(f"ws://127.0.0.1:{port}/ocpp/cp1/extra", "cp1")) == 404
    assert await refused_with(open_ws(f"ws://127.0.0.1:{port}/ocpp/", "cp1")) == 404
    assert site.instance("server", "cs").refused == 4
    await until(lambda: site.leaf("server/cs/state/refused") == "4", "refusals counted in state")


@asyncio_test
async def test_a_percent_encoded_identity_and_a_custom_path_work(site):
    site.server(path="/cs/v16")
    site.charger("cp1", cp_id="RDAM 123")
    await site.start()
    cp = await connect_cp(site.url("RDAM%20123", path="/cs/v16"), "RDAM 123")
    await cp.boot()
    await until(lambda: site.instance("charger", "cp1").conn is not None, "connected")
    await close_cp(cp)


@asyncio_test
async def test_security_profile_1_checks_the_password_and_the_user_name(site):
    site.server(security_profile=1)
    site.charger("cp1", password_hash=hash_password("0123456789abcdef0123", iterations=1000))
    site.charger("cp2", password="plain-password-16b")
    await site.start()
    url = site.url("cp1")
    assert await refused_with(open_ws(url, "cp1")) == 401                               # no credentials
    assert await refused_with(open_ws(url, "cp1", password="wrong-password-xxxx")) == 401
    assert await refused_with(open_ws(url, "cp1", password="0123456789abcdef0123", user="cp2")) == 401
    ws = await open_ws(url, "cp1", password="0123456789abcdef0123")
    await ws.close()
    ws = await open_ws(site.url("cp2"), "cp2", password="plain-password-16b")
    await ws.close()


@asyncio_test
async def test_a_charger_without_password_on_a_profile_1_server_is_an_error_naming_the_leaf(site):
    site.server(security_profile=1)
    site.charger("cp1")
    await site.start()
    await until(lambda: site.leaf("charger/cp1/state/error"), "the error")
    assert "config/password_hash: server cs uses security profile 1" in site.leaf("charger/cp1/state/error")


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cs.pem", tmp_path / "cs.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@asyncio_test
async def test_security_profile_2_is_basic_auth_over_tls_1_2_or_newer(site, tmp_path):
    cert, key = _self_signed(tmp_path)
    site.server(security_profile=2, tls_cert=cert, tls_key=key)
    site.charger("cp1", password="0123456789abcdef")
    await site.start()
    trusted = ssl.create_default_context(cafile=cert)
    cp = await connect_cp(site.url("cp1", scheme="wss"), "cp1", password="0123456789abcdef", ssl=trusted)
    result = await cp.boot()
    assert result.status == "Accepted"
    await close_cp(cp)
    assert await refused_with(open_ws(site.url("cp1", scheme="wss"), "cp1", password="nope-nope-nope-n",
                                      ssl=trusted)) == 401
    old_tls = ssl.create_default_context(cafile=cert)
    old_tls.minimum_version = ssl.TLSVersion.TLSv1
    old_tls.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        await open_ws(site.url("cp1", scheme="wss"), "cp1", password="0123456789abcdef", ssl=old_tls)
    with pytest.raises((websockets.exceptions.InvalidMessage, OSError, EOFError,
                        websockets.exceptions.InvalidHandshake)):
        await open_ws(site.url("cp1"), "cp1", password="0123456789abcdef")      # plain ws:// to a TLS port
    assert site.leaf("server/cs/state/tls") == "true"


def test_server_config_errors_name_the_leaf():
    with pytest.raises(ConfigError, match="^config/listen:"):
        OcppServerConfig(listen="nowhere")
    with pytest.raises(ConfigError, match="^config/tls_cert: security profile 2 needs TLS"):
        OcppServerConfig(listen="0.0.0.0:9000", security_profile=2)
    with pytest.raises(ConfigError, match="^config/tls_key: give tls_cert and tls_key together"):
        OcppServerConfig(listen="0.0.0.0:9000", tls_cert="a.pem")
    with pytest.raises(ConfigError, match="^config/setup_concurrency: -1 is below 0"):
        OcppServerConfig(listen="0.0.0.0:9000", setup_concurrency=-1)
    assert host_port("[::1]:9000") == ("::1", 9000) and host_port(":9000") == ("0.0.0.0", 9000)


@asyncio_test
async def test_a_port_in_use_is_reported_in_state_error(site):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        site.server(listen=f"127.0.0.1:{taken.getsockname()[1]}")
        await site.start()
        await until(lambda: site.leaf("server/cs/state/error"), "the error")
        assert "config/listen: cannot listen on 127.0.0.1:" in site.leaf("server/cs/state/error")
    finally:
        taken.close()


@asyncio_test
async def test_missing_tls_files_are_reported_in_state_error(site, tmp_path):
    site.server(tls_cert=str(tmp_path / "no.pem"), tls_key=str(tmp_path / "no.key"))
    await site.start()
    await until(lambda: site.leaf("server/cs/state/error"), "the error")
    assert "config/tls_cert:" in site.leaf("server/cs/state/error") and "does not exist" in \
        site.leaf("server/cs/state/error")


# --- connections ---

@asyncio_test
async def test_a_charge_point_that_connects_again_replaces_its_old_connection(site):
    site.server()
    site.charger("cp1")
    await site.start()
    charger = site.instance("charger", "cp1")
    first = await connect_cp(site.url("cp1"), "cp1")
    await until(lambda: charger.conn is not None, "first connection")
    old_conn = charger.conn
    second = await connect_cp(site.url("cp1"), "cp1")
    await until(lambda: charger.conn is not old_conn and charger.conn is not None, "second connection taken")
    await until(lambda: first._connection.state.name == "CLOSED", "the first one closed")
    assert first._connection.close_reason == "replaced by a newer connection of the same charge point"
    result = await second.call(call.Heartbeat())
    assert result.current_time
    await until(lambda: site.leaf("server/cs/state/connected") == '["cp1"]', "one connection in state")
    assert charger.status.online
    await close_cp(second)


@asyncio_test
async def test_a_dead_connection_is_dropped_by_the_keepalive(site):
    site.server(ping_interval_s=0.1, ping_timeout_s=0.3)
    site.charger("cp1")
    await site.start()
    charger = site.instance("charger", "cp1")
    raw = await RawClient.open(site.url("cp1"), "cp1")
    await until(lambda: charger.conn is not None, "connected")
    seen = charger.status.updated
    await until(lambda: charger.status.updated != seen, "a pong marks the charger alive")
    raw.ws.transport.pause_reading()           # the peer goes silent: no more pongs
    await until(lambda: charger.conn is None, "dropped after the ping timeout", timeout_s=3)
    assert site.leaf("charger/cp1/state/connection") in ("disconnected", "connected")   # the flush follows
    await until(lambda: site.leaf("charger/cp1/state/connection") == "disconnected", "disconnected in state")
    raw.ws.transport.abort()


@asyncio_test
async def test_a_charger_removed_from_the_config_is_disconnected_and_refused(site, monkeypatch):
    monkeypatch.setattr(OcppServer, "park_s", 0.2)
    site.server()
    site.charger("cp1")
    await site.start()
    cp = await connect_cp(site.url("cp1"), "cp1")
    charger = site.instance("charger", "cp1")
    await until(lambda: charger.conn is not None, "connected")
    await wait(site.delete("charger/cp1"))
    await until(lambda: cp._connection.state.name == "CLOSED", "closed by the server")
    assert await refused_with(open_ws(site.url("cp1"), "cp1")) == 404


@asyncio_test
async def test_a_config_change_restarts_the_charger_without_dropping_the_charge_point(site, monkeypatch):
    monkeypatch.setattr(OcppCharger, "boot_wait_s", 0.2)
    site.server()
    site.charger("cp1", A_max=16)
    await site.start()
    cp = await connect_cp(site.url("cp1"), "cp1")
    await cp.boot()
    old = site.instance("charger", "cp1")
    await until(lambda: old.smart == "ok", "set up")
    await wait(site.put("charger/cp1/config/A_max", 20))
    await until(lambda: site.instance("charger", "cp1") not in (None, old), "restarted")
    new = site.instance("charger", "cp1")
    await until(lambda: new.conn is not None, "the connection handed over")
    assert cp._connection.state.name == "OPEN"
    result = await cp.call(call.Heartbeat())
    assert result.current_time
    await until(lambda: new.smart == "ok" and len(cp.profiles) >= 2, "set up again on the same connection",
                timeout_s=new.boot_wait_s + 3)
    await close_cp(cp)


@asyncio_test
async def test_two_chargers_with_one_cp_id_on_one_server_are_refused_clearly(site):
    site.server()
    site.charger("a", cp_id="X")
    site.charger("b", cp_id="X")
    await site.start()
    await until(lambda: site.leaf("charger/b/state/error"), "the error")
    assert "config/cp_id: 'X' is already used by charger/a on server cs" in site.leaf("charger/b/state/error")


@asyncio_test
async def test_transaction_ids_are_unique_across_a_server_restart(site):
    site.server()
    await site.start()
    server = site.instance("server", "cs")
    ids = [await wait(server.allocate_transaction_id()) for _ in range(3)]
    assert ids == [1, 2, 3]
    await wait(site.put("server/cs/config/heartbeat_interval_s", 60))        # a config change restarts it
    await until(lambda: site.instance("server", "cs") not in (None, server), "restarted")
    again = site.instance("server", "cs")
    assert await wait(again.allocate_transaction_id()) == 4
    assert await site.aleaf("server/cs/data/transaction_id") == "4"


@asyncio_test
async def test_concurrent_allocations_by_two_servers_on_one_counter_never_collide(site):
    """Two EVC runs sharing a store (a restart overlapping the old process): the etcd compare keeps ids unique."""
    site.server()
    await site.start()
    a = site.instance("server", "cs")
    b = type(a)(a.ctx, a.config)               # a second instance on the same data/ key, never started
    results = await asyncio.gather(*(wait(x.allocate_transaction_id()) for x in [a, b] * 10))
    assert sorted(results) == list(range(1, 21))


@asyncio_test
async def test_the_listening_socket_queues_a_whole_sites_reconnect_storm(site):
    """A site's chargers reconnect at once after a network blip: the accept queue holds well over a hundred (the
    default), so a busy moment of the loop does not make the kernel drop SYNs (each a 1 s TCP retransmission)."""
    import shutil
    import subprocess
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to read the listening socket's queue length")
    site.server()
    await site.start()
    port = site.instance("server", "cs").port
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    backlog = int(out.split()[2])       # State Recv-Q Send-Q ...: for a listening socket Send-Q is the backlog
    assert backlog >= min(1024, int(open("/proc/sys/net/core/somaxconn").read()))


# --- a charge point whose charger is in error: refused with that error in the log (real etcd) ---

@pytest.fixture
def etcd_site(etcd_session, etcd_root):
    store = EtcdStore(etcd_session.url, reactor)
    s = Site(store=store, root=etcd_root)
    yield s

    async def down():
        await s.stop()
        await wait(store.close())
    pytest_twisted.blockon(to_deferred(down()))


@pytest.fixture
def refusals():
    """The server's "refused ..." log lines, as the operator reads them."""
    lines: list[str] = []

    def observe(event):
        text = formatEvent(event)
        if " refused " in text:
            lines.append(text)
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


async def refused_body(url: str, cp_id: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as e:
        ws = await open_ws(url, cp_id)
        await ws.close()
    return e.value.response.status_code, e.value.response.body.decode()


@asyncio_test
async def test_a_charger_naming_no_server_on_a_site_with_two_is_refused_with_its_error(etcd_site, refusals):
    site = etcd_site
    site.server("cs")
    site.server("cs2")
    site.configure("charger", "cp2", "ocpp", A_max=16, mode="ON")         # no config/server
    await site.start()
    await until(lambda: site.instance("server", "cs2") and site.instance("server", "cs2").port, "both listen")
    status, body = await refused_body(site.url("cp2"), "cp2")
    assert status == 404
    assert "config error" in body and "config/server" not in body        # details stay in EVC's log
    line = await until(lambda: [r for r in refusals if "'cp2'" in r], "the log line")
    assert line[0].startswith("server/cs: refused charge point 'cp2' from 127.0.0.1:")
    assert line[0].endswith(": charger/cp2 has a config error: config/server: missing; the site has 2 server/ocpp "
                            "(cs, cs2): name one")
    assert "unknown charge point" not in line[0]


@asyncio_test
async def test_a_charger_with_an_invalid_config_is_refused_with_its_error(etcd_site, refusals):
    site = etcd_site
    site.server()
    site.charger("wb1", cp_id="WB-0042", A_max=99)                          # over the schema's maximum
    site.charger("wb2", server="cs9")                                       # a dangling reference
    await site.start()
    await until(lambda: site.instance("server", "cs") and site.instance("server", "cs").port, "listening")
    assert (await refused_body(site.url("WB-0042"), "WB-0042"))[0] == 404
    assert (await refused_body(site.url("wb2"), "wb2"))[0] == 404
    assert (await refused_body(site.url("nobody"), "nobody"))[0] == 404
    await until(lambda: len(refusals) == 3, "three log lines")
    wb1, wb2, nobody = refusals
    assert "refused charge point 'WB-0042'" in wb1 and ": charger/wb1 has a config error: config/A_max:" in wb1
    assert "refused charge point 'wb2'" in wb2
    assert wb2.endswith(": charger/wb2 has a config error: config/server: server 'cs9' is not configured")
    assert nobody.endswith("unknown charge point (no charger/ocpp with this cp_id on this server)")
    await wait(site.put("charger/wb1/config/A_max", 16))                    # fixed: it connects
    await until(lambda: site.instance("charger", "wb1"), "wb1 runs")
    ws = await open_ws(site.url("WB-0042"), "WB-0042")
    await ws.close()


@asyncio_test
async def test_a_charge_point_at_the_wrong_server_is_told_which_server_its_charger_uses(site, refusals):
    site.server("cs")
    site.server("cs2")
    site.charger("cp1", server="cs2")
    await site.start()
    assert await refused_with(open_ws(site.url("cp1", server="cs"), "cp1")) == 404
    line = await until(lambda: refusals, "the log line")
    assert line[0].endswith(": charger/cp1 has this cp_id but uses server/cs2, not server/cs")
