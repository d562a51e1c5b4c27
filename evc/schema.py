"""JSON Schema loading and validation of instance configs; errors name the leaf that is wrong."""
from __future__ import annotations

import copy
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any, Iterable

import jsonschema
from jsonschema import Draft202012Validator

from evc.errors import ConfigError

ROOT_SCHEMA = "etcd/root.json"


def schema_dir() -> Path:
    """The folder of EVC's schemas: $EVC_SCHEMA_DIR, else the copy shipped in the package (evc/_schema/, what a
    wheel or sdist install has), else the top-level schema/ beside evc/ (a clone or an editable install)."""
    env = os.environ.get("EVC_SCHEMA_DIR")
    if env:
        if not (Path(env) / ROOT_SCHEMA).is_file():
            raise FileNotFoundError(f"EVC_SCHEMA_DIR={env}: no {ROOT_SCHEMA} there")
        return Path(env)
    # files() gives a Traversable; pip installs a wheel unpacked on disk, so it names a real folder.
    candidates = [Path(str(importlib.resources.files("evc") / "_schema")),
                  Path(__file__).resolve().parent.parent / "schema"]
    for candidate in candidates:
        if (candidate / ROOT_SCHEMA).is_file():
            return candidate
    raise FileNotFoundError("EVC's schemas were not found (looked in " + ", ".join(map(str, candidates))
                            + "): reinstall EVC, or set EVC_SCHEMA_DIR to a folder holding etcd/root.json")


def property_schema(schema: dict, path: Iterable[str]) -> dict | None:
    """The sub-schema for a config path ("a/b" as ["a", "b"]), or None when the schema does not describe it."""
    node = schema
    for part in path:
        props = node.get("properties") or {}
        if part in props:
            node = props[part]
            continue
        addl = node.get("additionalProperties")
        if isinstance(addl, dict):
            node = addl
            continue
        return None
    return node


def allowed_types(ps: dict | None) -> set[str]:
    """JSON types a sub-schema admits (looking through oneOf/anyOf and enum/const)."""
    if not ps:
        return set()
    out: set[str] = set()
    t = ps.get("type")
    if isinstance(t, str):
        out.add(t)
    elif isinstance(t, list):
        out.update(t)
    for key in ("oneOf", "anyOf"):
        for sub in ps.get(key, ()):
            out |= allowed_types(sub)
    for v in list(ps.get("enum", ())) + ([ps["const"]] if "const" in ps else []):
        out.add({str: "string", bool: "boolean", int: "integer", float: "number"}.get(type(v), "object"))
    return out


def apply_defaults(schema: dict, doc: dict) -> dict:
    """A copy of `doc` with each missing property's `default` filled in (recursively for objects)."""
    out = copy.deepcopy(doc)
    for name, ps in (schema.get("properties") or {}).items():
        if name not in out and "default" in ps:
            out[name] = copy.deepcopy(ps["default"])
        elif isinstance(out.get(name), dict) and ps.get("properties"):
            out[name] = apply_defaults(ps, out[name])
    return out


def _leaf_name(err: jsonschema.ValidationError, base: str) -> str:
    parts = [str(p) for p in err.absolute_path]
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else ""
        parts.append(missing)
    elif err.validator == "additionalProperties" and "'" in err.message:
        parts.append(err.message.split("'")[1])
    return "/".join([base, *parts]) if parts else base


def _exclusive_choice(err: jsonschema.ValidationError) -> list[str] | None:
    """The property names of a oneOf whose branches each just require one property ("give bus or conn")."""
    names = []
    for branch in err.validator_value if isinstance(err.validator_value, list) else ():
        req = branch.get("required") if isinstance(branch, dict) else None
        if not req or len(req) != 1:
            return None
        names.append(req[0])
    return names or None


def _sentence(err: jsonschema.ValidationError, base: str) -> str:
    leaf = _leaf_name(err, base)
    if err.validator == "oneOf" and isinstance(err.instance, dict):
        names = _exclusive_choice(err)
        if names:
            given = [n for n in names if n in err.instance]
            listed = " or ".join(f"{leaf}/{n}" for n in names)
            if not given:
                return f"{listed}: one of them is required"
            return f"{' and '.join(f'{leaf}/{n}' for n in given)}: give only one of {', '.join(names)}"
    if err.validator == "required":
        return f"{leaf}: missing (required)"
    if err.validator == "additionalProperties":
        return f"{leaf}: not a known setting"
    return f"{leaf}: {err.message}"


class Catalog:
    """The types EVC knows: the registries (kind -> type -> class) and the schema files that describe them."""

    def __init__(self, registries=None, directory: Path | None = None):
        if registries is None:
            from evc.registry import REGISTRIES
            registries = REGISTRIES
        self.registries = registries
        self.directory = Path(directory) if directory else schema_dir()
        self._schemas: dict[str, dict] = {}
        self._validators: dict[tuple[str, str], Draft202012Validator] = {}

    def load(self, relpath: str) -> dict:
        if relpath not in self._schemas:
            with open(self.directory / relpath, encoding="utf-8") as f:
                self._schemas[relpath] = json.load(f)
        return self._schemas[relpath]

    def lookup(self, kind: str, type_name: str) -> type:
        """The implementation class, or ConfigError naming the `type` leaf and the known types."""
        if kind not in self.registries:
            raise ConfigError(f"{kind}: not a kind")
        return self.registries[kind].lookup(type_name, "type")

    def type_schema(self, kind: str, type_name: str) -> dict:
        """The schema of one type's `config` (`schema/<kind>/<type>.json`)."""
        try:
            return self.load(f"{kind}/{type_name}.json")
        except FileNotFoundError:
            raise ConfigError(f"type: no schema for {kind} type {type_name!r}") from None

    def schema_files(self) -> dict[str, set[str]]:
        """kind -> type names that have a schema file."""
        out: dict[str, set[str]] = {}
        for p in sorted(self.directory.glob("*/*.json")):
            if p.parent.name != "etcd":
                out.setdefault(p.parent.name, set()).add(p.stem)
        return out

    def validator(self, kind: str, type_name: str) -> Draft202012Validator:
        key = (kind, type_name)
        if key not in self._validators:
            schema = self.type_schema(kind, type_name)
            Draft202012Validator.check_schema(schema)
            self._validators[key] = Draft202012Validator(schema)
        return self._validators[key]

    def validate(self, kind: str, type_name: str, doc: dict, base: str = "config") -> dict:
        """Validate one instance's config document; return it with defaults applied, or raise ConfigError."""
        schema = self.type_schema(kind, type_name)
        errors = sorted(self.validator(kind, type_name).iter_errors(doc),
                        key=lambda e: (list(e.absolute_path), str(e.validator)))
        if errors:
            best = jsonschema.exceptions.best_match(errors)
            more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
            raise ConfigError(_sentence(best, base) + more)
        return apply_defaults(schema, doc)

    def references(self, kind: str, type_name: str) -> dict[str, str]:
        """Config property -> the kind it names (from `x-ref`), for dependency order and dangling checks."""
        schema = self.type_schema(kind, type_name)
        out = {}
        for name, ps in (schema.get("properties") or {}).items():
            ref = ps.get("x-ref") or (ps.get("items") or {}).get("x-ref")
            if ref:
                out[name] = ref
        return out
