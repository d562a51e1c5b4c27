"""Simulators for the demo and the tests: meters (sdm), Modbus serving (modbus), RS485 bus, EVSE, car."""
