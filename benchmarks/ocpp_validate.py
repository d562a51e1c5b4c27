"""OCPP 1.6 payload validation: EVC's compiled schemas (evc.ocpp.validate) against the `ocpp` library's own check
(jsonschema Draft4Validator), on the payloads of a reconnect storm, measured in the same run. Prints a table and the
ratio library / compiled (target: >= 5x on MeterValues, the message a site sends most).

    .venv/bin/python benchmarks/ocpp_validate.py [--n 3000]
"""
from __future__ import annotations

import argparse
import time

from ocpp.messages import Call, CallResult, _validate_payload

import evc.ocpp.central  # noqa: F401 (inline validation, as EVC runs it)
from evc.ocpp.validate import valid


def messages() -> list:
    sampled = [{"value": "15.9", "measurand": "Current.Import", "phase": p, "unit": "A"} for p in ("L1", "L2", "L3")]
    meter = Call("1", "MeterValues", {"connectorId": 1, "transactionId": 5, "meterValue": [{
        "timestamp": "2026-01-01T00:00:00Z", "sampledValue": [
            {"value": "123", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}] + sampled}]})
    boot = Call("2", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M", "firmwareVersion": "1"})
    status = Call("3", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"})
    local = Call("4", "SendLocalList", {"listVersion": 3, "updateType": "Full", "localAuthorizationList": [
        {"idTag": f"TAG{i}", "idTagInfo": {"status": "Accepted"}} for i in range(50)]})
    config = CallResult("5", {"configurationKey": [{"key": f"K{i}", "readonly": True, "value": "x"} for i in range(8)]})
    config.action = "GetConfiguration"
    return [meter, boot, status, local, config]


def per_call_us(fn, message, n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fn(message)
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000, help="validations per message and round (best of 3 rounds)")
    args = p.parse_args()
    print(f"{'message':28s} {'library us':>11s} {'compiled us':>12s} {'ratio':>7s}")
    ratios = {}
    for m in messages():
        assert valid(m), m.action
        lib = per_call_us(lambda msg: _validate_payload(msg, "1.6"), m, args.n)
        ours = per_call_us(valid, m, args.n)
        name = f"{m.action}{'.conf' if isinstance(m, CallResult) else ''}"
        ratios[name] = lib / ours
        print(f"{name:28s} {lib:11.1f} {ours:12.1f} {lib / ours:6.1f}x")
    ok = ratios["MeterValues"] >= 5
    print(f"target: MeterValues >= 5x faster than the library: {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
