"""Why a Modbus request failed: the errors a caller of IModbusBus can see."""
from __future__ import annotations

from twisted.internet import defer

EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "device failure",
    0x05: "acknowledge",
    0x06: "device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target failed to respond",
}


class ModbusError(Exception):
    """Base of every failure of a Modbus request."""

    def __init__(self, message: str, unit: int | None = None):
        super().__init__(message)
        self.unit = unit


class ModbusException(ModbusError):
    """The device answered with an exception reply: the request is wrong for this device (never retried)."""

    def __init__(self, unit: int, function_code: int, code: int, address: int | None = None,
                 count: int | None = None):
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        where = ""
        if address is not None:
            where = f" at 0x{address:04X}" + (f" count {count}" if count is not None else "")
        super().__init__(f"unit {unit} answered exception {code:02d} ({name}) to function "
                         f"{function_code:02d}{where}", unit)
        self.function_code = function_code
        self.code = code
        self.address = address
        self.count = count


class ModbusTimeout(ModbusError, defer.TimeoutError):
    """No valid reply within the timeout, after the retry."""


class UnitBackoff(ModbusError):
    """The unit failed repeatedly; its requests fail fast until its backoff ends."""


class BusDisconnected(ModbusError):
    """The link to the bus (TCP connection, serial port) is down; requests fail until it is back."""


class BusClosed(BusDisconnected):
    """The bus was stopped on purpose."""
