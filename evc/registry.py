"""Type string -> implementation, one registry per kind (charger, meter, conn, ...)."""
from __future__ import annotations

from typing import Callable, TypeVar

from evc.errors import ConfigError

KINDS = ("charger", "meter", "conn", "control", "reader", "front", "server", "token")

# Types named by the design whose implementation has not landed yet: configuring one is reported in
# state/error as "not available yet", distinct from a typo.
PLANNED: dict[str, set[str]] = {
}

T = TypeVar("T")


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._types: dict[str, type] = {}

    def register(self, type_name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            if type_name in self._types:
                raise ConfigError(f"{self.kind} type {type_name!r} is registered twice "
                                  f"({self._types[type_name].__qualname__} and {cls.__qualname__})")
            self._types[type_name] = cls
            cls.kind = self.kind
            cls.type_name = type_name
            return cls
        return deco

    def names(self) -> list[str]:
        _load_implementations()
        return sorted(self._types)

    def lookup(self, type_name: str, key: str = "") -> type:
        _load_implementations()
        try:
            return self._types[type_name]
        except KeyError:
            where = f"{key}: " if key else ""
            if type_name in PLANNED.get(self.kind, ()):
                raise ConfigError(f"{where}{self.kind} type {type_name!r} is not available yet in this "
                                  f"version of EVC (available: {', '.join(self.names()) or 'none'})") from None
            raise ConfigError(f"{where}unknown {self.kind} type {type_name!r} "
                              f"(known: {', '.join(self.names()) or 'none'})") from None


REGISTRIES: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
CHARGERS = REGISTRIES["charger"]
METERS = REGISTRIES["meter"]
CONNS = REGISTRIES["conn"]
CONTROLS = REGISTRIES["control"]
READERS = REGISTRIES["reader"]
FRONTS = REGISTRIES["front"]
SERVERS = REGISTRIES["server"]
TOKENS = REGISTRIES["token"]

# Modules that register types; imported on first lookup so that importing the registry stays cheap.
IMPLEMENTATIONS = (
    "evc.meter.sdm630",
    "evc.meter.sdm120",
    "evc.meter.sdm72",
    "evc.conn.rs485",
    "evc.charger.evcc_manual",
    "evc.control.builtin",
    "evc.server.ocpp",
    "evc.charger.ocpp",
    "evc.token.token",
    "evc.front.ocpp",
    "evc.front.manual",
    "evc.reader.rdm6300",
    "evc.reader.pn532",
    "evc.reader.line",
    "evc.reader.quio",
    "evc.front.ocpi",
    "evc.front.plugsurfing",
)
_loaded = False


def _load_implementations() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    for mod in IMPLEMENTATIONS:
        importlib.import_module(mod)
