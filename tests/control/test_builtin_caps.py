"""control/builtin merges upstream caps (("cap", charger) events, ICapSource) into its allocation: the lowest wins."""
from __future__ import annotations

from zope.interface import implementer

from evc.control.builtin import ICapSource
from evc.instance import Context
from evc.control.builtin import BuiltinControl
from test_builtin import ROOT, Site


def test_a_cap_lowers_the_allocation_at_once_and_removing_it_gives_the_share_back():
    site = Site({"a": {}, "b": {}}, A_max=32, deadband_A=0)
    site.start()
    site.run(1)
    assert site.setpoints() == {"a": 16, "b": 16}
    site.bus.publish(("cap", "a"), ("front/up", 10))
    assert site.setpoints()["a"] == 10                  # a decrease: written on the event, not the next interval
    assert site.state.values["allocations/a/reason"].startswith("at cap 10 A")
    assert site.state.values["caps/a"] == 10
    site.bus.publish(("cap", "a"), ("front/up", None))
    site.run(site.config.interval_s + 1)
    assert site.setpoints()["a"] == 16 and "caps/a" not in site.state.values


def test_the_lowest_of_several_sources_wins_and_the_site_limit_still_holds():
    site = Site({"a": {"A_max": 32}}, A_max=20, deadband_A=0)
    control = site.start()
    site.bus.publish(("cap", "a"), ("front/one", 25))
    site.bus.publish(("cap", "a"), ("front/two", 12))
    site.run(1)
    assert control.cap_A("a") == 12 and site.setpoints()["a"] == 12
    site.bus.publish(("cap", "a"), ("front/two", None))
    site.run(site.config.interval_s + 1)
    assert control.cap_A("a") == 25
    assert site.setpoints()["a"] == 20                  # the site limit is below the remaining cap


def test_a_cap_below_the_minimum_pauses_the_charger():
    site = Site({"a": {}}, A_max=32, deadband_A=0)
    site.start()
    site.run(1)
    site.bus.publish(("cap", "a"), ("front/up", 0))
    site.run(1)
    assert site.setpoints()["a"] == 0
    assert "below minimum" in site.state.values["allocations/a/reason"]


def test_a_control_started_after_the_front_asks_it_for_its_caps():
    @implementer(ICapSource)
    class Front:
        def caps(self):
            return {"a": 8.0}

    site = Site({"a": {}}, A_max=32, deadband_A=0)
    fronts = {"up": Front()}
    ctx = Context(kind="control", name="master", clock=site.clock, state=site.state, resolve=site.resolve,
                  store=site.store, root=ROOT, events=site.bus,
                  find=lambda kind: fronts if kind == "front" else dict(site.chargers))
    control = BuiltinControl(ctx, site.config)
    control.startService()
    site.run(1)
    assert control.cap_A("a") == 8.0 and site.setpoints()["a"] == 8


def test_a_malformed_cap_event_is_ignored():
    site = Site({"a": {}}, A_max=32, deadband_A=0)
    control = site.start()
    site.bus.publish(("cap", "a"), "ten amps")
    site.bus.publish(("cap", "a"), ("front/up", "lots"))
    assert control.cap_A("a") is None
