"""The state writer: coalesced, deadbanded, one txn per tick, leased, never blocking."""
import json

import pytest
from twisted.internet import task

from evc.state import MAX_TXN_OPS, StateWriter
from evc.store.memory import MemoryStore

ROOT = "/evc/t"


@pytest.fixture
def rig():
    clock = task.Clock()
    store = MemoryStore(clock=clock)
    writer = StateWriter(store, ROOT, clock, tick_s=0.5, ttl_s=10)
    writer.startService()
    return clock, store, writer


def read(store, prefix=ROOT + "/"):
    out = {}
    store.range(prefix, prefix=True).addCallback(lambda r: out.update({kv.key: (kv.value.decode(), kv.lease)
                                                                        for kv in r.kvs}))
    return out


def test_many_sets_in_one_tick_become_one_write_of_the_newest_value(rig):
    clock, store, writer = rig
    s = writer.scope("meter", "m1")
    for w in range(100):
        s.set("W", w)
    clock.advance(0.5)
    assert read(store) == {f"{ROOT}/meter/m1/state/W": ("99", writer.lease)}
    assert writer.writes == 1 and writer.txns == 1


def test_all_leaves_of_a_tick_go_in_one_transaction(rig):
    clock, store, writer = rig
    for i in range(40):
        writer.scope("meter", f"m{i}").update({"W": i, "stale": False, "name": f"x{i}"})
    clock.advance(0.5)
    assert writer.txns == 1
    assert len(read(store)) == 120
    assert read(store)[f"{ROOT}/meter/m3/state/name"] == ("x3", writer.lease)   # strings raw, others JSON
    assert read(store)[f"{ROOT}/meter/m3/state/stale"] == ("false", writer.lease)


def test_more_leaves_than_etcd_allows_per_txn_are_split(rig):
    clock, store, writer = rig
    for i in range(MAX_TXN_OPS * 2 + 1):
        writer.scope("meter", f"m{i}").set("W", i)
    clock.advance(0.5)
    assert writer.txns == 3 and len(read(store)) == MAX_TXN_OPS * 2 + 1


def test_changes_inside_the_deadband_are_not_written(rig):
    clock, store, writer = rig
    s = writer.scope("meter", "m1")
    s.set("A/L1", 10.0, deadband=0.1)
    clock.advance(0.5)
    s.set("A/L1", 10.05, deadband=0.1)
    s.set("A/L1", 9.95, deadband=0.1)
    clock.advance(0.5)
    assert writer.writes == 1
    s.set("A/L1", 10.2, deadband=0.1)
    clock.advance(0.5)
    assert read(store)[f"{ROOT}/meter/m1/state/A/L1"][0] == "10.2"


def test_slow_drift_is_written_once_it_leaves_the_deadband(rig):
    """The deadband compares with the last value accepted, so creeping noise cannot hide a real change."""
    clock, store, writer = rig
    s = writer.scope("meter", "m1")
    for i in range(30):
        s.set("V", 230 + i * 0.05, deadband=0.5)
        clock.advance(0.5)
    assert writer.writes == 3   # 230, 230.55, 231.1


def test_unchanged_value_is_not_rewritten(rig):
    clock, store, writer = rig
    s = writer.scope("meter", "m1")
    s.set("stale", False)
    clock.advance(0.5)
    s.set("stale", False)
    clock.advance(0.5)
    assert writer.writes == 1


def test_set_never_blocks_and_state_is_kept_while_etcd_is_unreachable(rig):
    clock, store, writer = rig
    s = writer.scope("meter", "m1")
    s.set("W", 1)
    clock.advance(0.5)
    store.available = False
    for w in range(2, 10):
        s.set("W", w)
        clock.advance(0.5)
    s.set("V", 230)
    store.available = True
    clock.advance(0.5)
    got = read(store)
    assert got[f"{ROOT}/meter/m1/state/W"][0] == "9" and got[f"{ROOT}/meter/m1/state/V"][0] == "230"


def test_state_is_leased_and_vanishes_with_the_lease(rig):
    clock, store, writer = rig
    writer.scope("meter", "m1").set("W", 5)
    clock.advance(0.5)
    lease = writer.lease
    assert lease and read(store)[f"{ROOT}/meter/m1/state/W"][1] == lease
    store.revoke(lease)
    assert read(store) == {}


def test_a_lost_lease_is_replaced_and_all_state_written_again(rig):
    clock, store, writer = rig
    writer.scope("meter", "m1").update({"W": 5, "V": 230})
    clock.advance(0.5)
    old = writer.lease
    store.revoke(old)                      # as if etcd forgot it while EVC was cut off
    for _ in range(10):                    # keepalive finds it gone; the next flush rewrites
        clock.advance(0.5)
    got = read(store)
    assert writer.lease != old
    assert got == {f"{ROOT}/meter/m1/state/W": ("5", writer.lease), f"{ROOT}/meter/m1/state/V": ("230", writer.lease)}


def test_keepalive_holds_the_lease_past_its_ttl(rig):
    clock, store, writer = rig
    writer.scope("meter", "m1").set("W", 5)
    clock.advance(0.5)
    lease = writer.lease
    for _ in range(20):
        clock.advance(1)
    assert writer.lease == lease and read(store)[f"{ROOT}/meter/m1/state/W"][0] == "5"


def test_clear_deletes_an_instances_state(rig):
    clock, store, writer = rig
    writer.scope("meter", "m1").update({"W": 5, "A/L1": 1})
    writer.scope("meter", "m2").set("W", 6)
    clock.advance(0.5)
    writer.scope("meter", "m1").clear()
    writer.scope("meter", "m1").set("W", 7)   # a new instance of the same name, same tick
    clock.advance(0.5)
    assert read(store) == {f"{ROOT}/meter/m2/state/W": ("6", writer.lease),
                           f"{ROOT}/meter/m1/state/W": ("7", writer.lease)}


def test_stop_revokes_the_lease(rig):
    clock, store, writer = rig
    writer.scope("meter", "m1").set("W", 5)
    clock.advance(0.5)
    writer.stopService()
    clock.advance(0)
    assert read(store) == {}


def test_lost_and_resumed_writes_are_announced_on_the_event_bus(rig):
    """Control listens: while etcd is lost it keeps the last good limits and raises nothing."""
    from evc.events import EventBus
    clock, store, writer = rig
    writer.events = bus = EventBus()
    heard = []
    bus.subscribe(("store",), lambda topic, event: heard.append(event))
    s = writer.scope("meter", "m1")
    s.set("W", 1)
    clock.advance(0.5)
    store.available = False
    for w in range(2, 6):
        s.set("W", w)
        clock.advance(0.5)
    store.available = True
    clock.advance(0.5)
    assert heard == ["lost", "ok"]


def test_a_computed_leaf_is_computed_once_per_tick_however_often_it_changes(rig):
    """A thousand charge points reconnecting at once: the list of connected ones is built once per flush."""
    clock, store, writer = rig
    connected: list[str] = []
    calls = []

    def compute():
        calls.append(1)
        return sorted(connected)
    s = writer.scope("server", "cs")
    for i in range(1000):
        connected.append(f"cp{i:04d}")
        s.set_computed("connected", compute)
    assert calls == []
    clock.advance(0.5)
    assert len(calls) == 1
    assert json.loads(read(store)[f"{ROOT}/server/cs/state/connected"][0]) == sorted(connected)
    clock.advance(0.5)
    assert len(calls) == 1          # nothing changed since: not computed again


def test_a_computed_leaf_deleted_before_the_tick_is_not_written(rig):
    clock, store, writer = rig
    s = writer.scope("server", "cs")
    s.set_computed("connected", lambda: ["cp1"])
    s.delete("connected")
    writer.scope("server", "cs2").set_computed("connected", lambda: ["cp2"])
    writer.scope("server", "cs2").clear()
    clock.advance(0.5)
    assert read(store) == {}
