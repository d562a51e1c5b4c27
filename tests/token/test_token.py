"""token/<idTag>: config, the supervisor (no type leaf), and token changes reaching OCPP chargers' local lists."""
import datetime

import pytest
import pytest_twisted

from cs_rig import Site, asyncio_test, close_cp, connect_cp, until, wait
from evc.auth import local_lookup
from evc.errors import ConfigError
from evc.ocpp.bridge import to_deferred
from evc.token.token import TokenConfig

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)


@pytest.fixture
def site():
    s = Site()
    yield s
    pytest_twisted.blockon(to_deferred(s.stop()))


@pytest.mark.parametrize("config, leaf", [
    ({"status": "Maybe"}, "config/status"),
    ({"expiry": "next tuesday"}, "config/expiry"),
    ({"chargers": "s1"}, "config/chargers"),
    ({"chargers": ["s1", ""]}, "config/chargers"),
])
def test_config_errors_name_the_leaf(config, leaf):
    with pytest.raises(ConfigError, match=f"^{leaf}:"):
        TokenConfig(**config)


def test_expiry_accepts_a_date_a_time_without_offset_and_z():
    for text in ("2027-01-01", "2027-01-01T10:00:00", "2027-01-01T10:00:00Z", "2027-01-01T10:00:00+02:00"):
        TokenConfig(expiry=text)


@asyncio_test
async def test_tokens_need_no_type_and_answer_the_local_lookup(site):
    site.token("TAG1", owner="Anna")
    site.token("OLD", expiry="2020-01-01T00:00:00Z")
    site.token("ELSEWHERE", chargers=["s9"])
    await site.start()
    await until(lambda: site.instance("token", "TAG1") and site.instance("token", "OLD"), "tokens running")
    tokens = site.sup._find("token")
    assert local_lookup(tokens, "TAG1", "s1", NOW).status == "Accepted"
    assert local_lookup(tokens, "OLD", "s1", NOW).status == "Expired"
    assert local_lookup(tokens, "ELSEWHERE", "s1", NOW).status == "Invalid"
    await until(lambda: site.leaf("token/OLD/state/expired") == "true", "expired in state")
    assert site.leaf("token/TAG1/state/status") == "running"


@asyncio_test
async def test_a_token_change_reaches_the_charge_point_as_a_differential_update(site):
    site.server()
    site.charger("cp1")
    site.token("TAG1")
    await site.start()
    cp = await connect_cp(site.url("cp1"), "cp1")
    await cp.boot()
    await until(lambda: cp.local_lists, "the full list")
    assert cp.local_lists[0]["type"] == "Full"
    await wait(site.put("token/TAG1/config/status", "Blocked"))
    await wait(site.put("token/TAG2/config/status", "Accepted"))
    await until(lambda: len(cp.local_lists) >= 2, "a differential update")
    update = cp.local_lists[-1]
    assert update["type"] == "Differential" and update["version"] == 2
    assert {e["id_tag"]: e["id_tag_info"]["status"] for e in update["list"]} == {"TAG1": "Blocked",
                                                                                "TAG2": "Accepted"}
    await wait(site.delete("token/TAG2"))
    await until(lambda: len(cp.local_lists) >= 3, "the removal")
    assert cp.local_lists[-1]["list"] == [{"id_tag": "TAG2"}]
    await until(lambda: site.leaf("charger/cp1/state/local_list_version") == "3", "the version in state")
    await close_cp(cp)
