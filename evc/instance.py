"""The contract between the supervisor and every configured instance (`<kind>/<name>`)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Protocol

from twisted.application import service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from evc.errors import ConfigError


class StateSink(Protocol):
    """Where an instance writes its live state (`<kind>/<name>/state/<path>`), see evc.state."""

    def set(self, path: str, value: Any, deadband: float | None = None) -> None:
        """Record `value` at `path` ("A/L1", "stale"); coalesced, written within one tick. Never blocks.

        `deadband`: for numbers, skip the write while |value - last written| <= deadband.
        """

    def update(self, values: dict[str, Any], deadband: float | None = None) -> None:
        """set() for many paths."""

    def delete(self, path: str) -> None:
        """Remove one state leaf."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """A configured instance that is not running because of a config error (what `Context.problems` lists)."""
    type_name: str | None       # the type string it names, None when that is what is wrong
    error: str                  # the sentence in its state/error
    leaves: dict[str, str]      # its raw config leaves as written in etcd ("cp_id" -> "WB-0042")


@dataclasses.dataclass
class Context:
    """What an instance gets from the supervisor. Nothing in an instance reaches for globals."""
    kind: str
    name: str
    clock: IReactorTime
    state: StateSink
    resolve: Callable[[str, str], "Instance"]   # (kind, name) -> the running instance it references
    store: Any = None                            # IStore, for data/ (persistent, not leased)
    root: str = ""                               # the site's root, e.g. "/evc/s1"
    reactor: Any = None                          # for connectTCP/listenTCP; tests pass MemoryReactor
    events: Any = None                           # evc.events.EventBus shared by every instance of the site
    find: Callable[[str], dict] = lambda kind: {}  # kind -> {name: running instance}, e.g. for `chargers: "*"`
    problems: Callable[[str], dict] = lambda kind: {}  # kind -> {name: Problem} of its instances not running

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    def data_key(self, path: str) -> str:
        return f"{self.root}/{self.kind}/{self.name}/data/{path}"


class Instance(service.Service):
    """Base of every type implementation. Subclasses set `Config` (a frozen dataclass whose fields are the
    schema's properties) and are registered with `@<KIND>S.register("<type>")`.

    The supervisor validates the config against `schema/<kind>/<type>.json` (defaults applied), builds
    `Config(**doc)` and calls `Instance(ctx, config)`; then `startService()` / `stopService()` (which may
    return a Deferred). A config change stops the old instance and starts a new one.
    """
    kind: ClassVar[str]
    type_name: ClassVar[str]
    Config: ClassVar[type]

    log = Logger()

    def __init__(self, ctx: Context, config: Any):
        self.ctx = ctx
        self.config = config
        self.setName(ctx.key)

    @classmethod
    def build_config(cls, doc: dict[str, Any]) -> Any:
        """Validated dict -> frozen Config. Unknown keys were already refused by the schema."""
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        if "type" not in fields:
            doc = {k: v for k, v in doc.items() if k != "type"}   # the seed's config/type selects, it configures nothing
        extra = set(doc) - fields
        if extra:
            raise ConfigError(f"config/{sorted(extra)[0]}: not a setting of {cls.kind} type {cls.type_name}")
        return cls.Config(**doc)


def named(selection: Any, name: str) -> bool:
    """Whether a `"*"`-or-list setting (e.g. `chargers`) names `name`."""
    return selection == "*" or name in selection


def select_instances(ctx: Context, kind: str, selection: Any, log=None) -> dict:
    """The running instances a `"*"`-or-list setting names. A listed one that is not running is logged (the
    supervisor reports why in its own state/error) and left out; `follow_instances` picks it up once it starts."""
    if selection == "*":
        return ctx.find(kind)
    found = {}
    for name in selection:
        try:
            found[name] = ctx.resolve(kind, name)
        except ConfigError:
            if log is not None:
                log.warn("{instance}: {kind} {name} is not running", instance=ctx.key, kind=kind, name=name)
    return found


def follow_instances(ctx: Context, kind: str, selection: Any, started: Callable, stopped: Callable) -> Callable:
    """Call started(name, svc) / stopped(name, svc) as instances of `kind` that `selection` names start and stop
    (a config change restarts an instance: stopped, then started with a new service). Returns unsubscribe()."""
    if ctx.events is None:
        return lambda: None

    def on_instance(topic: tuple, event) -> None:
        if len(topic) < 3 or not named(selection, topic[2]):
            return
        what, svc = event
        (started if what == "started" else stopped)(topic[2], svc)

    return ctx.events.subscribe(("instance", kind), on_instance)
