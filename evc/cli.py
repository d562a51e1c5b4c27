"""The `evc` command: load, dump and validate a site's configuration, and show every instance's live status."""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, TextIO

import yaml

from evc.errors import ConfigError, StoreError, StoreUnavailable
from evc.registry import KINDS, PLANNED
# _sentence: every schema error in the same words the running EVC writes to state/error.
from evc.schema import Catalog, _sentence, allowed_types, property_schema
from evc.tree import Mirror, decode_leaf, flatten, parse_key, unflatten

# etcd refuses a txn with more operations than its --max-txn-ops (128 by default).
MAX_TXN_OPS = 128

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


class Problem(Exception):
    """A user mistake, reported as one or more sentences (never a traceback)."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


# --- reading site documents (YAML or JSON) ---

class _SiteLoader(yaml.SafeLoader):
    """YAML with the 1.2 core schema's scalars: only true/false are booleans, so the seed's `mode: OFF` stays the
    string OFF (YAML 1.1 would read it as false), `bus: 10:20` is not a base-60 number, and a key given twice is an
    error instead of silently keeping the last one."""


_SiteLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SiteLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))
_SiteLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                  list("-+0123456789"))
_SiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text)


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"{key!r} is given twice (first on line {seen[key].start_mark.line + 1})",
                key_node.start_mark)
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_SiteLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_SiteLoader.add_constructor("tag:yaml.org,2002:map", lambda loader, node: _construct_mapping(loader, node, True))


@dataclass
class SiteFile:
    path: str
    doc: Any
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)   # document path -> line (1-based)

    def where(self, *path: str) -> str:
        """`file:line` for the deepest part of `path` that the file has a line for."""
        for n in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:n]))
            if line:
                return f"{self.path}:{line}"
        return self.path


def read_site_file(path: str) -> SiteFile:
    """Parse a YAML or JSON site document; a syntax error names the file, line and column."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise Problem(f"{path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise Problem(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.endswith(".json") or text.lstrip().startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise Problem(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
        return SiteFile(path, doc if doc is not None else {}, _json_lines(text))
    try:
        doc = yaml.load(text, Loader=_SiteLoader)
        node = yaml.compose(text, Loader=_SiteLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        if mark is not None:
            raise Problem(f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {what}") from None
        raise Problem(f"{path}: not valid YAML: {what}") from None
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _yaml_lines(node, (), lines)
    return SiteFile(path, doc if doc is not None else {}, lines)


def _yaml_lines(node, prefix: tuple[str, ...], out: dict) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                path = prefix + (str(k.value),)
                out.setdefault(path, k.start_mark.line + 1)
                _yaml_lines(v, path, out)


def _json_lines(text: str) -> dict[tuple[str, ...], int]:
    """Best effort: the line of each key in a JSON document (by scanning for `"key":` in document order)."""
    out: dict[tuple[str, ...], int] = {}

    def walk(obj, prefix, pos):
        if not isinstance(obj, dict):
            return pos
        for k, v in obj.items():
            m = re.compile(r'"' + re.escape(json.dumps(str(k))[1:-1]) + r'"\s*:').search(text, pos)
            if m is None:
                return pos
            out[prefix + (str(k),)] = text.count("\n", 0, m.start()) + 1
            pos = walk(v, prefix + (str(k),), m.end())
        return pos

    try:
        walk(json.loads(text), (), 0)
    except (ValueError, re.error):
        pass
    return out


# --- checking a site document against the schemas ---

@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    instances: set[tuple[str, str]] = field(default_factory=set)


def check_site(site: SiteFile, catalog: Catalog | None = None,
               known_elsewhere: Iterable[tuple[str, str]] = (), elsewhere: str = "") -> tuple[dict[str, str], Report]:
    """Validate every instance of a site document the way the running EVC will see it (through its etcd leaves).

    Returns the leaves (relative keys `kind/name/...` -> text) and a report. Types that are planned but not
    available yet are warnings (their config is checked only if a schema exists for them). References (`x-ref`)
    must name an instance of the file or one of `known_elsewhere`.
    """
    catalog = catalog or Catalog()
    report = Report()
    try:
        leaves = {k[1:]: v for k, v in flatten(site.doc, "").items()}
    except ConfigError as e:
        report.errors.append(f"{site.where(*_path_of(str(e)))}: {e}")
        return {}, report
    mirror = Mirror("")
    for key, text in leaves.items():
        mirror.apply("/" + key, text.encode())
    # An instance given with neither type nor config has no leaves: still an instance the file mentions.
    for kind, names in site.doc.items():
        for name, inst in (names or {}).items():
            report.instances.add((kind, str(name)))
            if (kind, str(name)) not in mirror.instances:
                report.errors.append(f"{site.where(kind, str(name))}: {kind}/{name}: has neither `type` nor `config`")
    known = report.instances | set(known_elsewhere)
    for (kind, name), inst in sorted(mirror.instances.items()):
        base = f"{kind}/{name}"
        where = lambda *p: site.where(kind, name, *p)  # noqa: E731
        type_key = "type" if inst.type_leaf is not None else "config/type"
        try:
            type_name = inst.type_name()
        except ConfigError as e:
            report.errors.append(f"{where()}: {base}/{e}")
            continue
        registry = catalog.registries.get(kind)
        if registry is None:
            report.errors.append(f"{where()}: {base}: this EVC has no {kind} types")
            continue
        if type_name not in registry.names():
            if type_name in PLANNED.get(kind, ()):
                report.warnings.append(
                    f"{where(*type_key.split('/'))}: {base}/{type_key}: {kind} type {type_name!r} is not available "
                    f"yet in this version of EVC (allowed; EVC reports it in {base}/state/error)")
            else:
                try:
                    registry.lookup(type_name, f"{base}/{type_key}")
                except ConfigError as e:
                    report.errors.append(f"{where(*type_key.split('/'))}: {e}")
                continue
        try:
            schema = catalog.type_schema(kind, type_name)
        except ConfigError:
            continue   # planned, no schema yet: nothing to check its config against
        try:
            doc = inst.document(schema)
        except ConfigError as e:
            report.errors.append(f"{where('config', *_path_of(str(e))[1:])}: {base}/{e}")
            continue
        problems = sorted(catalog.validator(kind, type_name).iter_errors(doc),
                          key=lambda err: (list(map(str, err.absolute_path)), str(err.validator)))
        for err in problems:
            sentence = _sentence(err, f"{base}/config")
            leaf = sentence.split(":", 1)[0].split("/")[2:]
            report.errors.append(f"{where(*leaf)}: {sentence}")
        if problems:
            continue
        full = catalog.validate(kind, type_name, doc)
        for prop, ref_kind in catalog.references(kind, type_name).items():
            value = full.get(prop)
            names = value if isinstance(value, list) else [value] if isinstance(value, str) else []
            for ref in names:
                if ref != "*" and (ref_kind, ref) not in known:
                    report.errors.append(
                        f"{where('config', prop)}: {base}/config/{prop}: {ref_kind} {ref!r} is not configured "
                        f"(it is not in {site.path}{elsewhere})")
    return leaves, report


def _path_of(sentence: str) -> list[str]:
    """The leaf path a ConfigError sentence starts with (`meter/m1/config: ...` -> [meter, m1, config])."""
    head = sentence.split(":", 1)[0]
    return [p for p in head.split("/") if p] if " " not in head else []


# --- etcd ---

def open_store(args, reactor):
    from evc.store.etcd import EtcdStore
    password = os.environ.get("EVC_ETCD_PASSWORD")
    if args.etcd_user and password is None:
        raise Problem(f"--etcd-user {args.etcd_user}: set the password in the environment variable EVC_ETCD_PASSWORD")
    try:
        return EtcdStore(args.etcd, reactor, user=args.etcd_user, password=password if args.etcd_user else None,
                         ca_file=args.etcd_ca, cert_file=args.etcd_cert, key_file=args.etcd_key)
    except StoreError as e:
        raise Problem(str(e)) from None


def _store_problem(args, e: Exception) -> Problem:
    """etcd's errors already name its URL (never the password)."""
    text = str(e) or f"{type(e).__name__} from etcd at {args.etcd}"
    if isinstance(e, StoreUnavailable):
        return Problem(f"{text}; is etcd running, and is --etcd (or EVC_ETCD_URL) right?")
    return Problem(text)


async def _read_root(store, args):
    """Every key under --root; a store problem becomes a Problem naming etcd and what to check."""
    try:
        return (await store.range(args.root + "/", prefix=True)).kvs
    except StoreError as e:
        raise _store_problem(args, e) from None


async def _read_root_once(args, reactor):
    """_read_root on a store opened for this one read."""
    store = open_store(args, reactor)
    try:
        return await _read_root(store, args)
    finally:
        await store.close()


# --- commands ---

async def cmd_load(args, reactor, out: TextIO, err: TextIO, catalog: Catalog | None = None) -> int:
    site = read_site_file(args.file)
    store = open_store(args, reactor)
    try:
        kvs = await _read_root(store, args)
        existing = {kv.key: kv.value for kv in kvs}
        config_keys = {k for k in existing if (p := parse_key(args.root, k)) and p.section in ("type", "config")}
        present = set() if args.replace else {parse_key(args.root, k).instance for k in config_keys}
        leaves, report = check_site(site, catalog, known_elsewhere=present, elsewhere=f" nor under {args.root}")
        for w in report.warnings:
            print(f"warning: {w}", file=err)
        if report.errors:
            for e in report.errors:
                print(f"error: {e}", file=err)
            if not args.force:
                n = len(report.errors)
                print(f"{args.file}: {n} error{'s' if n > 1 else ''}; nothing written (--force writes anyway)",
                      file=err)
                return EXIT_ERRORS
            print("--force: writing anyway; the running EVC reports these in state/error", file=err)

        from evc.store import Delete, Put
        wanted = {f"{args.root}/{k}": v.encode() for k, v in leaves.items()}
        puts = [Put(k, v) for k, v in sorted(wanted.items()) if existing.get(k) != v]
        deletes = [Delete(k) for k in sorted(config_keys - set(wanted))] if args.replace else []
        ops = deletes + puts
        try:
            for i in range(0, len(ops), MAX_TXN_OPS):
                await store.txn((), ops[i:i + MAX_TXN_OPS])
        except StoreError as e:
            raise _store_problem(args, e) from None
        unchanged = len(wanted) - len(puts)
        n = len(report.instances)
        print(f"{args.root}: {len(puts)} leaves written, {unchanged} unchanged, {len(deletes)} deleted "
              f"({n} instance{'' if n == 1 else 's'} from {args.file})", file=out)
        return EXIT_OK
    finally:
        await store.close()


async def cmd_dump(args, reactor, out: TextIO, err: TextIO, catalog: Catalog | None = None) -> int:
    kvs = await _read_root_once(args, reactor)
    doc = dump_document([(kv.key, kv.value) for kv in kvs], args.root, catalog)
    if not doc:
        print(f"nothing is configured under {args.root}", file=err)
    if args.format == "json":
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        yaml.safe_dump(doc, out, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return EXIT_OK


def dump_document(kvs: list[tuple[str, bytes]], root: str, catalog: Catalog | None = None) -> dict:
    """The root's type/config leaves as a site document. Leaves are decoded by their type's schema where there is
    one (so a string setting that looks like a number stays a string); otherwise as JSON where they parse."""
    catalog = catalog or Catalog()
    doc = unflatten(kvs, root)
    mirror = Mirror(root)
    for k, v in kvs:
        mirror.apply(k, v)
    for (kind, name), inst in mirror.instances.items():
        try:
            schema = catalog.type_schema(kind, inst.type_name())
        except ConfigError:
            continue
        cfg = doc.get(kind, {}).get(name, {}).get("config")
        for path, text in inst.config.items():
            ps = property_schema(schema, path)
            if ps is None or not allowed_types(ps):
                continue
            try:
                value = decode_leaf(text, ps, "")
            except ConfigError:
                continue
            node = cfg
            for part in path[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and path[-1] in node and not isinstance(node[path[-1]], dict):
                node[path[-1]] = value
    # Kinds in the design's order, then names; `type` before `config` (how people write these files).
    rank = {k: i for i, k in enumerate(KINDS)}
    return {kind: {name: {s: doc[kind][name][s] for s in ("type", "config") if s in doc[kind][name]}
                   for name in sorted(doc[kind])}
            for kind in sorted(doc, key=lambda k: (rank.get(k, 99), k))}


def cmd_validate(args, out: TextIO, err: TextIO, catalog: Catalog | None = None) -> int:
    try:
        site = read_site_file(args.file)
    except Problem as e:
        return _report(e, err)
    _, report = check_site(site, catalog)
    for w in report.warnings:
        print(f"warning: {w}", file=err)
    for e in report.errors:
        print(f"error: {e}", file=err)
    n = len(report.errors)
    if n:
        print(f"{args.file}: {n} error{'s' if n > 1 else ''}", file=err)
        return EXIT_ERRORS
    n = len(report.instances)
    print(f"{args.file}: {n} instance{'' if n == 1 else 's'}, valid"
          + (f" ({len(report.warnings)} warning{'s' if len(report.warnings) > 1 else ''})" if report.warnings else ""),
          file=out)
    return EXIT_OK


@dataclass
class InstanceStatus:
    kind: str
    name: str
    type: str | None = None
    status: str | None = None
    error: str | None = None
    state: dict[str, Any] = field(default_factory=dict)    # "A/L1" -> 3.3: flat, because a leaf (W, the total)
                                                            # may have leaves below it (W/L1) in etcd

    def as_json(self) -> dict:
        return {"instance": f"{self.kind}/{self.name}", "kind": self.kind, "name": self.name, "type": self.type,
                "status": self.status, "error": self.error, "state": self.state}


def collect_status(kvs: list[tuple[str, bytes]], root: str) -> list[InstanceStatus]:
    """One entry per instance that has any leaf under the root (config, state or data)."""
    mirror = Mirror(root)
    found: dict[tuple[str, str], InstanceStatus] = {}
    for key, value in kvs:
        k = parse_key(root, key)
        if k is None:
            continue
        mirror.apply(key, value)
        inst = found.setdefault(k.instance, InstanceStatus(k.kind, k.name))
        if k.section == "state":
            text = value.decode("utf-8", errors="replace")
            try:
                inst.state["/".join(k.path)] = json.loads(text)
            except ValueError:
                inst.state["/".join(k.path)] = text
    for ident, inst in found.items():
        leaves = mirror.instances.get(ident)
        if leaves is not None:
            try:
                inst.type = leaves.type_name()
            except ConfigError:
                inst.type = None
        status = inst.state.get("status")
        inst.status = status if isinstance(status, str) else None
        error = inst.state.get("error")
        inst.error = str(error) if error is not None else None
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(found.values(), key=lambda s: (order.get(s.kind, 99), s.kind, s.name))


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _phases(st: dict, key: str, spec: str) -> str | None:
    """"20.0/19.9/20.1" from key/L1..L3 (the phases present), or None."""
    values = [st[k] for k in sorted(st) if k.startswith(key + "/L")]
    return "/".join(format(v, spec) if _is_num(v) else str(v) for v in values) or None


def _charger_summary(st: dict) -> list[str]:
    parts = []
    vehicle = st.get("vehicle")
    if vehicle is not None:
        parts.append(str(vehicle) if st.get("online") is not False else f"offline (last: {vehicle})")
    if st.get("mode") == "OFF":
        parts.append("mode OFF")
    if _is_num(st.get("setpoint_A")):
        parts.append(f"setpoint {st['setpoint_A']:g} A")
    drawing = _phases(st, "actual_A", ".1f")
    if drawing:
        parts.append(f"drawing {drawing} A")
    if st.get("session/state") is not None:
        energy = st.get("session/energy_Wh")
        reason = st.get("session/reason") if st["session/state"] == "ended" else None
        parts.append(f"session {st['session/state']}" + (f" {energy:.0f} Wh" if _is_num(energy) else "")
                     + (f" ({reason})" if reason else ""))
        if st.get("session/meter_reset") is True:
            parts.append("METER RESET: energy incomplete")
    if st.get("fault"):
        parts.append(f"fault: {st['fault']}")
    return parts


def _control_summary(st: dict) -> list[str]:
    parts = []
    if st.get("mode") is not None:
        parts.append(f"mode {st['mode']}")
    headroom = _phases(st, "headroom", ".1f")
    if headroom:
        parts.append(f"headroom {headroom} A")
    chargers = sorted({k.split("/")[1] for k in st if k.startswith("allocations/") and k.count("/") == 2})
    for name in chargers:
        amps, reason = st.get(f"allocations/{name}/A"), st.get(f"allocations/{name}/reason")
        text = f"{name} {amps:g} A" if _is_num(amps) else name
        parts.append(text + (f" ({reason})" if reason else ""))
    return parts


def live_summary(inst: InstanceStatus) -> str:
    """The few live values an operator looks at first: a meter's total power, current and voltage per phase and
    error counters; a charger's car, setpoint, measured draw and session; control's mode, headroom per phase and
    each charger's allocation with its reason; for other types their first few scalar state values."""
    st = {k: v for k, v in inst.state.items() if k not in ("status", "error")}
    special = {"charger": _charger_summary, "control": _control_summary}.get(inst.kind)
    if special is not None:
        parts = special(st)
        if parts:
            return ", ".join(parts)
    parts: list[str] = []
    shown: set[str] = set()

    def fmt(v, spec):
        return format(v, spec) if _is_num(v) else str(v)

    for key, unit, spec in (("setpoint_A", "A", "g"), ("W_total", "W", ".0f"), ("A", "A", ".1f"), ("V", "V", ".0f"),
                            ("energy_Wh", "Wh", ".0f")):
        phases = sorted(k for k in st if k.startswith(key + "/L"))
        if key in st and not (phases and key in ("A", "V")):
            parts.append(f"{fmt(st[key], spec)} {unit}")
            shown.add(key)
        if phases and key in ("A", "V"):
            parts.append("/".join(fmt(st[k], spec) for k in phases) + f" {unit}")
        shown.update(phases)
    if st.get("stale") is True:
        parts.append("STALE")
    counters = [f"{k.split('/', 1)[1]} {v}" for k, v in sorted(st.items())
                if k.startswith("errors/") and _is_num(v) and v]
    if counters:
        parts.append("errors: " + ", ".join(counters))
    if not parts:
        for key in sorted(st):
            if key not in ("stale", "updated") and not key.startswith("errors/") and len(parts) < 4:
                parts.append(f"{key}={st[key]}")
    return ", ".join(parts)


async def cmd_status(args, reactor, out: TextIO, err: TextIO, catalog: Catalog | None = None) -> int:
    kvs = await _read_root_once(args, reactor)
    instances = collect_status([(kv.key, kv.value) for kv in kvs], args.root)
    if args.json:
        json.dump([i.as_json() for i in instances], out, indent=2, sort_keys=True)
        out.write("\n")
    elif not instances:
        print(f"nothing under {args.root} (load a site with `evc --root {args.root} config load FILE`)", file=out)
    else:
        rows = [("INSTANCE", "TYPE", "STATUS", "LIVE", "ERROR")]
        for i in instances:
            rows.append((f"{i.kind}/{i.name}", i.type or "?", i.status or "—", live_summary(i), i.error or ""))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        for r in rows:
            print("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4], file=out)
        if all(i.status is None for i in instances):
            print(f"(no instance has a status: is EVC running on --root {args.root}?)", file=out)
    return EXIT_ERRORS if any(i.status == "error" for i in instances) else EXIT_OK


def cmd_passwd(args, out: TextIO, err: TextIO, stdin: TextIO | None = None) -> int:
    """`evc passwd`: the salted hash of a charge point password (read from the terminal twice, or one line of
    stdin), or a new random password with its hash (--generate). The password is never written anywhere else."""
    import getpass
    import secrets

    from evc.ocpp.cs_auth import DEFAULT_ITERATIONS, hash_password
    iterations = args.iterations if args.iterations is not None else DEFAULT_ITERATIONS
    if iterations < 1:
        raise Problem("--iterations: must be at least 1")
    stdin = stdin or sys.stdin
    if args.generate:
        password = secrets.token_hex(20)
        out.write(f"password: {password}\n")
        out.write("(set it on the charge point as its AuthorizationKey / basic auth password)\n")
        out.write(f"password_hash: {hash_password(password, iterations)}\n")
        return EXIT_OK
    if stdin.isatty():
        password = getpass.getpass("charge point password: ", stream=err)
        if getpass.getpass("again: ", stream=err) != password:
            raise Problem("the two passwords differ; nothing was hashed")
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise Problem("empty password; nothing was hashed")
    if len(password.encode("utf-8")) < 16:
        print("warning: OCPP asks for passwords (AuthorizationKey) of 16 to 40 bytes", file=err)
    out.write(hash_password(password, iterations) + "\n")
    return EXIT_OK


def cmd_types(args, out: TextIO, err: TextIO, catalog: Catalog | None = None) -> int:
    out.write(types_markdown(catalog) if args.markdown else types_text(catalog))
    return EXIT_OK


# --- the type reference (docs/types.md is generated from it) ---

def _type_rows(schema: dict, prefix: str = "") -> list[tuple[str, dict, bool]]:
    rows = []
    required = set(schema.get("required", ()))
    for name, ps in (schema.get("properties") or {}).items():
        rows.append((prefix + name, ps, name in required))
        if ps.get("properties"):
            rows.extend(_type_rows(ps, prefix + name + "/"))
    return rows


def _type_text(ps: dict) -> str:
    if "enum" in ps:
        return " \\| ".join(json.dumps(v) if not isinstance(v, str) else v for v in ps["enum"])
    t = sorted(allowed_types(ps)) or ["any"]
    text = " or ".join(t)
    if "items" in ps and isinstance(ps["items"], dict):
        text += " of " + (" or ".join(sorted(allowed_types(ps["items"]))) or "any")
    bounds = [f"{sym} {ps[k]}" for k, sym in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                                                ("exclusiveMaximum", "<")) if k in ps]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _example_value(ps: dict):
    if "examples" in ps and ps["examples"]:
        return ps["examples"][0]
    m = re.search(r"\be\.g\. `?([^\s`;,)]+)", ps.get("description", ""))
    if m and "string" in allowed_types(ps):
        return m.group(1).rstrip(".")
    if "default" in ps:
        return ps["default"]
    if "const" in ps:
        return ps["const"]
    if "enum" in ps:
        return ps["enum"][0]
    t = sorted(allowed_types(ps))
    if "x-ref" in ps:
        return {"meter": "m1", "conn": "s123", "charger": "s1", "server": "cs"}.get(ps["x-ref"], "name")
    return {"integer": ps.get("minimum", 1), "number": ps.get("minimum", 1), "boolean": True,
            "array": [], "object": {}}.get(t[0] if t else "string", "text")


def _shell_word(text: str) -> str:
    return text if re.fullmatch(r"[\w@%+=:,./-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def types_markdown(catalog: Catalog | None = None) -> str:
    from evc.tree import leaf_text
    catalog = catalog or Catalog()
    buf = io.StringIO()
    w = buf.write
    w("<!-- generated by `evc types --markdown` from schema/<kind>/<type>.json: edit the schemas, then regenerate -->\n")
    for kind in KINDS:
        names = catalog.registries[kind].names()
        for type_name in names:
            try:
                schema = catalog.type_schema(kind, type_name)
            except ConfigError:
                continue
            w(f"\n### {kind}/{type_name}\n\n")
            if schema.get("description"):
                w(schema["description"].strip() + "\n\n")
            rows = _type_rows(schema)
            if rows:
                w("| setting | type | default | description |\n|---|---|---|---|\n")
                for path, ps, req in rows:
                    default = ("required" if req else "—") if "default" not in ps else f"`{json.dumps(ps['default'])}`"
                    desc = (ps.get("description") or "").replace("\n", " ").replace("|", "\\|")
                    if "x-ref" in ps or "x-ref" in (ps.get("items") or {}):
                        desc += f" Names a `{ps.get('x-ref') or ps['items']['x-ref']}` instance."
                    w(f"| `{path}` | {_type_text(ps)} | {default} | {desc} |\n")
            else:
                w("No settings.\n")
            w("\nExample:\n\n```sh\n")
            base = f"/evc/site1/{kind}/{'m1' if kind == 'meter' else 'x1'}"
            if kind != "token":
                w(f"etcdctl put {base}/type {type_name}\n")
            # What a minimal instance needs: the required settings, those of the first alternative when the schema
            # offers a choice (a meter's `bus` or `conn`), and any setting with an example value.
            required = set(schema.get("required", ()))
            for alt in (schema.get("oneOf") or schema.get("anyOf") or [])[:1]:
                required |= set(alt.get("required", ()))
            for path, ps, req in rows:
                if ps.get("properties") or ps.get("const") == type_name:
                    continue
                if req or path in required or "examples" in ps:
                    w(f"etcdctl put {base}/config/{path} {_shell_word(leaf_text(_example_value(ps)))}\n")
            w("```\n")
    planned = [(kind, t) for kind in KINDS for t in sorted(PLANNED.get(kind, ()))
               if t not in catalog.registries[kind].names()]
    w("\n### Not available yet\n\nTypes that are part of the design but not in this version of EVC can be configured "
      "(and `evc config load` accepts them with a warning); the running EVC does not start them and writes "
      "`state/status` = `error` and `state/error` = \"... is not available yet in this version of EVC\".\n\n")
    for kind, t in planned:
        w(f"- `{kind}/{t}`\n")
    if not planned:
        w("None in this version: every type of EVC's design is available.\n")
    return buf.getvalue()


def types_text(catalog: Catalog | None = None) -> str:
    catalog = catalog or Catalog()
    buf = io.StringIO()
    for kind in KINDS:
        for type_name in catalog.registries[kind].names():
            buf.write(f"{kind}/{type_name}\n")
            try:
                schema = catalog.type_schema(kind, type_name)
            except ConfigError:
                continue
            for path, ps, req in _type_rows(schema):
                extra = " (required)" if req else f" (default {json.dumps(ps['default'])})" if "default" in ps else ""
                buf.write(f"  {path}: {_type_text(ps)}{extra}\n")
        for t in sorted(PLANNED.get(kind, ())):
            if t not in catalog.registries[kind].names():
                buf.write(f"{kind}/{t} (not available yet)\n")
    return buf.getvalue()


# --- argument parsing and the entry point ---

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="evc", description="Look after one EVC charging site's configuration and live state in etcd.")
    p.add_argument("--etcd", default=os.environ.get("EVC_ETCD_URL", "http://127.0.0.1:2379"),
                   help="etcd client URL (env EVC_ETCD_URL; default %(default)s)")
    p.add_argument("--root", default=os.environ.get("EVC_ROOT"), help="the site's root key, e.g. /evc/site1 (env EVC_ROOT)")
    p.add_argument("--etcd-user", default=os.environ.get("EVC_ETCD_USER"),
                   help="etcd user name (env EVC_ETCD_USER); the password is read from env EVC_ETCD_PASSWORD")
    p.add_argument("--etcd-ca", default=os.environ.get("EVC_ETCD_CA"), help="CA file for https:// etcd URLs")
    p.add_argument("--etcd-cert", default=None, help="client certificate file for etcd (mutual TLS)")
    p.add_argument("--etcd-key", default=None, help="client key file for etcd (mutual TLS)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    cfg = sub.add_parser("config", help="load, dump or validate the site's configuration")
    csub = cfg.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    csub.required = True
    load = csub.add_parser("load", help="write a YAML/JSON site document into etcd")
    load.add_argument("file")
    load.add_argument("--replace", action="store_true",
                      help="also delete type/config leaves under the root that the file does not have "
                           "(state/ and data/ are never touched)")
    load.add_argument("--force", action="store_true", help="write even if the document has errors")
    dump = csub.add_parser("dump", help="print the root's type/config as a site document")
    dump.add_argument("--format", choices=("yaml", "json"), default="yaml")
    val = csub.add_parser("validate", help="check a site document offline (no etcd)")
    val.add_argument("file")

    st = sub.add_parser("status", help="every instance: type, status, live values, error")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    ty = sub.add_parser("types", help="the types this EVC knows and their settings (offline)")
    ty.add_argument("--markdown", action="store_true", help="as docs/types.md")

    pw = sub.add_parser("passwd", help="hash an OCPP charge point password for charger/<name>/config/password_hash, "
                                       "or a web page user's for front/<name>/config/users/<user>/password (offline)")
    pw.add_argument("--generate", action="store_true",
                    help="make a random 40-hex-digit password (an OCPP AuthorizationKey) and print it with its hash")
    pw.add_argument("--iterations", type=int, default=None, help="PBKDF2 iterations (default 200000)")
    return p


def _check_etcd_args(args) -> str | None:
    """A usage problem with the etcd options, or None."""
    if not args.root:
        return "--root is required (the site's key prefix in etcd, e.g. /evc/site1; or set EVC_ROOT)"
    if not args.root.startswith("/") or args.root.endswith("/"):
        return f"--root {args.root!r}: must start with '/' and not end with one"
    if not args.etcd.startswith(("http://", "https://")):
        return f"--etcd {args.etcd!r}: must be an http:// or https:// URL"
    return None


def _parse(argv, err: TextIO):
    """(parser, args), or (None, exit code) for a usage error or --help."""
    p = build_parser()
    old = sys.stderr
    sys.stderr = err
    try:
        return p, p.parse_args(argv)
    except SystemExit as e:
        return None, e.code if isinstance(e.code, int) else EXIT_USAGE
    finally:
        sys.stderr = old


def _offline(args, out, err, catalog) -> int | None:
    if args.command == "types":
        return cmd_types(args, out, err, catalog)
    if args.command == "passwd":
        return cmd_passwd(args, out, err)
    if args.command == "config" and args.action == "validate":
        return cmd_validate(args, out, err, catalog)
    return None


def _online(args):
    if args.command == "config":
        return {"load": cmd_load, "dump": cmd_dump}[args.action]
    return cmd_status


def _report(e: Problem, err: TextIO) -> int:
    for line in e.lines:
        print(f"error: {line}", file=err)
    return EXIT_ERRORS


async def run_async(argv: list[str], reactor, out: TextIO, err: TextIO, catalog: Catalog | None = None) -> int:
    """run() on a reactor that is already running (tests, the demo's helpers)."""
    p, args = _parse(argv, err)
    if p is None:
        return args
    try:
        code = _offline(args, out, err, catalog)
        if code is not None:
            return code
        usage = _check_etcd_args(args)
        if usage:
            print(f"evc: {usage}", file=err)
            return EXIT_USAGE
        return await _online(args)(args, reactor, out, err, catalog)
    except Problem as e:
        return _report(e, err)


def run(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 errors, 2 usage)."""
    out = out or sys.stdout
    err = err or sys.stderr
    p, args = _parse(argv, err)
    if p is None:
        return args
    try:
        code = _offline(args, out, err, None)
        if code is not None:
            return code
        usage = _check_etcd_args(args)
        if usage:
            p.print_usage(err)
            print(f"evc: {usage}", file=err)
            return EXIT_USAGE
        return _react(_online(args), args, out, err)
    except Problem as e:
        return _report(e, err)


def _react(fn, args, out, err) -> int:
    from twisted.internet import defer, task

    result = [EXIT_ERRORS]
    problem: list[Problem] = []

    def main(reactor):
        d = defer.ensureDeferred(fn(args, reactor, out, err))

        def done(code):
            result[0] = code

        def failed(f):
            if f.check(Problem):
                problem.append(f.value)
                return None
            return f
        return d.addCallbacks(done, failed)

    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None) and not problem:
            return EXIT_ERRORS
    if problem:
        raise problem[0]
    return result[0]


def main() -> None:
    # `evc status --json | head` should end quietly when head has read enough.
    import signal
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(run())


if __name__ == "__main__":
    main()
