"""The push queue as a unit, on task.Clock and the in-memory store: in the store before sent, in order, retried with
backoff while the eMSP may recover, given up after a few refusals, nothing while unregistered."""
from __future__ import annotations

import types

from twisted.internet import defer, task

from evc.front.ocpi.credentials import Registered
from evc.front.ocpi.pushes import Pusher
from evc.front.ocpi.transport import OcpiError, Party
from evc.instance import Context
from evc.store.memory import MemoryStore
from evc.testing import RecordingState


class FakeClient:
    def __init__(self):
        self.calls: list[tuple[str, str, dict, defer.Deferred]] = []

    def request(self, method, url, **kw):
        d = defer.Deferred()
        self.calls.append((method, url, kw, d))
        return d

    def answer(self, i=-1):
        self.calls[i][3].callback(types.SimpleNamespace(headers={}, data=None))

    def fail(self, kind="unreachable", http_code=None, i=-1):
        self.calls[i][3].errback(OcpiError(kind, f"{kind} {http_code or ''}", http_code=http_code))


def _front(clock, store, registered=True):
    ctx = Context(kind="front", name="r", clock=clock, state=RecordingState(), resolve=None, store=store,
                  root="/evc/t")
    creds = Registered("2.2.1", "B", "C", "http://emsp/versions", {"sessions": "http://emsp/sessions"},
                       {"country_code": "NL", "party_id": "EMS", "name": "x"}) if registered else None
    front = types.SimpleNamespace(
        ctx=ctx, config=types.SimpleNamespace(retry_min_s=1, retry_max_s=8, request_timeout_s=5),
        registrar=types.SimpleNamespace(creds=creds), client=FakeClient(), party=Party("DE", "EVC"),
        delivered=[])
    front.pushed = lambda entry, response: front.delivered.append(entry.payload["what"])
    return front


def _pusher(registered=True):
    clock, store = task.Clock(), MemoryStore()
    front = _front(clock, store, registered)
    p = Pusher(front)
    p.load()
    p.start()
    return p, front, clock, store


def test_a_push_is_sent_only_once_it_is_in_the_store():
    p, front, clock, store = _pusher()
    store.available = False
    p.push("PUT", "sessions", {"id": "S1"}, path="/DE/EVC/S1", what="PUT session S1")
    clock.advance(1)
    assert front.client.calls == []
    store.available = True
    clock.advance(30)
    assert [c[1] for c in front.client.calls] == ["http://emsp/sessions/DE/EVC/S1"]
    assert len(store.range("/evc/t/front/r/data/queue/", prefix=True).result.kvs) == 1


def test_pushes_go_out_one_at_a_time_in_order_and_leave_the_store_when_accepted():
    p, front, clock, store = _pusher()
    for i in range(3):
        p.push("PATCH", "sessions", {"i": i}, path=f"/S{i}", what=f"push {i}")
    clock.advance(0)
    assert len(front.client.calls) == 1
    front.client.answer()
    assert len(front.client.calls) == 2 and front.client.calls[1][2]["body"] == {"i": 1}
    front.client.answer()
    front.client.answer()
    assert front.delivered == ["push 0", "push 1", "push 2"] and len(p) == 0
    assert not store.range("/evc/t/front/r/data/queue/", prefix=True).result.kvs


def test_a_failure_the_emsp_may_recover_from_is_retried_with_doubling_backoff_forever():
    p, front, clock, store = _pusher()
    p.push("POST", "sessions", {"id": "CDR1"}, what="POST CDR1")
    times = []
    for _ in range(6):
        times.append(clock.seconds())
        front.client.fail("http", 503)
        clock.advance(100)              # more than any delay: the next attempt is out
    assert len(front.client.calls) == 7 and len(p) == 1
    assert front.ctx.state.values["last_push_error"] == "POST CDR1: http 503"
    front.client.answer()
    assert front.delivered == ["POST CDR1"] and "last_push_error" not in front.ctx.state.values


def test_the_backoff_doubles_up_to_retry_max_s():
    p, front, clock, store = _pusher()
    p.push("PUT", "sessions", {}, what="x")
    waits = []
    for _ in range(5):
        front.client.fail("timeout")
        n = len(front.client.calls)
        waited = 0
        while len(front.client.calls) == n:
            clock.advance(0.5)
            waited += 0.5
        waits.append(waited)
    assert waits == [1, 2, 4, 8, 8]


def test_a_push_the_emsp_refuses_for_good_is_given_up_after_three_attempts_and_the_next_goes():
    p, front, clock, store = _pusher()
    p.push("PUT", "sessions", {"bad": True}, what="bad push")
    p.push("PUT", "sessions", {"good": True}, what="good push")
    for _ in range(3):
        front.client.fail("http", 400)
        clock.advance(100)
    assert front.ctx.state.values["last_given_up"] == "bad push: http 400"
    assert front.client.calls[-1][2]["body"] == {"good": True}
    front.client.answer()
    assert front.delivered == ["good push"] and p.given_up == 1


def test_nothing_is_sent_while_unregistered():
    p, front, clock, store = _pusher(registered=False)
    p.push("PUT", "sessions", {}, what="x")
    clock.advance(60)
    assert front.client.calls == []
    front.registrar.creds = _front(clock, store).registrar.creds
    p.pump()
    assert len(front.client.calls) == 1


def test_a_command_result_goes_to_its_response_url_without_routing_headers():
    p, front, clock, store = _pusher()
    p.push("POST", "commands", {"result": "ACCEPTED"}, url="http://emsp/cmd/42", what="result")
    clock.advance(0)
    method, url, kw, _ = front.client.calls[0]
    assert url == "http://emsp/cmd/42" and kw["to_party"] is None and kw["token"] == "C"


def test_a_reload_finds_the_queue_in_order():
    p, front, clock, store = _pusher()
    for i in range(3):
        p.push("PATCH", "sessions", {"i": i}, path=f"/S{i}", what=f"push {i}")
    clock.advance(0)
    p.stop()
    again = Pusher(front)
    n = again.load().result
    assert n == 3 and [e.payload["body"]["i"] for e in again.outbox.entries] == [0, 1, 2]
