"""A simulated EVSE-DIN / SimpleEVSE-WB charge controller, answering Modbus RTU with the ev-power.eu map.

Register map and meanings: shared/reference/evse-modbus.md. The simulator's choices where the sources are
silent or disagree:
- 2005 bit7 is "precise current": 1000 and 1001 are then in 0.01 A (the openWB reading, newer firmware).
- 1001 is what the pilot PWM would advertise, min(1000, 1003); 0 while the EVSE is disabled or off.
- 1004 bit0 ("turn off charging now") latches the EVSE off until bit0 is written back to 0; bit1 runs a
  self-test (`selftest_s`, relay open, 1007 bit4 meanwhile); bit2 clears an RCD error and reads back as 0.
- 1007: bit0 relay on, bit1 diode check failed, bit2 ventilation required but not allowed, bit4 RCD test
  running, bit5 RCD error.
- 2005 bit13 sets bit14 (EVSE disabled) when a car that charged is unplugged; bit15 (bootloader) is refused.
- 2001 (unit address) is stored but, as on a device that reads it at boot, not applied while on the bus.
- Writing a read-only register answers exception 02, a value out of range exception 03, any function other
  than 03, 06 and 16 exception 01. Reads must lie inside 1000-1007 or 2000-2017 (else 02).

It is a `SimDevice` (evc.sim.modbus), so it also takes that class's bus faults (`set_fault("silent")`, ...);
its own charging faults (diode check, RCD) are `charge_fault`.
"""
from __future__ import annotations

from twisted.logger import Logger

from evc.sim.modbus import ILLEGAL_ADDRESS, ILLEGAL_FUNCTION, ILLEGAL_VALUE, SimDevice, SimModbusError

log = Logger()

# Register numbers (PDU addresses, no 40001 offset).
REG_SET_CURRENT = 1000
REG_ACTUAL_CURRENT = 1001
REG_VEHICLE_STATE = 1002
REG_PP_LIMIT = 1003
REG_COMMAND = 1004
REG_FIRMWARE = 1005
REG_EVSE_STATE = 1006
REG_STATUS = 1007
REG_DEFAULT_CURRENT = 2000
REG_UNIT = 2001
REG_MIN_CURRENT = 2002
REG_CONFIG_BITS = 2005
REG_BOOTLOADER = 2009

RUNTIME = range(1000, 1008)
CONFIG = range(2000, 2018)

# Vehicle states (1002)
VEHICLE_READY = 1
VEHICLE_PRESENT = 2
VEHICLE_CHARGING = 3
VEHICLE_VENTILATION = 4
VEHICLE_FAILURE = 5

# EVSE states (1006)
EVSE_STEADY_12V = 1
EVSE_PWM = 2
EVSE_OFF = 3

# 1004 command bits
CMD_OFF = 1 << 0
CMD_SELFTEST = 1 << 1
CMD_CLEAR_RCD = 1 << 2

# 1007 status bits
STATUS_RELAY_ON = 1 << 0
STATUS_DIODE_FAIL = 1 << 1
STATUS_VENT_FAIL = 1 << 2
STATUS_RCD_TEST = 1 << 4
STATUS_RCD_ERROR = 1 << 5

# 2005 configuration bits
CFG_ALLOW_STATE_D = 1 << 3
CFG_RCD_AUTOCLEAR = 1 << 5
CFG_PRECISE = 1 << 7
CFG_DISABLE_AFTER_CHARGE = 1 << 13
CFG_DISABLED = 1 << 14
CFG_BOOTLOADER = 1 << 15

CHARGE_FAULTS = ("diode", "rcd")
RCD_AUTOCLEAR_S = 30.0
MAX_READ_COUNT = 125
MAX_WRITE_COUNT = 123


class SimEvse(SimDevice):
    """One EVSE-DIN board at Modbus address `unit`, wired for `phases` phases.

    `max_current_A` is the board's hardware limit (values above it in 1000 are refused), `pp_limit_A` the
    cable's rating read from the PP resistor (1003), `default_current_A` what 1000 holds after power-up
    (register 2000; real boards ship with 32 A there, so the EVSE charges before anyone writes to it).
    `clock` (IReactorTime) times the self-test and the RCD auto-clear; without it they finish at once.
    """

    def __init__(self, name: str = "evse", unit: int = 1, *, phases: int = 3, max_current_A: int = 32,
                 pp_limit_A: int = 32, default_current_A: int = 32, min_current_A: int = 6,
                 firmware: int = 18, config_bits: int = 0, clock=None, selftest_s: float = 30.0):
        if phases not in (1, 3):
            raise ValueError(f"EVSE {name}: phases must be 1 or 3, not {phases}")
        super().__init__(unit)
        self.name = name
        self.phases = phases
        self.max_current_A = max_current_A
        self.pp_limit_A = pp_limit_A
        self.firmware = firmware
        self._clock = clock
        self.selftest_s = selftest_s
        self._config = {reg: 0 for reg in CONFIG}
        self._config.update({
            REG_DEFAULT_CURRENT: min(default_current_A, max_current_A),
            REG_UNIT: unit,
            REG_MIN_CURRENT: min_current_A,
            2003: 1,
            REG_CONFIG_BITS: config_bits,
            REG_BOOTLOADER: 3,
        })
        # Amp values for the button steps (2010-2017).
        for reg, amps in zip(range(2010, 2018), (6, 10, 16, 25, 32, 48, 63, 80)):
            self._config[reg] = amps
        self.car = None
        self.charge_fault: str | None = None
        self._off = False
        self._selftest_call = None
        self._rcd_clear_call = None
        self.writes = 0
        self.power_cycle()

    # -- lifecycle -------------------------------------------------------------------------------------

    def power_cycle(self) -> None:
        """Power the board off and on: 1000 back to the default current, latches and self-test cleared."""
        self._set_cA = self._config[REG_DEFAULT_CURRENT] * 100
        self._off = False
        self._cancel(self._selftest_call)
        self._selftest_call = None

    def _cancel(self, call) -> None:
        if call is not None and call.active():
            call.cancel()

    # -- car side --------------------------------------------------------------------------------------

    def attach_car(self, car) -> None:
        """Called by `SimCar.plug`."""
        if self.car is not None and self.car is not car:
            raise RuntimeError(f"EVSE {self.name} already has car {self.car.name} plugged in")
        self.car = car

    def detach_car(self, car) -> None:
        """Called by `SimCar.unplug`."""
        if self.car is not car:
            return
        self.car = None
        if self.charge_fault == "diode":
            self.charge_fault = None
        if car.session_Wh > 0 and self._config[REG_CONFIG_BITS] & CFG_DISABLE_AFTER_CHARGE:
            self._config[REG_CONFIG_BITS] |= CFG_DISABLED
            log.info("{evse}: session over, disabled (2005 bit13)", evse=self.name)

    # -- faults ----------------------------------------------------------------------------------------

    def inject_charge_fault(self, kind: str) -> None:
        """`diode` (cleared by unplugging) or `rcd` (cleared by 1004 bit2, or after 30 s with 2005 bit5)."""
        if kind not in CHARGE_FAULTS:
            raise ValueError(f"unknown charge fault {kind!r}, known: {', '.join(CHARGE_FAULTS)}")
        self.charge_fault = kind
        if kind == "rcd" and self._config[REG_CONFIG_BITS] & CFG_RCD_AUTOCLEAR and self._clock is not None:
            self._cancel(self._rcd_clear_call)
            self._rcd_clear_call = self._clock.callLater(RCD_AUTOCLEAR_S, self.clear_charge_fault)

    def clear_charge_fault(self) -> None:
        self.charge_fault = None

    # -- derived state ---------------------------------------------------------------------------------

    @property
    def precise(self) -> bool:
        return bool(self._config[REG_CONFIG_BITS] & CFG_PRECISE)

    @property
    def disabled(self) -> bool:
        """No PWM at all: disabled by configuration, switched off by command, or in self-test."""
        return bool(self._config[REG_CONFIG_BITS] & CFG_DISABLED) or self._off or self.selftest_running

    @property
    def selftest_running(self) -> bool:
        return self._selftest_call is not None and self._selftest_call.active()

    @property
    def set_current_A(self) -> float:
        """Register 1000 in amps, whatever its unit on the wire."""
        return self._set_cA / 100.0

    @property
    def advertised_A(self) -> float:
        """What the pilot would advertise (1001): min(1000, 1003), 0 while disabled."""
        if self.disabled:
            return 0.0
        return min(self.set_current_A, float(self.pp_limit_A))

    @property
    def offered_A(self) -> float:
        """The current a plugged-in car may draw now: 0 without PWM or with a fault."""
        if self.car is None or self.charge_fault is not None:
            return 0.0
        return self.advertised_A

    @property
    def _ventilation_refused(self) -> bool:
        return (self.car is not None and self.car.needs_ventilation
                and not self._config[REG_CONFIG_BITS] & CFG_ALLOW_STATE_D)

    @property
    def relay_on(self) -> bool:
        return (self.car is not None and self.car.wants_charge and self.offered_A > 0
                and not self._ventilation_refused)

    @property
    def vehicle_state(self) -> int:
        if self.car is None:
            return VEHICLE_READY
        if self.charge_fault is not None:
            return VEHICLE_FAILURE
        # A car only closes S2 when it sees a PWM to answer; without one it stays in B.
        if self.car.wants_charge and self.offered_A > 0:
            return VEHICLE_VENTILATION if self.car.needs_ventilation else VEHICLE_CHARGING
        return VEHICLE_PRESENT

    @property
    def evse_state(self) -> int:
        if self.disabled:
            return EVSE_OFF
        if self.car is not None and self.offered_A > 0:
            return EVSE_PWM
        return EVSE_STEADY_12V

    @property
    def status_bits(self) -> int:
        bits = 0
        if self.relay_on:
            bits |= STATUS_RELAY_ON
        if self.charge_fault == "diode":
            bits |= STATUS_DIODE_FAIL
        if self._ventilation_refused and self.car.wants_charge:
            bits |= STATUS_VENT_FAIL
        if self.selftest_running:
            bits |= STATUS_RCD_TEST
        if self.charge_fault == "rcd":
            bits |= STATUS_RCD_ERROR
        return bits

    def read_register(self, reg: int) -> int:
        """The value a FC03 read of `reg` returns; KeyError outside the map."""
        if reg in CONFIG:
            return self._config[reg]
        scale = 1 if self.precise else 100
        return {
            REG_SET_CURRENT: self._set_cA // scale,
            REG_ACTUAL_CURRENT: int(round(self.advertised_A * 100)) // scale,
            REG_VEHICLE_STATE: self.vehicle_state,
            REG_PP_LIMIT: self.pp_limit_A,
            REG_COMMAND: (CMD_OFF if self._off else 0) | (CMD_SELFTEST if self.selftest_running else 0),
            REG_FIRMWARE: self.firmware,
            REG_EVSE_STATE: self.evse_state,
            REG_STATUS: self.status_bits,
        }[reg]

    # -- writes ----------------------------------------------------------------------------------------

    def _check_write(self, reg: int, value: int) -> int | None:
        """The exception code a write of `value` to `reg` earns, or None when it is fine."""
        if reg in RUNTIME and reg not in (REG_SET_CURRENT, REG_COMMAND):
            return ILLEGAL_ADDRESS
        if reg == REG_BOOTLOADER or reg not in RUNTIME and reg not in CONFIG:
            return ILLEGAL_ADDRESS
        if not 0 <= value <= 0xFFFF:
            return ILLEGAL_VALUE
        if reg == REG_SET_CURRENT:
            scale = 100 if self.precise else 1
            low, high = self._config[REG_MIN_CURRENT] * scale, self.max_current_A * scale
            return None if value == 0 or low <= value <= high else ILLEGAL_VALUE
        if reg == REG_COMMAND:
            return None if value & ~(CMD_OFF | CMD_SELFTEST | CMD_CLEAR_RCD) == 0 else ILLEGAL_VALUE
        if reg in (REG_DEFAULT_CURRENT, REG_MIN_CURRENT):
            return None if value <= self.max_current_A else ILLEGAL_VALUE
        if reg == REG_UNIT:
            return None if 1 <= value <= 247 else ILLEGAL_VALUE
        if reg == REG_CONFIG_BITS:
            return ILLEGAL_VALUE if value & CFG_BOOTLOADER else None
        return None

    def _write(self, reg: int, value: int) -> None:
        self.writes += 1
        if reg == REG_SET_CURRENT:
            self._set_cA = value if self.precise else value * 100
            log.debug("{evse}: set current {current_A} A", evse=self.name, current_A=self.set_current_A)
        elif reg == REG_COMMAND:
            self._off = bool(value & CMD_OFF)
            if value & CMD_CLEAR_RCD and self.charge_fault == "rcd":
                self.charge_fault = None
            if value & CMD_SELFTEST and not self.selftest_running:
                self._start_selftest()
        else:
            self._config[reg] = value

    def _start_selftest(self) -> None:
        if self._clock is None:
            return
        self._selftest_call = self._clock.callLater(self.selftest_s, lambda: None)

    def write_registers(self, address: int, values: list[int]) -> int | None:
        """Write `values` from `address` on, all or nothing; returns an exception code or None."""
        if not 1 <= len(values) <= MAX_WRITE_COUNT:
            return ILLEGAL_VALUE
        block = RUNTIME if address in RUNTIME else CONFIG
        if address + len(values) - 1 not in block or address not in block:
            return ILLEGAL_ADDRESS
        for offset, value in enumerate(values):
            if (code := self._check_write(address + offset, value)) is not None:
                return code
        for offset, value in enumerate(values):
            self._write(address + offset, value)
        return None

    def read_registers(self, address: int, count: int) -> list[int] | int:
        """Values from `address` on, or an exception code."""
        if not 1 <= count <= MAX_READ_COUNT:
            return ILLEGAL_VALUE
        last = address + count - 1
        if not (address in RUNTIME and last in RUNTIME or address in CONFIG and last in CONFIG):
            return ILLEGAL_ADDRESS
        return [self.read_register(reg) for reg in range(address, last + 1)]

    # -- Modbus (the SimDevice banks) -------------------------------------------------------------------

    def read_holding(self, address: int, count: int) -> list[int]:
        result = self.read_registers(address, count)
        if isinstance(result, int):
            raise SimModbusError(result)
        return result

    def write_holding(self, address: int, values: list[int]) -> None:
        if (code := self.write_registers(address, values)) is not None:
            raise SimModbusError(code)

    def read_input(self, address: int, count: int) -> list[int]:
        # The board has holding registers only.
        raise SimModbusError(ILLEGAL_FUNCTION)
