"""An eMSP that is not EVC's code: extrawest-ocpi (FastAPI, pydantic 1) in a process and a venv of its own.

Run by tests/front/ocpi/test_extrawest.py as `<emsp venv>/bin/python xw_emsp.py --port P --record FILE
--token-a A`. The glue lives here: its storage (a dict), minting token C, the answer to real-time authorization,
and a record of everything it received (one JSON object per line in FILE, flushed at once).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--token-a", required=True)
    args = ap.parse_args()
    os.environ.update({"OCPI_HOST": f"127.0.0.1:{args.port}", "PROTOCOL": "http", "COUNTRY_CODE": "NL",
                       "PARTY_ID": "XWE"})

    import uvicorn
    from py_ocpi import get_application
    from py_ocpi.core.authentication.authenticator import Authenticator
    from py_ocpi.core.crud import Crud
    from py_ocpi.core.enums import Action, ModuleID, RoleEnum
    from py_ocpi.modules.versions.enums import VersionNumber

    out = open(args.record, "a", encoding="utf-8")
    store: dict = {}
    tokens_c: list = []

    def record(**kw):
        out.write(json.dumps(kw, default=str) + "\n")
        out.flush()

    def plain(value):
        return json.loads(json.dumps(value, default=str))

    class Auth(Authenticator):
        @classmethod
        async def get_valid_token_c(cls):
            return list(tokens_c)

        @classmethod
        async def get_valid_token_a(cls):
            return [args.token_a] if not tokens_c else []

    class Storage(Crud):
        @classmethod
        async def get(cls, module, role, id, *a, **kw):
            if module == ModuleID.credentials_and_registration:
                return store.get(("credentials", id))
            if module == ModuleID.tokens:
                # Every card whose uid starts with XW is one of this eMSP's customers.
                return {"uid": id} if str(id).upper().startswith("XW") else None
            return store.get((module.value, str(id)))

        @classmethod
        async def list(cls, module, role, filters, *a, **kw):
            return [], 0, True

        @classmethod
        async def create(cls, module, role, data, *a, **kw):
            data = plain(data)
            if module == ModuleID.credentials_and_registration:
                token_c = "XWC-" + secrets.token_hex(8)
                tokens_c.append(token_c)
                version = getattr(kw.get("version"), "value", kw.get("version"))
                record(kind="registered", credentials=data["credentials"], endpoints=data["endpoints"],
                       token_c=token_c, version=version)
                url = f"http://127.0.0.1:{args.port}/ocpi/versions"
                business = {"name": "extrawest eMSP"}
                if version == "2.1.1":
                    mine = {"token": token_c, "url": url, "party_id": "XWE", "country_code": "NL",
                            "business_details": business}
                else:
                    mine = {"token": token_c, "url": url, "roles": [{"role": "EMSP", "party_id": "XWE",
                                                                     "country_code": "NL",
                                                                     "business_details": business}]}
                store[("credentials", token_c)] = mine
                return mine
            key = data.get("id") or data.get("uid") or (a[0] if a else "")
            store[(module.value, str(key))] = data
            record(kind="create", module=module.value, id=key, data=data)
            return data

        @classmethod
        async def update(cls, module, role, data, id, *a, **kw):
            data = plain(data)
            record(kind="update", module=module.value, id=id, data=data)
            old = store.get((module.value, str(id))) or {}
            store[(module.value, str(id))] = {**old, **data}
            return store[(module.value, str(id))]

        @classmethod
        async def delete(cls, module, role, id, *a, **kw):
            record(kind="delete", module=module.value, id=id)
            store.pop((module.value, str(id)), None)

        @classmethod
        async def do(cls, module, role, action, *a, data=None, **kw):
            if action == Action.authorize_token:
                record(kind="authorize", data=plain(data))
                uid = data["token_uid"]
                return {"allowed": "ALLOWED", "authorization_reference": "XW-REF-1",
                        "token": {"country_code": "NL", "party_id": "XWE", "uid": uid, "type": "RFID",
                                  "contract_id": f"NL-XWE-{uid}", "issuer": "extrawest", "valid": True,
                                  "whitelist": "ALLOWED", "last_updated": "2026-01-01T00:00:00Z"}}
            record(kind="do", action=str(action), data=plain(data))
            return None

    modules = [ModuleID.credentials_and_registration, ModuleID.locations, ModuleID.sessions, ModuleID.cdrs,
               ModuleID.tokens, ModuleID.commands, ModuleID.tariffs]
    app = get_application(version_numbers=[VersionNumber.v_2_2_1, VersionNumber.v_2_1_1], roles=[RoleEnum.emsp],
                          crud=Storage, modules=modules, authenticator=Auth)
    record(kind="listening", port=args.port)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    sys.exit(main())
