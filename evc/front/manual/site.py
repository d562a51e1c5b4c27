"""The site as front/manual shows it: a mirror of the root's etcd leaves turned into the API's objects.

The front reads what the other instances publish in etcd (state/, config/, data/sessions/) rather than their
internals, so the page shows exactly what `evc status` and etcdctl show. `SiteView.apply(events)` takes the store's
watch events and answers which objects changed: ("charger", name), ("meter", name), ("control", name),
("session", (charger, id)), ("error", key).
"""
from __future__ import annotations

import datetime
import json
from typing import Any, Callable, Iterable, Optional

from evc.errors import ConfigError
from evc.instance import named
from evc.schema import Catalog, property_schema
from evc.tree import decode_leaf, parse_key

PHASES = ("L1", "L2", "L3")
OPEN = ("plugged", "authorized", "charging", "suspended")


def iso(seconds: float | None) -> Optional[str]:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """ISO 8601 (no offset = UTC; a date alone = its midnight) -> epoch seconds; ValueError if not."""
    when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def _num(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    try:
        v = json.loads(text)
    except ValueError:
        return None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _bool(text: Optional[str]) -> Optional[bool]:
    return {"true": True, "false": False}.get((text or "").strip())


def _text(text: Optional[str]) -> Optional[str]:
    if text is None:
        return None
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] == '"':
        try:
            return json.loads(t)
        except ValueError:
            pass
    return text


class SiteView:
    """Leaves of one root ({"charger/s1/state/setpoint_A": "16.0", ...}, relative to the root), and the objects."""

    def __init__(self, root: str, chargers: Any = "*", clock=None, catalog: Catalog | None = None):
        self.root = root.rstrip("/")
        self.selection = chargers
        self.clock = clock
        self.catalog = catalog or Catalog()
        self.leaves: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.root.rsplit("/", 1)[-1]

    def now(self) -> float:
        return self.clock.seconds() if self.clock is not None else datetime.datetime.now().timestamp()

    # -- the mirror --

    def keep(self, key: str) -> Optional[str]:
        """The key relative to the root when the view needs it (type, config, state, data/sessions), else None."""
        k = parse_key(self.root, key)
        if k is None:
            return None
        if k.section == "data" and not (k.kind == "charger" and k.path[:1] == ("sessions",) and len(k.path) == 2):
            return None
        return key[len(self.root) + 1:]

    def apply(self, events: Iterable) -> set[tuple]:
        """Store watch events -> the objects whose content may have changed."""
        changed: set[tuple] = set()
        for e in events:
            rel = self.keep(e.key)
            if rel is None:
                continue
            if e.value is None:
                if self.leaves.pop(rel, None) is None:
                    continue
            else:
                text = e.value.decode("utf-8", errors="replace")
                if self.leaves.get(rel) == text:
                    continue
                self.leaves[rel] = text
            changed |= self.affected(rel)
        return changed

    def put_local(self, rel: str, text: Optional[str]) -> None:
        """What this front just wrote itself, ahead of the watch that will confirm it."""
        if text is None:
            self.leaves.pop(rel, None)
        else:
            self.leaves[rel] = text

    def affected(self, rel: str) -> set[tuple]:
        parts = rel.split("/")
        kind, name, section = parts[0], parts[1], parts[2]
        out: set[tuple] = set()
        if section == "state" and parts[3:] == ["error"]:
            out.add(("error", f"{kind}/{name}"))
        if kind == "charger" and self.visible(name):
            out.add(("charger", name))
            if section == "data":
                if parts[4] != "current":
                    out.add(("session", (name, parts[4])))
        elif kind == "meter":
            out.add(("meter", name))
        elif kind == "reader" and section in ("type", "config", "state"):
            out.add(("reader", name))
        elif kind == "control":
            out.add(("control", name))
            if section == "state" and parts[3:4] == ["allocations"] and len(parts) > 4 and self.visible(parts[4]):
                out.add(("charger", parts[4]))
        return out

    def _get(self, kind: str, name: str, section: str, path: str = "") -> Optional[str]:
        return self.leaves.get(f"{kind}/{name}/{section}" + (f"/{path}" if path else ""))

    def names(self, kind: str) -> list[str]:
        return sorted({k.split("/", 2)[1] for k in self.leaves if k.startswith(kind + "/")})

    def exists(self, kind: str, name: str) -> bool:
        prefix = f"{kind}/{name}/"
        return any(k.startswith(prefix) and k.split("/")[2] in ("type", "config") for k in self.leaves)

    def visible(self, charger: str) -> bool:
        return named(self.selection, charger)

    def chargers(self) -> list[str]:
        return [n for n in self.names("charger") if self.visible(n) and self.exists("charger", n)]

    def type_of(self, kind: str, name: str) -> Optional[str]:
        t = self._get(kind, name, "type") or self._get(kind, name, "config", "type")
        if t is None and kind == "token":
            return "token"
        return _text(t).strip() if t is not None else None

    def config(self, kind: str, name: str) -> dict:
        """The instance's config leaves decoded by its type's schema, defaults applied where the schema has them."""
        type_name = self.type_of(kind, name)
        try:
            schema = self.catalog.type_schema(kind, type_name) if type_name else {}
        except ConfigError:
            schema = {}
        prefix = f"{kind}/{name}/config/"
        doc: dict = {}
        for rel, text in self.leaves.items():
            if not rel.startswith(prefix):
                continue
            path = rel[len(prefix):].split("/")
            node = doc
            for part in path[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    break
            else:
                try:
                    node[path[-1]] = decode_leaf(text, property_schema(schema, path), rel)
                except ConfigError:
                    node[path[-1]] = text
        for prop, ps in (schema.get("properties") or {}).items():
            if prop not in doc and "default" in ps:
                doc[prop] = ps["default"]
        return doc

    # -- objects --

    def charger(self, name: str) -> dict:
        st = lambda path: self._get("charger", name, "state", path)  # noqa: E731
        cfg = self.config("charger", name)
        phase_map = cfg.get("phase_map") or list(PHASES[:int(cfg.get("phases") or 3)])
        current = [_num(st(f"actual_A/{p}")) for p in PHASES]
        error = st("error")
        online = _bool(st("online"))
        if error and st("status") == "error":
            status = "error"
        elif st("status") is None and online is None:
            status = "unknown"            # not running (yet): nothing reports it
        elif online is False:
            status = "offline"
        else:
            status = _text(st("vehicle")) or "unknown"
        return {
            "name": name,
            "type": self.type_of("charger", name),
            "mode": _text(st("mode")) if cfg.get("mode") is None else cfg.get("mode"),
            "status": status,
            "setpoint_A": _num(st("setpoint_A")),
            "current_A": current,
            "phases": int(cfg.get("phases") or len(phase_map) or 3),
            "session": self.current_session(name),
            "reason": self._reason(name),
            "error": error,
        }

    def _reason(self, charger: str) -> Optional[str]:
        for control in self.names("control"):
            reason = self._get("control", control, "state", f"allocations/{charger}/reason")
            if reason is not None:
                return _text(reason)
        return None

    def session_record(self, charger: str, sid: str) -> Optional[dict]:
        raw = self._get("charger", charger, "data", f"sessions/{sid}")
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def current_session(self, charger: str) -> Optional[dict]:
        sid = self._get("charger", charger, "data", "sessions/current")
        if sid is None:
            return None
        sid = _text(sid).strip()
        rec = self.session_record(charger, sid) or {}
        energy = rec.get("energy_Wh")
        if _text(self._get("charger", charger, "state", "session/id")) == sid:
            live = _num(self._get("charger", charger, "state", "session/energy_Wh"))
            if live is not None:
                energy = live
        state = rec.get("state")
        if _text(self._get("charger", charger, "state", "session/id")) == sid:
            state = _text(self._get("charger", charger, "state", "session/state")) or state
        return {"id": sid, "state": state, "id_tag": rec.get("id_tag"), "started": rec.get("start_time"),
                "energy_Wh": energy, "duration_s": self._duration(rec)}

    def _duration(self, rec: dict) -> Optional[float]:
        try:
            start = parse_time(rec["start_time"])
        except (KeyError, TypeError, ValueError):
            return None
        try:
            end = parse_time(rec["stop_time"]) if rec.get("stop_time") else self.now()
        except (TypeError, ValueError):
            end = self.now()
        return round(max(0.0, end - start), 1)

    def session(self, charger: str, sid: str) -> Optional[dict]:
        """A record of data/sessions as the API lists it: as stored, plus charger and duration_s."""
        rec = self.session_record(charger, sid)
        if rec is None:
            return None
        out = dict(rec)
        out["id"] = sid
        out["charger"] = charger
        out["duration_s"] = self._duration(rec)
        return out

    def sessions(self, charger: Optional[str] = None, from_s: Optional[float] = None,
                 to_s: Optional[float] = None) -> list[dict]:
        """Every stored session of the visible chargers (newest first), filtered by charger and start time."""
        out = []
        for rel in self.leaves:
            parts = rel.split("/")
            if parts[0] != "charger" or parts[2] != "data" or parts[4] == "current":
                continue
            if not self.visible(parts[1]) or (charger is not None and parts[1] != charger):
                continue
            s = self.session(parts[1], parts[4])
            if s is None:
                continue
            try:
                start = parse_time(s.get("start_time") or "")
            except ValueError:
                start = None
            if from_s is not None and (start is None or start < from_s):
                continue
            if to_s is not None and (start is None or start >= to_s):
                continue
            out.append(s)
        out.sort(key=lambda s: (s.get("start_time") or "", s["id"]), reverse=True)
        return out

    def meter(self, name: str) -> dict:
        st = lambda path: self._get("meter", name, "state", path)  # noqa: E731
        updated = _num(st("updated"))
        stale = _bool(st("stale"))
        return {
            "name": name,
            "type": self.type_of("meter", name),
            "A": [_num(st(f"A/{p}")) for p in PHASES],
            "V": [_num(st(f"V/{p}")) for p in PHASES],
            "W": [_num(st(f"W/{p}")) for p in PHASES],
            "power_W": _num(st("W_total")),
            "energy_Wh": _num(st("energy_Wh")),
            "stale": True if stale is None else stale,
            "updated": iso(updated),
        }

    def control(self, name: Optional[str] = None) -> dict:
        """The site's load management (the first control, or `name`): its grid meter, limit and state per phase."""
        names = self.names("control")
        if name is None:
            name = names[0] if names else None
        if name is None or not self.exists("control", name):
            return {"name": None, "type": None, "meter": None, "A_max": [None, None, None], "mode": None,
                    "headroom_A": [None, None, None], "base_A": [None, None, None]}
        cfg = self.config("control", name)
        st = lambda path: self._get("control", name, "state", path)  # noqa: E731
        return {
            "name": name,
            "type": self.type_of("control", name),
            "meter": cfg.get("meter"),
            "A_max": _per_phase(cfg.get("A_max")),
            "mode": _text(st("mode")),
            "headroom_A": [_num(st(f"headroom/{p}")) for p in PHASES],
            "base_A": [_num(st(f"base/{p}")) for p in PHASES],
        }

    def errors(self) -> list[dict]:
        out = []
        for rel, text in sorted(self.leaves.items()):
            parts = rel.split("/")
            if parts[2:] == ["state", "error"] and (parts[0] != "charger" or self.visible(parts[1])):
                out.append({"key": f"{parts[0]}/{parts[1]}", "error": text})
        return out

    def error(self, key: str) -> dict:
        return {"key": key, "error": self.leaves.get(f"{key}/state/error")}

    def site(self) -> dict:
        return {"name": self.name,
                "chargers": [self.charger(n) for n in self.chargers()],
                "meters": [self.meter(n) for n in self.names("meter") if self.exists("meter", n)],
                "control": self.control(),
                "errors": self.errors()}

    # -- readers --

    def readers(self) -> list[str]:
        """The readers that serve a charger this front shows (a reader for "*" serves them all)."""
        out = []
        for name in self.names("reader"):
            if not self.exists("reader", name):
                continue
            served = self._reader_chargers(name)
            if served == "*" or any(self.visible(c) for c in served):
                out.append(name)
        return out

    def _reader_chargers(self, name: str) -> Any:
        cfg = self.config("reader", name)
        if isinstance(cfg.get("charger"), str):
            return [cfg["charger"]]
        chargers = cfg.get("chargers")
        if chargers == "*":
            return "*"
        return [c for c in chargers if isinstance(c, str)] if isinstance(chargers, list) else []

    def reader(self, name: str) -> dict:
        """A reader: its type, the chargers it serves (those this front shows), its link, the newest card."""
        st = lambda path: self._get("reader", name, "state", path)  # noqa: E731
        served = self._reader_chargers(name)

        def obj(text: Optional[str]) -> Optional[dict]:
            try:
                v = json.loads(text) if text is not None else None
            except ValueError:
                return None
            return v if isinstance(v, dict) else None
        card = obj(st("last_card"))
        if card is not None:
            card = {k: card.get(k) for k in ("id_tag", "time", "answer", "charger")}
        held = obj(st("held"))
        return {
            "name": name,
            "type": self.type_of("reader", name),
            "chargers": served if served == "*" else [c for c in served if self.visible(c)],
            "link": _text(st("link")),
            "last_card": card,
            "held": {"id_tag": held.get("id_tag"), "until": held.get("until")} if held else None,
            "error": st("error"),
        }

    # -- tokens --

    def tokens(self) -> list[dict]:
        return [self.token(n) for n in self.names("token") if self.exists("token", n)]

    def token(self, id_tag: str) -> dict:
        cfg = self.config("token", id_tag)
        return {"id": id_tag, "status": cfg.get("status", "Accepted"), "expiry": cfg.get("expiry"),
                "chargers": cfg.get("chargers", "*"), "owner": cfg.get("owner"),
                "parent_id_tag": cfg.get("parent_id_tag")}


def _per_phase(value: Any) -> list:
    """A control's A_max (one number, [L1, L2, L3] or {"L1": ..}) -> [L1, L2, L3]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * 3
    if isinstance(value, list) and len(value) == 3:
        return [float(v) if isinstance(v, (int, float)) else None for v in value]
    if isinstance(value, dict):
        return [float(value[p]) if isinstance(value.get(p), (int, float)) else None for p in PHASES]
    return [None, None, None]


Changed = Callable[[set], None]
