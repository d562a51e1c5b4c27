"""The supervisor: mirrors the site's config from etcd and keeps one running service per valid instance."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from evc.errors import ConfigError
from evc.events import EventBus
from evc.instance import Context, Instance, Problem
from evc.schema import Catalog
from evc.state import StateWriter
from evc.tree import Mirror

Ident = tuple[str, str]   # (kind, name)


@dataclasses.dataclass
class Spec:
    """What one instance's config asks for, decoded and validated (or why it cannot be)."""
    type_name: str | None = None
    cls: type | None = None
    config: Any = None
    doc_text: str = ""                                   # canonical JSON of the validated doc, for comparisons
    refs: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)   # (leaf, kind, name)
    error: str | None = None


@dataclasses.dataclass
class Running:
    spec: Spec
    fingerprint: tuple
    service: Instance


class Supervisor(service.MultiService):
    """Loads the root, validates every instance, starts one child service per valid instance in dependency order
    (a meter after the conn it uses) and applies every later change live, restarting only what changed and what
    depends on it. Invalid config never stops anything else: the instance keeps its last good config (or is not
    started) and `<kind>/<name>/state/error` names the leaf that is wrong."""
    log = Logger()

    def __init__(self, store, root: str, state: StateWriter, clock: IReactorTime, reactor=None,
                 catalog: Catalog | None = None, events: EventBus | None = None):
        super().__init__()
        self.events = events or EventBus()
        self.store = store
        self.root = root.rstrip("/")
        self.state = state
        self.clock = clock
        self.reactor = reactor
        self.catalog = catalog or Catalog()
        self.mirror = Mirror(self.root)
        self.specs: dict[Ident, Spec] = {}
        self.instances: dict[Ident, Running] = {}
        self.errors: dict[Ident, str] = {}
        self._dirty: set[Ident] = set()
        self._watch = None
        self._reconciling: defer.Deferred | None = None
        self._busy = False
        self._again = False
        self._loaded = False
        self.ready = defer.Deferred()     # fires after the first reconcile (the initial tree is running)
        self.generation = 0               # counts finished reconciles (tests and benchmarks wait on it)
        self._waiters: list[tuple[int, defer.Deferred]] = []

    # -- service --

    def startService(self) -> None:
        service.Service.startService(self)   # children are started by reconcile, not here
        d = self.store.watch_prefix(self.root + "/", self._on_events)
        d.addCallback(self._watching)
        d.addErrback(lambda f: self.log.failure("watching {root} failed", f, root=self.root))

    def _watching(self, watch) -> None:
        if not self.running:
            watch.stop()
            return
        self._watch = watch

    @defer.inlineCallbacks
    def stopService(self):
        # Not MultiService.stopService: children stop in reverse dependency order, one at a time.
        service.Service.stopService(self)
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._busy:
            yield self._reconciling
        for ident in reversed(self._start_order(set(self.instances))):
            yield defer.ensureDeferred(self._stop(ident))

    # -- events --

    def _on_events(self, events) -> None:
        for e in events:
            changed = self.mirror.apply(e.key, e.value if e.type == "put" else None)
            if changed:
                self._dirty.add(changed)
        if not self._loaded:
            self._loaded = True
            self.log.info("loaded {n} instances from {root}", n=len(self.mirror.instances), root=self.root)
            self._kick()
        elif self._dirty:
            self._kick()

    def _kick(self) -> None:
        # A flag, not the Deferred: a reconcile may finish synchronously (and events may arrive re-entrantly).
        if self._busy:
            self._again = True
            return
        self._reconciling = defer.ensureDeferred(self._reconcile_loop())

    async def _reconcile_loop(self) -> None:
        self._busy = True
        try:
            while True:
                self._again = False
                try:
                    await self._reconcile()
                except Exception:
                    self.log.failure("reconcile failed")
                self.generation += 1
                if not self.ready.called:
                    self.ready.callback(None)
                self._fire_waiters()
                if not self._again:
                    break
        finally:
            self._busy = False

    def settled(self, after: int | None = None) -> defer.Deferred:
        """A Deferred that fires once a reconcile that began after this call (or numbered > `after`) finished."""
        target = (self.generation if after is None else after) + 1
        if self.generation >= target and not self._busy and not self._dirty:
            return defer.succeed(self.generation)
        d = defer.Deferred()
        self._waiters.append((target, d))
        return d

    def _fire_waiters(self) -> None:
        keep = []
        for target, d in self._waiters:
            if self.generation >= target:
                d.callback(self.generation)
            else:
                keep.append((target, d))
        self._waiters = keep

    # -- the reconcile --

    def _build_spec(self, ident: Ident) -> Spec:
        leaves = self.mirror.instances.get(ident)
        if leaves is None:
            return Spec(error="removed")
        kind, name = ident
        try:
            type_name = leaves.type_name()
            cls = self.catalog.lookup(kind, type_name)
            schema = self.catalog.type_schema(kind, type_name)
            doc = self.catalog.validate(kind, type_name, leaves.document(schema))
            config = cls.build_config(doc)
            refs = []
            for prop, ref_kind in self.catalog.references(kind, type_name).items():
                value = doc.get(prop)
                names = value if isinstance(value, list) else [value] if isinstance(value, str) else []
                for ref_name in names:
                    if ref_name != "*":
                        refs.append((f"config/{prop}", ref_kind, ref_name))
            return Spec(type_name, cls, config, json.dumps(doc, sort_keys=True, default=str), refs)
        except ConfigError as e:
            return Spec(error=str(e))

    async def _reconcile(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for ident in dirty:
            spec = self._build_spec(ident)
            if spec.error == "removed":
                self.specs.pop(ident, None)
            else:
                self.specs[ident] = spec

        # Decide, in dependency order, what should run with which fingerprint.
        desired: dict[Ident, tuple[Spec, tuple]] = {}
        errors: dict[Ident, str] = {}
        for ident in self._start_order(set(self.specs)):
            spec = self.specs[ident]
            if spec.error is None:
                problem = self._check_refs(spec, desired, errors)
                if problem is None:
                    deps = tuple(desired[(k, n)][1] for _, k, n in spec.refs)
                    desired[ident] = (spec, (spec.type_name, spec.doc_text, deps))
                    continue
                errors[ident] = problem
            else:
                errors[ident] = spec.error
            old = self.instances.get(ident)
            if old is not None and all(
                    (k, n) in desired and desired[(k, n)][1] == old.fingerprint[2][i]
                    for i, (_, k, n) in enumerate(old.spec.refs)):
                # Keep the last good config running; the error still says what is wrong with the new one.
                desired[ident] = (old.spec, old.fingerprint)
                errors[ident] += " (still running with the last good config)"

        # Stop what is gone or changed (dependents first), then start in dependency order.
        to_stop = {i for i, r in self.instances.items() if i not in desired or desired[i][1] != r.fingerprint}
        for ident in reversed(self._start_order(set(self.instances))):
            if ident in to_stop:
                await self._stop(ident)
                if ident not in self.specs:
                    kind, name = ident
                    self.state.scope(kind, name).clear()
        for ident in self._start_order(set(desired)):
            if ident not in self.instances:
                spec, fp = desired[ident]
                try:
                    self._start(ident, spec, fp)
                except Exception as e:
                    self.log.failure("{kind}/{name} failed to start", kind=ident[0], name=ident[1])
                    errors[ident] = f"type: {spec.type_name} failed to start: {e}"
        self._publish_errors(errors)

    def _check_refs(self, spec: Spec, desired, errors) -> str | None:
        for leaf, kind, name in spec.refs:
            if (kind, name) in desired:
                continue
            if (kind, name) not in self.specs:
                return f"{leaf}: {kind} {name!r} is not configured"
            why = errors.get((kind, name), "it is not running")
            return f"{leaf}: {kind} {name!r} is not usable ({why})"
        return None

    def _start_order(self, idents: set[Ident]) -> list[Ident]:
        """Dependencies before dependents; reference cycles are broken arbitrarily (their refs then fail)."""
        order: list[Ident] = []
        seen: set[Ident] = set()

        def visit(ident: Ident, stack: tuple = ()) -> None:
            if ident in seen or ident in stack:
                return
            # Order by what the new config names AND what the running instance still uses: an instance kept on its
            # last good config (its new reference dangles) must still come after its old dependencies.
            refs = list(self.specs[ident].refs) if ident in self.specs else []
            if ident in self.instances:
                refs += self.instances[ident].spec.refs
            for _, k, n in refs:
                if (k, n) in idents:
                    visit((k, n), stack + (ident,))
            seen.add(ident)
            order.append(ident)

        for ident in sorted(idents):
            visit(ident)
        return order

    def _start(self, ident: Ident, spec: Spec, fingerprint: tuple) -> None:
        kind, name = ident
        ctx = Context(kind=kind, name=name, clock=self.clock, state=self.state.scope(kind, name),
                      resolve=self._resolve, store=self.store, root=self.root, reactor=self.reactor,
                      events=self.events, find=self._find, problems=self._problems)
        svc = spec.cls(ctx, spec.config)
        self.instances[ident] = Running(spec, fingerprint, svc)
        try:
            svc.setServiceParent(self)
        except Exception:
            self.instances.pop(ident, None)
            try:
                self.removeService(svc)
            except Exception:
                pass
            raise
        self.log.info("{kind}/{name} started ({type})", kind=kind, name=name, type=spec.type_name)
        self.events.publish(("instance", kind, name), ("started", svc))

    async def _stop(self, ident: Ident) -> None:
        r = self.instances.pop(ident, None)
        if r is None:
            return
        svc = r.service
        # Detach by hand: MultiService.removeService only stops a child while the parent runs, and we also stop
        # children during our own stopService.
        self.services.remove(svc)
        self.namedServices.pop(svc.name, None)
        svc.parent = None
        try:
            if svc.running:
                await defer.maybeDeferred(svc.stopService)
        except Exception:
            self.log.failure("{kind}/{name} failed to stop cleanly", kind=ident[0], name=ident[1])
        self.log.info("{kind}/{name} stopped", kind=ident[0], name=ident[1])
        self.events.publish(("instance",) + ident, ("stopped", svc))

    def _resolve(self, kind: str, name: str) -> Instance:
        r = self.instances.get((kind, name))
        if r is None:
            raise ConfigError(f"{kind} {name!r} is not running")
        return r.service

    def _find(self, kind: str) -> dict:
        return {n: r.service for (k, n), r in self.instances.items() if k == kind}

    def _problems(self, kind: str) -> dict[str, Problem]:
        """The configured instances of `kind` that are not running, with their error (e.g. for a server/ocpp that
        refuses a charge point whose charger is in error: it says why, not just "unknown")."""
        found = {}
        for (k, name), error in self.errors.items():
            leaves = self.mirror.instances.get((k, name))
            if k != kind or (k, name) in self.instances or leaves is None:
                continue
            try:
                type_name = leaves.type_name()
            except ConfigError:
                type_name = None
            found[name] = Problem(type_name, error, {"/".join(p): t for p, t in leaves.config.items()})
        return found

    def _publish_errors(self, errors: dict[Ident, str]) -> None:
        for ident in set(self.errors) | set(errors):
            kind, name = ident
            new, old = errors.get(ident), self.errors.get(ident)
            if new == old:
                continue
            scope = self.state.scope(kind, name)
            if new is None:
                if ident in self.specs:
                    scope.delete("error")
                    self.log.info("{kind}/{name}: config error cleared", kind=kind, name=name)
            else:
                scope.set("error", new)
                self.log.warn("{kind}/{name}: {error}", kind=kind, name=name, error=new)
        for ident in self.specs:
            kind, name = ident
            self.state.scope(kind, name).set("status", "running" if ident in self.instances else "error")
        self.errors = errors
