"""evc.ocpp.validate agrees with the `ocpp` library: for every OCPP 1.6 message either side sends, request and
reply, valid or broken, the compiled schema accepts exactly what the library's validate_payload accepts; and what
it refuses gets the library's own error."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, CallResult, _validate_payload

import evc.ocpp.central  # noqa: F401 (sets the library's inline validation)
from evc.ocpp import validate
from evc.ocpp.central import CP_TO_CS, CS_TO_CP
from test_fuzz import broken, from_schema, load_schema

MESSAGES = sorted([(2, a, a) for a in CP_TO_CS | CS_TO_CP] + [(3, a, a + "Response") for a in CP_TO_CS | CS_TO_CP])
CASES = st.sampled_from(MESSAGES).flatmap(lambda m: st.tuples(
    st.just(m), st.one_of(from_schema(load_schema(m[2])), broken(load_schema(m[2])))))


def library_accepts(message) -> bool:
    try:
        _validate_payload(message, "1.6")
    except OCPPError:
        return False
    return True


def message(kind, action, payload):
    if kind == 2:
        return Call("1", action, payload)
    m = CallResult("1", payload)
    m.action = action
    return m


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CASES)
def test_the_compiled_schema_accepts_exactly_what_the_library_accepts(case):
    (kind, action, _), payload = case
    if validate.compiled(kind, action) is None:
        return                                   # decided by the library itself (multipleOf schemas)
    assert validate.valid(message(kind, action, payload)) == library_accepts(message(kind, action, payload))


def test_every_message_but_the_three_decimal_ones_is_compiled():
    missing = [(k, a) for k, a, _ in MESSAGES if validate.compiled(k, a) is None]
    assert sorted(missing) == sorted(validate.LIBRARY_ONLY)


def test_a_refused_payload_gets_the_librarys_own_error():
    bad = Call("1", "MeterValues", {"connectorId": "one", "meterValue": []})
    with pytest.raises(OCPPError) as ours:
        validate.check(bad).send(None)          # inline validation (evc.ocpp.central turns the thread pool off)
    with pytest.raises(OCPPError) as theirs:
        _validate_payload(Call("1", "MeterValues", {"connectorId": "one", "meterValue": []}), "1.6")
    assert type(ours.value) is type(theirs.value) and ours.value.description == theirs.value.description


def test_formats_are_not_checked_as_the_library_does_not_and_defaults_are_never_filled_in():
    m = Call("1", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available",
                                         "timestamp": "not a time"})
    assert validate.valid(m) and library_accepts(m)
    assert m.payload == {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": "not a time"}
