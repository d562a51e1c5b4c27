"""Property: every CALL a charge point can send, valid or broken, gets a CALLRESULT or the right CALLERROR, and the
connection lives. Payloads are generated from the `ocpp` library's own v16 JSON schemas (shipped in the package)."""
import json
import os
import string

import ocpp.v16
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings, strategies as st

from cs_rig import RawClient, Site, asyncio_test, until
from evc.charger.ocpp import OcppCharger
from evc.ocpp.bridge import to_deferred
from evc.ocpp.central import CP_TO_CS
from test_bad_input import library_code

SCHEMA_DIR = os.path.join(os.path.dirname(ocpp.v16.__file__), "schemas")


def load_schema(action: str) -> dict:
    with open(os.path.join(SCHEMA_DIR, f"{action}.json"), encoding="utf-8") as f:
        return json.load(f)


# Text that survives UTF-8 and JSON (no lone surrogates); short, with the characters real frames have.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
INTS = st.integers(min_value=-(2 ** 31), max_value=2 ** 31 - 1)
NUMBERS = st.one_of(INTS, st.floats(allow_nan=False, allow_infinity=False, width=32),
                    st.decimals(places=1, min_value=-1000, max_value=1000, allow_nan=False).map(float))
DATES = st.datetimes().map(lambda d: d.isoformat(timespec="seconds") + "Z")
JSON_SCALARS = st.one_of(st.none(), st.booleans(), INTS, TEXT)
ANY_JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                              st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)


def from_schema(node: dict) -> st.SearchStrategy:
    """Values valid for one (draft-04, OCPP 1.6 subset) schema node."""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties") or {}
        required = set(node.get("required") or ())
        fixed = {k: from_schema(v) for k, v in props.items() if k in required}
        optional = {k: from_schema(v) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(fixed, optional=optional)
    if kind == "array":
        return st.lists(from_schema(node.get("items") or {}), min_size=node.get("minItems", 0), max_size=3)
    if kind == "string":
        if node.get("format") == "date-time":
            return st.one_of(DATES, TEXT.map(lambda t: t[:node.get("maxLength", 30)]))
        return TEXT.map(lambda t: t[:node["maxLength"]] if "maxLength" in node else t)
    if kind == "integer":
        return INTS
    if kind == "number":
        return NUMBERS
    if kind == "boolean":
        return st.booleans()
    return ANY_JSON


@st.composite
def broken(draw, schema: dict):
    """A payload that starts valid and then has one thing wrong (or not: some mutations stay valid)."""
    payload = draw(from_schema(schema))
    props = schema.get("properties") or {}
    how = draw(st.sampled_from(["drop", "extra", "type", "enum", "long", "whole"]))
    if how == "drop" and payload:
        payload.pop(draw(st.sampled_from(sorted(payload))))
    elif how == "extra":
        payload[draw(st.sampled_from(["x", "unknownField", "idtag"]))] = draw(ANY_JSON)
    elif how == "type" and props:
        payload[draw(st.sampled_from(sorted(props)))] = draw(ANY_JSON)
    elif how == "enum":
        enums = [k for k, v in props.items() if "enum" in v]
        if enums:
            payload[draw(st.sampled_from(enums))] = draw(TEXT)
    elif how == "long":
        strings = [k for k, v in props.items() if "maxLength" in v]
        if strings:
            key = draw(st.sampled_from(strings))
            payload[key] = "x" * (props[key]["maxLength"] + draw(st.integers(1, 5)))
    elif how == "whole":
        payload = draw(st.dictionaries(TEXT, ANY_JSON, max_size=4))
    return payload


ACTIONS = sorted(CP_TO_CS)
CALLS = st.sampled_from(ACTIONS).flatmap(
    lambda action: st.tuples(st.just(action), st.one_of(from_schema(load_schema(action)),
                                                        broken(load_schema(action)))))


@pytest.fixture
def fuzz_site(monkeypatch):
    monkeypatch.setattr(OcppCharger, "boot_wait_s", 60.0)
    site = Site()

    async def setup():
        site.server(call_timeout_s=0.5)
        site.charger("cp1")
        site.token("TAG1")
        await site.start()
        site.raw = await RawClient.open(site.url("cp1"), "cp1")
        await until(lambda: site.instance("charger", "cp1").conn is not None, "connected")
        site.conn = site.instance("charger", "cp1").conn
        site.frames = 0
    pytest_twisted.blockon(to_deferred(setup()))
    yield site

    async def teardown():
        # After every example: the same connection, still answering.
        reply = await site.raw.call("Heartbeat", {})
        assert reply[0] == 3
        assert site.instance("charger", "cp1").conn is site.conn and not site.conn.closed
        await site.raw.close()
        await site.stop()
    pytest_twisted.blockon(to_deferred(teardown()))


@settings(max_examples=int(os.environ.get("EVC_FUZZ_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(message=CALLS, uid=st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=36))
@asyncio_test
async def test_every_generated_call_gets_a_result_or_the_right_callerror(fuzz_site, message, uid):
    action, payload = message
    expected = library_code(action, payload)
    reply = await fuzz_site.raw.call(action, payload, uid=uid)
    if expected is None:
        assert reply[0] == 3, f"{action} {payload!r} -> {reply!r}"
        assert library_code_result(action, reply[2]) is None
    else:
        assert reply[0] == 4 and reply[2] == expected, f"{action} {payload!r} -> {reply!r}"


def library_code_result(action: str, payload: dict):
    """The reply's own schema check (EVC must never answer with a payload that breaks the response schema)."""
    from ocpp.exceptions import OCPPError
    from ocpp.messages import CallResult, _validate_payload
    try:
        _validate_payload(CallResult("x", payload, action), "1.6")
    except OCPPError as e:
        return e.code
    return None
