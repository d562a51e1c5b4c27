"""evc.events.Subscribers: the callback list meters and chargers hand their values to."""
from twisted.logger import globalLogPublisher

from evc.events import Subscribers


def test_every_callback_gets_the_value_in_order_and_unsubscribe_stops_it():
    subs, got = Subscribers("meter/m1"), []
    subs.add(lambda v: got.append(("a", v)))
    unsubscribe = subs.add(lambda v: got.append(("b", v)))
    subs.notify(1)
    unsubscribe()
    unsubscribe()                                   # harmless twice
    subs.notify(2)
    assert got == [("a", 1), ("b", 1), ("a", 2)] and len(subs) == 1


def test_a_failing_callback_is_logged_and_the_others_still_get_the_value():
    subs, got, logged = Subscribers("charger/s1", "status subscriber"), [], []

    def broken(value):
        raise RuntimeError("boom")
    subs.add(broken)
    subs.add(got.append)
    globalLogPublisher.addObserver(logged.append)
    try:
        subs.notify("plugged")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert got == ["plugged"]
    failures = [e for e in logged if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["owner"] == "charger/s1"
    assert failures[0]["log_failure"].check(RuntimeError)


def test_a_callback_that_unsubscribes_another_during_notify_does_not_skip_anyone_this_time():
    subs, got = Subscribers(), []
    unsubs = {}
    unsubs["a"] = subs.add(lambda v: (got.append("a"), unsubs["b"]()))
    unsubs["b"] = subs.add(lambda v: got.append("b"))
    subs.notify(0)
    subs.notify(0)
    assert got == ["a", "b", "a"]
