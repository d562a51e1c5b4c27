"""etcd keys <-> typed instance documents (DESIGN §2): one key per leaf under <root>/<kind>/<name>/."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from evc import schema as schemas
from evc.errors import ConfigError
from evc.registry import KINDS

SECTIONS = ("type", "config", "state", "data")
# A kind with one implementation needs no `type` leaf.
DEFAULT_TYPES = {"token": "token"}


@dataclass(frozen=True)
class Key:
    kind: str
    name: str
    section: str            # one of SECTIONS
    path: tuple[str, ...]   # below the section ("A", "L1"); empty for `type`

    @property
    def instance(self) -> tuple[str, str]:
        return self.kind, self.name


def parse_key(root: str, key: str) -> Key | None:
    """`<root>/<kind>/<name>/<section>/<path...>` -> Key; None for keys that are not part of the tree."""
    root = root.rstrip("/")
    if not key.startswith(root + "/"):
        return None
    parts = key[len(root) + 1:].split("/")
    if len(parts) < 3 or parts[0] not in KINDS or not parts[1] or parts[2] not in SECTIONS:
        return None
    if parts[2] == "type":
        return Key(parts[0], parts[1], "type", ()) if len(parts) == 3 else None
    if len(parts) < 4 or not all(parts[3:]):
        return None
    return Key(parts[0], parts[1], parts[2], tuple(parts[3:]))


def leaf_text(value: Any) -> str:
    """How a config or state value is written into one leaf: strings raw, everything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def decode_leaf(text: str, ps: dict | None, leaf: str) -> Any:
    """Decode one leaf's text by its property schema (DESIGN §2): string leaves hold raw text (a JSON-quoted string is
    accepted too); numbers, booleans, arrays and objects hold JSON."""
    types = schemas.allowed_types(ps)
    if types == {"string"}:
        return _unquote(text)
    try:
        v = json.loads(text)
    except ValueError:
        if not types or "string" in types:
            return text
        raise ConfigError(f"{leaf}: {text!r} is not a valid {' or '.join(sorted(types))}") from None
    if types and "string" in types and isinstance(v, (int, float, bool)) and not (types & {"number", "integer", "boolean"}):
        return text
    return v


@dataclass
class InstanceLeaves:
    """The raw leaves of one instance as read from etcd."""
    kind: str
    name: str
    type_leaf: str | None = None
    config: dict[tuple[str, ...], str] = field(default_factory=dict)

    def type_name(self) -> str:
        """The type string: `<name>/type`, else the seed's `<name>/config/type`, else the kind's only type."""
        if self.type_leaf is not None and self.type_leaf.strip():
            return _unquote(self.type_leaf.strip())
        seed = self.config.get(("type",))
        if seed is not None and seed.strip():
            return _unquote(seed.strip())
        if self.kind in DEFAULT_TYPES:
            return DEFAULT_TYPES[self.kind]
        raise ConfigError("type: missing (write the type string to "
                          f"{self.kind}/{self.name}/type, or to {self.kind}/{self.name}/config/type)")

    def empty(self) -> bool:
        return self.type_leaf is None and not self.config

    def document(self, schema: dict) -> dict:
        """Nest the config leaves into one document, each decoded by its property's schema. The seed's
        `config/type` is dropped when the schema does not declare it."""
        doc: dict = {}
        for path, text in sorted(self.config.items()):
            leaf = "config/" + "/".join(path)
            if path == ("type",) and "type" not in (schema.get("properties") or {}):
                continue
            value = decode_leaf(text, schemas.property_schema(schema, path), leaf)
            node = doc
            for part in path[:-1]:
                nxt = node.setdefault(part, {})
                if not isinstance(nxt, dict):
                    raise ConfigError(f"{leaf}: conflicts with the leaf config/{'/'.join(path[:path.index(part) + 1])}")
                node = nxt
            if isinstance(node.get(path[-1]), dict):
                raise ConfigError(f"{leaf}: a leaf where config/{'/'.join(path)}/... holds more leaves")
            node[path[-1]] = value
        return doc


def _unquote(text: str) -> str:
    """Raw text, or the string inside a JSON-quoted one."""
    if text.startswith('"'):
        try:
            v = json.loads(text)
            if isinstance(v, str):
                return v
        except ValueError:
            pass
    return text


class Mirror:
    """The type and config leaves of every instance under a root, kept current from store events."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.instances: dict[tuple[str, str], InstanceLeaves] = {}

    def apply(self, key: str, value: bytes | None) -> tuple[str, str] | None:
        """Apply one put (value) or delete (None). Returns the instance whose configuration changed, if any."""
        k = parse_key(self.root, key)
        if k is None or k.section in ("state", "data"):
            return None
        inst = self.instances.get(k.instance)
        if inst is None:
            if value is None:
                return None
            inst = self.instances[k.instance] = InstanceLeaves(k.kind, k.name)
        text = None if value is None else value.decode("utf-8", errors="replace")
        if k.section == "type":
            if inst.type_leaf == text:
                return None
            inst.type_leaf = text
        else:
            if inst.config.get(k.path) == text:
                return None
            if text is None:
                inst.config.pop(k.path, None)
            else:
                inst.config[k.path] = text
        if inst.empty():
            del self.instances[k.instance]
        return k.instance


# --- documents (YAML/JSON files) <-> leaf keys, for `evc config load/dump` ---

def flatten(doc: dict, root: str) -> dict[str, str]:
    """A site document `{kind: {name: {type: T, config: {...}}}}` -> {etcd key: leaf text}.

    Nested objects become nested leaves; arrays and scalars are one leaf each. Errors name the path.
    """
    root = root.rstrip("/")
    out: dict[str, str] = {}
    if not isinstance(doc, dict):
        raise ConfigError("the file must hold a mapping of kinds (charger, meter, ...)")
    for kind, names in doc.items():
        if kind not in KINDS:
            raise ConfigError(f"{kind}: not a kind (kinds: {', '.join(KINDS)})")
        if not isinstance(names, dict):
            raise ConfigError(f"{kind}: must map instance names to their settings")
        for name, inst in names.items():
            where = f"{kind}/{name}"
            if not isinstance(inst, dict):
                raise ConfigError(f"{where}: must be a mapping with `type` and `config`")
            extra = set(inst) - {"type", "config"}
            if extra:
                raise ConfigError(f"{where}/{sorted(extra)[0]}: only `type` and `config` are loaded from files "
                                  "(state/ and data/ are EVC's)")
            if "type" in inst:
                if not isinstance(inst["type"], str):
                    raise ConfigError(f"{where}/type: must be a string")
                out[f"{root}/{where}/type"] = inst["type"]
            cfg = inst.get("config") or {}
            if not isinstance(cfg, dict):
                raise ConfigError(f"{where}/config: must be a mapping")
            for path, value in _walk(cfg, ()):
                out[f"{root}/{where}/config/" + "/".join(path)] = leaf_text(value)
    return out


def _walk(node: dict, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    for k, v in node.items():
        k = str(k)
        if "/" in k or not k:
            raise ConfigError(f"config/{'/'.join(prefix + (k,))}: a setting name may not be empty or hold '/'")
        if isinstance(v, dict) and v:
            yield from _walk(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def unflatten(kvs: Iterable[tuple[str, bytes]], root: str, sections: Iterable[str] = ("type", "config")) -> dict:
    """Leaf keys -> a site document (the inverse of flatten; config leaves decoded as JSON where they parse)."""
    want = set(sections)
    doc: dict = {}
    for key, value in kvs:
        k = parse_key(root, key)
        if k is None or k.section not in want:
            continue
        text = value.decode("utf-8", errors="replace")
        inst = doc.setdefault(k.kind, {}).setdefault(k.name, {})
        if k.section == "type":
            inst["type"] = text
            continue
        node = inst.setdefault(k.section, {})
        for part in k.path[:-1]:
            node = node.setdefault(part, {})
        try:
            node[k.path[-1]] = json.loads(text)
        except ValueError:
            node[k.path[-1]] = text
    return doc
