"""Admission of charge-point set-ups, so that a reconnect storm does not starve the handshakes.

After a site's network blip every charge point reconnects at once, and each one that boots is sent its set-up:
TriggerMessage, ChangeConfiguration (twice), GetConfiguration and SendLocalList. Sent all at once, 1,000 set-ups
keep the one loop busy while the next chargers' websocket handshakes wait in the listen backlog. The pacer lets
`slots` set-ups run at a time, and holds them back while the loop is busy with more urgent work: while charge
points are still arriving (a handshake within the last `quiet_s`: a storm is on) or while the loop runs late (a
timer of `probe_s` that fires more than `max_lag_s` late), it admits one set-up a probe instead of filling the
slots, so the handshakes, the boots and the CALLs of chargers already running go first. Once the storm is over
the waiting set-ups fill the slots again.

What is not paced, on purpose: the answers to the charge points' own CALLs, and the charging profiles (the base
and dynamic SetChargingProfile of evc.charger.ocpp), which keep a charger within its limit.
"""
from __future__ import annotations

from collections import deque

from twisted.internet import defer


class SetupPacer:
    def __init__(self, clock, slots: int = 4, probe_s: float = 0.05, max_lag_s: float = 0.02,
                 quiet_s: float = 0.2):
        self.clock = clock
        self.slots = slots
        self.probe_s = probe_s
        self.max_lag_s = max_lag_s
        self.quiet_s = quiet_s
        self._arrived_s: float | None = None
        self.active = 0
        self.lagging = False
        self.admitted = 0                  # set-ups let through since start (state, tests)
        self._waiting: deque[defer.Deferred] = deque()
        self._probe = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def arrived(self) -> None:
        """A charge point is connecting (its handshake): set-ups wait until arrivals pause for `quiet_s`."""
        self._arrived_s = self.clock.seconds()

    @property
    def busy(self) -> bool:
        """The loop has more urgent work: it runs late, or charge points are still arriving."""
        return self.lagging or (self._arrived_s is not None and self.clock.seconds() - self._arrived_s < self.quiet_s)

    def admit(self) -> defer.Deferred:
        """A Deferred that fires when this set-up may run; the caller calls release() when it is done.

        Cancelling the Deferred (the charge point went away while waiting) gives up the place in the queue."""
        if not self._waiting and not self.busy and self.active < self.slots:
            self._take()
            return defer.succeed(None)
        d = defer.Deferred(canceller=self._withdraw)
        self._waiting.append(d)
        self._start_probe()
        return d

    def release(self) -> None:
        self.active = max(0, self.active - 1)
        self._pump(limit=0 if self.busy else None)

    def stop(self) -> None:
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.cancel()

    def _take(self) -> None:
        self.active += 1
        self.admitted += 1

    def _withdraw(self, d: defer.Deferred) -> None:
        try:
            self._waiting.remove(d)
        except ValueError:
            pass

    def _pump(self, limit: int | None) -> None:
        n = 0
        while self._waiting and self.active < self.slots and (limit is None or n < limit):
            d = self._waiting.popleft()
            self._take()
            n += 1
            d.callback(None)

    def _start_probe(self) -> None:
        if self._probe is None:
            due = self.clock.seconds() + self.probe_s
            self._probe = self.clock.callLater(self.probe_s, self._probed, due)

    def _probed(self, due: float) -> None:
        self._probe = None
        self.lagging = self.clock.seconds() - due > self.max_lag_s
        # A busy loop still admits one set-up a probe: a machine that is always busy gets slower, not stuck.
        self._pump(limit=1 if self.busy else None)
        if self._waiting:
            self._start_probe()
        else:
            self.lagging = False
