"""OCPP 1.6 payload checks: the `ocpp` library's own JSON schemas, compiled to Python with fastjsonschema.

The library checks every payload with jsonschema's Draft4Validator, which walks the schema for each payload: in a
reconnect storm that was a sixth of EVC's loop. `check(message)` gives the same verdict from a validator compiled
once per schema: a payload that passes is accepted at once; one that breaks the schema is checked again by the
library's `validate_payload`, so the OCPPError (FormatViolation, TypeConstraintViolation, ...) and its text are
exactly the library's. As the library builds its validators, formats (date-time, uri) are not checked. The three
schemas with `multipleOf` (SetChargingProfile, RemoteStartTransaction, GetCompositeSchedule.conf) need the
library's decimal parsing and always go to it. tests/ocpp/test_validate.py checks the verdicts agree.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import fastjsonschema
import ocpp.v16
from ocpp.messages import Call, CallResult, MessageType, validate_payload

OCPP_VERSION = "1.6"
SCHEMA_DIR = Path(ocpp.v16.__file__).parent / "schemas"
# Schemas with multipleOf: the library parses payload and schema with decimal.Decimal for these.
LIBRARY_ONLY = {(MessageType.Call, "SetChargingProfile"), (MessageType.Call, "RemoteStartTransaction"),
                (MessageType.CallResult, "GetCompositeSchedule")}

_compiled: dict[tuple[int, str], Optional[Callable]] = {}


def compiled(kind: int, action: str) -> Optional[Callable]:
    """The compiled validator of (message type, action), or None where the library must decide."""
    key = (kind, action)
    if key not in _compiled:
        validator = None
        if key not in LIBRARY_ONLY and kind in (MessageType.Call, MessageType.CallResult):
            name = action + ("Response" if kind == MessageType.CallResult else "")
            try:
                schema = json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8-sig"))
            except (OSError, ValueError):
                schema = None
            if schema is not None:
                # use_default False: never fill defaults into the payload; use_formats False: as the library.
                validator = fastjsonschema.compile(schema, use_default=False, use_formats=False)
        _compiled[key] = validator
    return _compiled[key]


def valid(message: Call | CallResult) -> bool:
    """True when the compiled schema accepts the payload (False also where only the library can tell)."""
    validator = compiled(message.message_type_id, message.action)
    if validator is None:
        return False
    try:
        validator(message.payload)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


async def check(message: Call | CallResult) -> None:
    """Raise the library's OCPPError when the payload breaks its schema (as ocpp.messages.validate_payload)."""
    if not valid(message):
        await validate_payload(message, OCPP_VERSION)
