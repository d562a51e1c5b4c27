"""A whole simulated charging site in one process: RS485 buses with EVSEs, cars, the grid meter and EVSE meters.

The grid meter sees, per phase, the base load (loads that are not cars, changeable while running) plus what
every car draws, put on the grid phase its charger's `phase_map` wires it to, so control decisions show up
in the meter readings as they would on a real site. A load this process does not simulate (the car at an OCPP
charger simulated elsewhere) is added with `external L1 L2 L3`, per grid phase. An EVSE may have a meter of its own (an SDM630 in the
EVSE's supply, on Modbus TCP at a port or on an RS485 bus at a unit): it sees only that EVSE's car, on the
grid phases the EVSE is wired to, which is what EVC's charger `meter` setting expects.

Run it for the demo or a script:

    python -m evc.sim.site --config site.yaml
    python -m evc.sim.site --evses 2 --tcp-port 15485 --tty-link /tmp/evc-rs485 --meter-port 15030 \
        --evse-meter-port 15020          # s1's own meter on 15020, s2's on 15021 (--evse-meter-unit 101: on bus1)

A config file says the same at any size (every key optional; evse and car keys are SimEvse/SimCar options):

    tick_s: 1.0                # simulation step; speed: 60 makes one real second a simulated minute
    voltage_V: 230
    meter: {port: 15021, unit: 1, base_load_A: [4, 2, 1]}      # add bus: b1 to put it on RS485 too
    buses:
      b1: {tcp_port: 15485, tty_link: /tmp/evc-rs485-1, baud: 9600}
    evses:
      s1: {bus: b1, unit: 1, phases: 3, phase_map: L2L3L1, max_current_A: 32, default_current_A: 0,
           meter: {port: 15020, unit: 1}}                        # or meter: {bus: b1, unit: 101}
    cars:
      car1: {evse: s1, phases: 1, max_current_A: 16, capacity_Wh: 40000, soc: 0.3}

Meters given the same TCP port share it as one Modbus TCP gateway does (told apart by their unit).

It prints one JSON line with every endpoint (tty paths, tunnel and meter ports), then reads commands, one
per line, on stdin (and on `--control-port` if given): `status`, `base L1 L2 L3`, `external L1 L2 L3`, `plug CAR EVSE`,
`unplug CAR`, `soc CAR FRACTION`, `hold CAR` / `release CAR`, `fault EVSE rcd|diode|clear`,
`vanish BUS`, `reappear BUS`, `drop BUS`, `mute BUS UNIT`, `unmute BUS UNIT`. Each answers one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from twisted.internet import defer, task
from twisted.logger import Logger

from evc.sim.car import SimCar
from evc.sim.evse import SimEvse
from evc.sim.modbus import listen_tcp
from evc.sim.rs485 import SimRs485Bus
from evc.sim.sdm import SimSdm630

log = Logger()

DEFAULT_PHASE_MAP = (1, 2, 3)


def parse_phase_map(value) -> tuple[int, int, int]:
    """Grid phase (1..3) for each of a charger's conductors L1, L2, L3.

    Accepts [2, 3, 1], ["L2", "L3", "L1"], "231" or "L2L3L1"; a shorter map (a 1-phase charger on L2: [2])
    is completed with the remaining phases in order.
    """
    if value is None:
        return DEFAULT_PHASE_MAP
    if isinstance(value, str):
        digits = [c for c in value.upper().replace("L", "") if c.strip() and c not in ",;-"]
    else:
        digits = [str(v).upper().lstrip("L") for v in value]
    try:
        phases = [int(d) for d in digits]
    except ValueError:
        raise ValueError(f"phase_map {value!r}: use grid phases 1..3, e.g. [2, 3, 1] or 'L2L3L1'") from None
    if not phases or len(phases) > 3 or len(set(phases)) != len(phases) or not set(phases) <= {1, 2, 3}:
        raise ValueError(f"phase_map {value!r}: needs 1 to 3 distinct grid phases out of 1, 2, 3")
    phases += [p for p in DEFAULT_PHASE_MAP if p not in phases]
    return tuple(phases)


class SimSite:
    """EVSEs on simulated RS485 buses, cars plugged into them, and a grid meter that adds it all up.

    `reactor` gives time and networking (tests of the arithmetic may pass a `task.Clock` and skip `start()`).
    Every `tick_s` of reactor time the cars charge for `tick_s * speed` simulated seconds and the meter's
    values are refreshed; a site change made through this API (base load, plug, unplug) refreshes them at
    once. `meter` is any object with `set(V=, A=, W=, energy_Wh=)`; by default an SDM630 simulator, which
    `start()` serves on Modbus TCP and `from_config` can also put on a bus (Modbus RTU).
    """

    def __init__(self, reactor, *, voltage_V: float = 230.0, base_load_A: Sequence[float] = (0.0, 0.0, 0.0),
                 tick_s: float = 1.0, speed: float = 1.0, meter=None, meter_unit: int = 1):
        self._reactor = reactor
        self.voltage_V = float(voltage_V)
        self.base_load_A = self._three(base_load_A, "base_load_A")
        # What loads outside this simulation draw through the grid meter (set by whoever simulates them).
        self.external_load_A = (0.0, 0.0, 0.0)
        self.tick_s = tick_s
        self.speed = speed
        # The site counts energy in simulated time (see `speed`), so the meter gets no clock of its own.
        self.meter = meter if meter is not None else SimSdm630(meter_unit)
        self.meter_unit = meter_unit
        self.buses: dict[str, SimRs485Bus] = {}
        self.evses: dict[str, SimEvse] = {}
        self.cars: dict[str, SimCar] = {}
        self.phase_maps: dict[str, tuple[int, int, int]] = {}
        self._evse_bus: dict[str, str] = {}
        self.energy_Wh = 0.0
        self._loop: task.LoopingCall | None = None
        self._last_tick_at: float | None = None
        self._meter_listener = None
        self._bus_plans: dict[str, dict] = {}
        self.evse_meters: dict[str, SimSdm630] = {}        # EVSE name -> its own meter
        self.evse_energy_Wh: dict[str, float] = {}
        self._evse_meter_plans: dict[str, dict] = {}       # EVSE name -> {"port": ..., "bus": ...}
        self._listeners: list = []                         # the EVSE meters' TCP ports (shared ones once)
        self._evse_meter_ports: dict[str, int] = {}
        self.refresh()

    @staticmethod
    def _three(values, what) -> tuple[float, float, float]:
        values = tuple(float(v) for v in values)
        if len(values) != 3:
            raise ValueError(f"{what} needs three values (L1, L2, L3), got {len(values)}")
        return values

    # -- building --------------------------------------------------------------------------------------

    def add_bus(self, name: str, *, baud: int | None = None, tcp_port: int | None = None,
                tty_link: str | bool | None = None, **bus_kw) -> SimRs485Bus:
        """A bus; `tcp_port` (0 = any free port) and `tty_link` (a path, or True for a temporary one) say how
        `start()` exposes it."""
        if name in self.buses:
            raise ValueError(f"bus {name} is defined twice")
        bus = SimRs485Bus(self._reactor, name=name, baud=baud, **bus_kw)
        self.buses[name] = bus
        self._bus_plans[name] = {"tcp_port": tcp_port, "tty_link": tty_link}
        return bus

    def add_evse(self, name: str, *, bus: str, unit: int, phase_map=None, **evse_kw) -> SimEvse:
        """An EVSE at `unit` on bus `bus`, its conductors wired to the grid phases of `phase_map`."""
        if name in self.evses:
            raise ValueError(f"EVSE {name} is defined twice")
        if bus not in self.buses:
            raise ValueError(f"EVSE {name}: no bus {bus!r} (buses: {', '.join(self.buses) or 'none'})")
        evse_kw.setdefault("clock", self._reactor)
        evse = SimEvse(name, unit, **evse_kw)
        self.buses[bus].add(evse)
        self.evses[name] = evse
        self.phase_maps[name] = parse_phase_map(phase_map)
        self._evse_bus[name] = bus
        return evse

    def add_evse_meter(self, evse: str, *, unit: int = 1, port: int | None = None, bus: str | None = None,
                       **sdm_kw) -> SimSdm630:
        """Give EVSE `evse` a meter of its own: an SDM630 at `unit`, served on Modbus TCP at `port` (0 = any free
        port) by `start()`, or put on RS485 bus `bus` now (exactly one of the two)."""
        if evse not in self.evses:
            raise ValueError(f"EVSE meter: no EVSE {evse!r} (EVSEs: {', '.join(self.evses) or 'none'})")
        if evse in self.evse_meters:
            raise ValueError(f"EVSE {evse} has a meter already")
        if (port is None) == (bus is None):
            raise ValueError(f"EVSE {evse}'s meter: give exactly one of port (Modbus TCP) and bus (RS485)")
        if bus is not None and bus not in self.buses:
            raise ValueError(f"EVSE {evse}'s meter: no bus {bus!r} (buses: {', '.join(self.buses) or 'none'})")
        meter = SimSdm630(unit, **sdm_kw)
        if bus is not None:
            self.buses[bus].add(meter)
        self.evse_meters[evse] = meter
        self.evse_energy_Wh[evse] = 0.0
        self._evse_meter_plans[evse] = {"port": port, "bus": bus}
        self.refresh()
        return meter

    def add_car(self, name: str, *, evse: str | None = None, **car_kw) -> SimCar:
        """A car, plugged into `evse` if given."""
        if name in self.cars:
            raise ValueError(f"car {name} is defined twice")
        car = SimCar(name, voltage_V=car_kw.pop("voltage_V", self.voltage_V), **car_kw)
        self.cars[name] = car
        if evse is not None:
            self.plug(name, evse)
        return car

    # -- changing it while it runs ---------------------------------------------------------------------

    def set_base_load(self, l1_A: float, l2_A: float, l3_A: float) -> None:
        self.base_load_A = self._three((l1_A, l2_A, l3_A), "base load")
        log.info("site base load {base_load_A} A", base_load_A=self.base_load_A)
        self.refresh()

    def set_external_load(self, l1_A: float, l2_A: float, l3_A: float) -> None:
        """What loads simulated elsewhere draw now, per grid phase: e.g. the car at an OCPP charger simulator,
        fed in by the demo from that simulator's status, so that the grid meter sees every car of the site."""
        self.external_load_A = self._three((l1_A, l2_A, l3_A), "external load")
        self.refresh()

    def plug(self, car: str, evse: str) -> None:
        if evse not in self.evses:
            raise ValueError(f"no EVSE {evse!r}")
        if self.evses[evse].car is not None and self.evses[evse].car is not self.cars[car]:
            raise ValueError(f"EVSE {evse} already has car {self.evses[evse].car.name}")
        self.cars[car].plug(self.evses[evse])
        self.refresh()

    def unplug(self, car: str) -> None:
        self.cars[car].unplug()
        self.refresh()

    # -- the grid meter --------------------------------------------------------------------------------

    def car_load_A(self) -> tuple[float, float, float]:
        """What the cars draw, per grid phase."""
        load = [0.0, 0.0, 0.0]
        for name in self.evses:
            for phase, current_A in enumerate(self.evse_load_A(name)):
                load[phase] += current_A
        return tuple(load)

    def evse_load_A(self, name: str) -> tuple[float, float, float]:
        """What the car at EVSE `name` draws, per grid phase (its conductors put where its phase_map says)."""
        load = [0.0, 0.0, 0.0]
        car = self.evses[name].car
        if car is not None:
            for conductor, current_A in enumerate(car.draw_A):
                load[self.phase_maps[name][conductor] - 1] += current_A
        return tuple(load)

    @property
    def grid_current_A(self) -> tuple[float, float, float]:
        """Per-phase current through the grid meter: base load plus cars plus external loads (signed: negative is
        export)."""
        return tuple(b + c + e for b, c, e in zip(self.base_load_A, self.car_load_A(), self.external_load_A))

    @property
    def grid_power_W(self) -> tuple[float, float, float]:
        return tuple(self.voltage_V * a for a in self.grid_current_A)

    def refresh(self) -> None:
        """Hand the current values to the meters."""
        power_W = self.grid_power_W
        self.meter.set(V=(self.voltage_V,) * 3, A=tuple(abs(a) for a in self.grid_current_A), W=power_W,
                       energy_Wh=self.energy_Wh)
        for name, meter in self.evse_meters.items():
            load_A = self.evse_load_A(name)
            meter.set(V=(self.voltage_V,) * 3, A=load_A, W=tuple(self.voltage_V * a for a in load_A),
                      energy_Wh=self.evse_energy_Wh[name])

    def advance(self, dt_s: float) -> None:
        """Let `dt_s` simulated seconds pass: cars charge, the meter counts energy."""
        if dt_s <= 0:
            return
        # Energy at the draw that held during the interval, before the cars' state of charge moves on.
        self.energy_Wh += max(0.0, sum(self.grid_power_W)) * dt_s / 3600.0
        for name in self.evse_meters:
            self.evse_energy_Wh[name] += self.voltage_V * sum(self.evse_load_A(name)) * dt_s / 3600.0
        for car in self.cars.values():
            car.step(dt_s)
        self.refresh()

    def tick(self) -> None:
        now = self._reactor.seconds()
        if self._last_tick_at is not None:
            self.advance((now - self._last_tick_at) * self.speed)
        self._last_tick_at = now

    # -- running ---------------------------------------------------------------------------------------

    def start(self, meter_port: int | None = None, meter_interface: str = "127.0.0.1") -> dict:
        """Open the planned ptys and tunnels, the grid meter's Modbus TCP port (`meter_port`, 0 = any free one;
        None = none) and the EVSE meters' ports, start ticking; returns `endpoints()`."""
        for name, bus in self.buses.items():
            plan = self._bus_plans[name]
            if plan["tty_link"]:
                bus.open_pty(None if plan["tty_link"] is True else plan["tty_link"])
            if plan["tcp_port"] is not None:
                bus.listen(plan["tcp_port"])
        # One listener per fixed port: meters planned on the same port share it, as behind one Modbus TCP gateway.
        by_port: dict[int, object] = {}
        if meter_port is not None:
            self._meter_listener = listen_tcp(self._reactor, [self.meter], meter_port, meter_interface)
            if meter_port:
                by_port[meter_port] = self._meter_listener
            log.info("grid meter (SDM630, unit {unit}) on {interface}:{port}", unit=self.meter_unit,
                     interface=meter_interface, port=self.meter_port)
        for name, meter in self.evse_meters.items():
            port = self._evse_meter_plans[name]["port"]
            if port is None:
                continue
            listener = by_port.get(port)
            if listener is None:
                listener = listen_tcp(self._reactor, [], port, meter_interface)
                self._listeners.append(listener)
                if port:
                    by_port[port] = listener
            if meter.unit in listener.factory.devices:
                raise ValueError(f"EVSE {name}'s meter: unit {meter.unit} on port {port} is taken")
            listener.factory.add(meter)
            self._evse_meter_ports[name] = listener.getHost().port
            log.info("EVSE {evse}'s meter (SDM630, unit {unit}) on {interface}:{port}", evse=name, unit=meter.unit,
                     interface=meter_interface, port=self._evse_meter_ports[name])
        self._last_tick_at = self._reactor.seconds()
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self._reactor
        self._loop.start(self.tick_s, now=False)
        return self.endpoints()

    @property
    def meter_port(self) -> int | None:
        return self._meter_listener.getHost().port if self._meter_listener is not None else None

    def endpoints(self) -> dict:
        """Where everything can be reached, for scripts (the CLI prints this as one JSON line)."""
        return {
            "meter": {"host": "127.0.0.1", "port": self.meter_port, "unit": self.meter_unit},
            "buses": {name: {"tty": bus.tty_path,
                             "tcp": f"127.0.0.1:{bus.tcp_port}" if bus.tcp_port is not None else None,
                             "baud": bus.timing.baud if bus.timing else None}
                      for name, bus in self.buses.items()},
            "evses": {name: {"bus": self._evse_bus[name], "unit": evse.unit,
                             "phase_map": list(self.phase_maps[name])}
                      for name, evse in self.evses.items()},
            "cars": {name: {"evse": car.evse.name if car.evse else None} for name, car in self.cars.items()},
            "evse_meters": {name: {"host": "127.0.0.1" if self._evse_meter_plans[name]["port"] is not None else None,
                                   "port": self._evse_meter_ports.get(name), "bus": self._evse_meter_plans[name]["bus"],
                                   "unit": meter.unit}
                            for name, meter in self.evse_meters.items()},
        }

    def status(self) -> dict:
        """The live picture: grid per phase, each EVSE's registers that matter, each car's battery."""
        return {
            "grid_A": [round(a, 3) for a in self.grid_current_A],
            "base_load_A": list(self.base_load_A),
            "external_load_A": list(self.external_load_A),
            "energy_Wh": round(self.energy_Wh, 1),
            "evses": {name: {"set_A": evse.set_current_A, "vehicle_state": evse.vehicle_state,
                             "relay_on": evse.relay_on, "car": evse.car.name if evse.car else None,
                             **({"meter_A": [round(a, 3) for a in self.evse_load_A(name)],
                                 "meter_Wh": round(self.evse_energy_Wh[name], 1)} if name in self.evse_meters else {})}
                      for name, evse in self.evses.items()},
            "cars": {name: {"soc": round(car.soc, 4), "draw_A": [round(a, 3) for a in car.draw_A],
                            "session_Wh": round(car.session_Wh, 1)}
                     for name, car in self.cars.items()},
        }

    def stop(self) -> defer.Deferred:
        """Stop ticking and close every pty, tunnel and the meter's port."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        ds = [bus.close() for bus in self.buses.values()]
        listeners, self._listeners = self._listeners, []
        if self._meter_listener is not None:
            listeners.append(self._meter_listener)
            self._meter_listener = None
        ds.extend(defer.maybeDeferred(listener.stopListening) for listener in listeners)
        return defer.gatherResults(ds, consumeErrors=True)

    # -- configuration ---------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, reactor, config: dict) -> tuple["SimSite", int | None]:
        """Build a site from a config document (the YAML file's contents); returns (site, meter_port)."""
        config = dict(config)
        meter_cfg = dict(config.pop("meter", None) or {})
        site = cls(reactor, voltage_V=config.pop("voltage_V", 230.0),
                   base_load_A=meter_cfg.pop("base_load_A", (0.0, 0.0, 0.0)),
                   tick_s=config.pop("tick_s", 1.0), speed=config.pop("speed", 1.0),
                   meter_unit=meter_cfg.get("unit", 1))
        for name, bus_cfg in (config.pop("buses", None) or {}).items():
            site.add_bus(name, **(bus_cfg or {}))
        for name, evse_cfg in (config.pop("evses", None) or {}).items():
            evse_cfg = dict(evse_cfg)
            evse_meter = evse_cfg.pop("meter", None)
            site.add_evse(name, **evse_cfg)
            if evse_meter is not None:
                site.add_evse_meter(name, **evse_meter)
        for name, car_cfg in (config.pop("cars", None) or {}).items():
            site.add_car(name, **(car_cfg or {}))
        if meter_cfg.get("bus"):
            site.buses[meter_cfg["bus"]].add(site.meter)
        if config:
            raise ValueError(f"site config: unknown keys {', '.join(sorted(config))}")
        return site, meter_cfg.get("port")


# -- the command-line front ------------------------------------------------------------------------------

def run_command(site: SimSite, line: str) -> dict:
    """Apply one control command; returns the JSON-able answer."""
    words = line.split()
    if not words:
        return {"ok": True}
    cmd, args = words[0].lower(), words[1:]
    try:
        if cmd == "status":
            return {"ok": True, **site.status()}
        if cmd == "base":
            site.set_base_load(*(float(a) for a in args))
        elif cmd == "external":
            site.set_external_load(*(float(a) for a in args))
        elif cmd == "plug":
            site.plug(args[0], args[1])
        elif cmd == "unplug":
            site.unplug(args[0])
        elif cmd == "soc":
            site.cars[args[0]].soc = float(args[1])
        elif cmd in ("hold", "release"):
            site.cars[args[0]].charge_enabled = cmd == "release"
        elif cmd == "fault":
            evse = site.evses[args[0]]
            evse.clear_charge_fault() if args[1] == "clear" else evse.inject_charge_fault(args[1])
        elif cmd == "vanish":
            site.buses[args[0]].vanish()
        elif cmd == "reappear":
            site.buses[args[0]].reappear()
        elif cmd == "drop":
            site.buses[args[0]].drop_tunnel()
        elif cmd in ("mute", "unmute"):
            site.buses[args[0]].mute(int(args[1]), cmd == "mute")
        else:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
    except (IndexError, KeyError, TypeError, ValueError) as e:
        return {"ok": False, "error": f"{line.strip()}: {e!r}"}
    site.refresh()
    return {"ok": True}


def config_from_args(args) -> dict:
    """The site config from --config, or from the simple flags."""
    if args.config:
        import yaml
        with open(args.config) as f:
            return yaml.safe_load(f) or {}
    bus = {"baud": args.baud, "tcp_port": args.tcp_port, "tty_link": args.tty_link or (args.tcp_port is None)}
    evses = {f"s{n}": {"bus": "bus1", "unit": n, "default_current_A": 0} for n in range(1, args.evses + 1)}
    for n, evse in enumerate(evses.values()):
        if args.evse_meter_port is not None:
            evse["meter"] = {"port": args.evse_meter_port + n if args.evse_meter_port else 0, "unit": 1}
        elif args.evse_meter_unit is not None:
            evse["meter"] = {"bus": "bus1", "unit": args.evse_meter_unit + n}
    cars = {f"car{n}": {"evse": f"s{n}", "soc": 0.3} for n in range(1, min(args.cars, args.evses) + 1)}
    return {
        "tick_s": args.tick_s, "speed": args.speed,
        "meter": {"port": args.meter_port, "base_load_A": [float(a) for a in args.base_load.split(",")]},
        "buses": {"bus1": bus}, "evses": evses, "cars": cars,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evc.sim.site", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="site YAML (buses, evses, cars, meter); overrides the flags below")
    parser.add_argument("--evses", type=int, default=1, help="EVSEs on bus1, units 1..N (default 1)")
    parser.add_argument("--cars", type=int, default=1, help="cars plugged into s1..sN (default 1)")
    parser.add_argument("--tcp-port", type=int, help="bus1's ser2net-style tunnel port (0 = any free)")
    parser.add_argument("--tty-link", help="bus1's pty link path (default: a temporary one, when no --tcp-port)")
    parser.add_argument("--baud", type=int, help="simulate wire time at this baud rate")
    parser.add_argument("--meter-port", type=int, default=0, help="SDM630 Modbus TCP port (0 = any free)")
    meters = parser.add_mutually_exclusive_group()
    meters.add_argument("--evse-meter-port", type=int, metavar="PORT",
                        help="give each EVSE an SDM630 of its own on Modbus TCP: s1 on PORT, s2 on PORT+1, ... "
                             "(0 = free ports)")
    meters.add_argument("--evse-meter-unit", type=int, metavar="UNIT",
                        help="give each EVSE an SDM630 of its own on bus1: s1's at UNIT, s2's at UNIT+1, ...")
    parser.add_argument("--base-load", default="0,0,0", help="base load per phase in A: L1,L2,L3")
    parser.add_argument("--tick-s", type=float, default=1.0, help="simulation step in seconds")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--control-port", type=int, help="also take commands on this loopback TCP port")
    args = parser.parse_args(argv)

    from twisted.internet import asyncioreactor
    if "twisted.internet.reactor" not in sys.modules:
        asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from evc.sim.commands import CommandFactory, listen_stdin

    # stdout carries the JSON lines scripts read; the log goes to stderr.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    site, meter_port = SimSite.from_config(reactor, config_from_args(args))
    endpoints = site.start(meter_port=meter_port)

    def control(line: str) -> dict:
        return run_command(site, line)

    if args.control_port is not None:
        listener = reactor.listenTCP(args.control_port, CommandFactory(control), interface="127.0.0.1")
        endpoints["control"] = f"127.0.0.1:{listener.getHost().port}"
    print(json.dumps(endpoints), flush=True)
    listen_stdin(control, sys.stdin)
    reactor.addSystemEventTrigger("before", "shutdown", site.stop)
    reactor.run()


if __name__ == "__main__":
    main()
