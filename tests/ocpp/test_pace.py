"""evc.ocpp.pace.SetupPacer on task.Clock: slots, the loop-lag probe, cancellation, stop."""
from twisted.internet import defer, task

from evc.ocpp.pace import SetupPacer


class LateClock(task.Clock):
    """A clock whose timers fire `late_s` after they are due, as on a loop that is busy."""

    def __init__(self, late_s: float):
        super().__init__()
        self.late_s = late_s

    def callLater(self, delay, fn, *args, **kw):
        return super().callLater(delay + self.late_s, fn, *args, **kw)


def fired(ds):
    return [d.called for d in ds]


def test_slots_admit_at_once_and_the_rest_wait_for_a_release():
    clock = task.Clock()
    pacer = SetupPacer(clock, slots=2)
    ds = [pacer.admit() for _ in range(4)]
    assert fired(ds) == [True, True, False, False]
    assert pacer.waiting == 2
    pacer.release()
    assert fired(ds) == [True, True, True, False]
    pacer.release()
    pacer.release()
    assert all(fired(ds)) and pacer.active == 1 and pacer.admitted == 4


def test_lag_throttles_to_one_a_probe_then_recovers():
    P, L = 1 / 16, 1 / 8                    # binary fractions: the clock's sums are exact
    clock = LateClock(late_s=L)
    pacer = SetupPacer(clock, slots=4, probe_s=P, max_lag_s=0.02)
    busy = [pacer.admit() for _ in range(4)]
    burst = [pacer.admit() for _ in range(12)]
    assert all(fired(busy)) and not any(fired(burst))
    for _ in range(4):
        pacer.release()                     # no lag measured yet: each release admits the next
    assert sum(fired(burst)) == 4
    clock.advance(P + L)                    # the probe due at P fires L late
    assert pacer.lagging and sum(fired(burst)) == 4
    pacer.release()
    pacer.release()                         # a release while the loop is late admits nothing by itself
    assert sum(fired(burst)) == 4 and pacer.active == 2
    clock.advance(P + L)                    # one set-up a probe
    assert sum(fired(burst)) == 5
    clock.late_s = 0.0                      # the loop is prompt again; the probe already scheduled is still late
    clock.advance(P + L)
    assert sum(fired(burst)) == 6 and pacer.active == 4
    for _ in range(4):
        pacer.release()
    assert sum(fired(burst)) == 6
    clock.advance(P)                        # a prompt probe: the slots fill again
    assert not pacer.lagging and sum(fired(burst)) == 10
    for _ in range(4):
        pacer.release()
    assert all(fired(burst))
    clock.advance(P)
    assert not pacer.lagging
    assert not clock.getDelayedCalls()      # no probe runs while nothing waits


def test_a_cancelled_wait_gives_up_its_place_and_stop_cancels_the_rest():
    clock = task.Clock()
    pacer = SetupPacer(clock, slots=1)
    first = pacer.admit()
    second, third = pacer.admit(), pacer.admit()
    errors = []
    second.addErrback(lambda f: errors.append(f.check(defer.CancelledError)))
    second.cancel()
    assert errors == [defer.CancelledError] and pacer.waiting == 1
    pacer.release()
    assert third.called and first.called
    fourth = pacer.admit()
    fourth.addErrback(lambda f: errors.append(f.check(defer.CancelledError)))
    pacer.stop()
    assert errors == [defer.CancelledError] * 2
    assert not clock.getDelayedCalls()


def test_while_charge_points_arrive_set_ups_go_one_a_probe_and_fill_the_slots_once_arrivals_pause():
    P = 1 / 16
    clock = task.Clock()
    pacer = SetupPacer(clock, slots=8, probe_s=P, quiet_s=0.25)
    pacer.arrived()
    ds = [pacer.admit() for _ in range(6)]
    assert not any(fired(ds))                   # a storm is on: nothing at once
    for _ in range(3):                          # arrivals go on: one a probe
        clock.advance(P)
        pacer.arrived()
    assert sum(fired(ds)) == 3
    clock.advance(0.25)                         # arrivals paused for quiet_s: the next probe fills the slots
    clock.advance(P)
    assert all(fired(ds)) and pacer.active == 6
    assert pacer.admit().called                 # and a set-up after the storm goes at once
