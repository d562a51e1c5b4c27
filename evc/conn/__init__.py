"""Conns: physical buses (rs485) that several configured devices share, and the address claims on them."""
from __future__ import annotations

from typing import Callable

from zope.interface import Interface


class IBusAddresses(Interface):
    """A bus whose devices are told apart by an address (Modbus unit 1..247). The conn cannot know its users up
    front (they name it, not the other way round), so each user claims its address when it starts; two users of
    one address on one bus would read each other's device and fight over its setpoints.

    Chargers and meters on a conn call, in startService:

        if IBusAddresses.providedBy(bus):
            self._release = bus.claim(self.config.bus_addr, self.ctx.key, leaf="config/bus_addr")

    and `self._release()` in stopService.
    """

    def claim(unit: int, user_key: str, leaf: str = "config/conn_port") -> Callable[[], None]:
        """Record that `user_key` (e.g. "charger/s1") uses address `unit`; returns release().

        Raises evc.errors.ConfigError naming `leaf` when another user holds the address ("config/conn_port:
        address 1 on conn s123 is already used by charger/s2"). Claiming again under the same key is a no-op.
        """

    def release(unit: int, user_key: str) -> None:
        """Give the address back (only if `user_key` holds it)."""
