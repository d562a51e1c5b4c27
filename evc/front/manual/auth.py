"""Logins of front/manual: users from config, cookie sessions with a CSRF token, HTTP Basic, a per-address limit.

Passwords are the hashes `evc passwd` prints (evc.ocpp.cs_auth: the same format and the same check as OCPP charge
point passwords). Checking one costs ~0.1 s of CPU, so it runs in the reactor's thread pool, and a Basic login that
succeeded is remembered for a while (a script that sends Basic on every request pays once). Nothing here logs a
password, a cookie or a CSRF token.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
from collections import deque
from typing import Optional

from twisted.internet import defer, threads

from evc.ocpp.cs_auth import check_hash_format, verify_password

ROLES = ("operator", "viewer")
COOKIE = "evc_session"


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    password_hash: str = dataclasses.field(repr=False)
    role: str = "operator"


@dataclasses.dataclass
class Login:
    """Who a request is: a user (or None for a front without users, where everyone is an operator)."""
    user: Optional[str]
    role: str
    csrf_token: str = dataclasses.field(repr=False)
    expires_s: float = float("inf")
    by_cookie: bool = False
    token: Optional[str] = dataclasses.field(default=None, repr=False)   # the cookie's value

    @property
    def may_change(self) -> bool:
        return self.role == "operator"

    def public(self) -> dict:
        return {"user": self.user, "role": self.role, "csrf_token": self.csrf_token}


def parse_users(doc: dict) -> dict[str, User]:
    """config/users -> {name: User}; ValueError naming the leaf (`config/users/<name>/password: ...`)."""
    users = {}
    for name, entry in sorted((doc or {}).items()):
        leaf = f"config/users/{name}"
        if not isinstance(entry, dict) or "password" not in entry:
            raise ValueError(f"{leaf}/password: missing (the hash printed by `evc passwd`)")
        why = check_hash_format(entry["password"])
        if why is not None:
            raise ValueError(f"{leaf}/password: {why}")
        role = entry.get("role", "operator")
        if role not in ROLES:
            raise ValueError(f"{leaf}/role: {role!r} is not operator or viewer")
        users[name] = User(name, entry["password"], role)
    return users


class RateLimit:
    """At most `attempts` failed logins per client address within `window_s`; `clock` is an IReactorTime."""

    def __init__(self, clock, attempts: int = 5, window_s: float = 60.0, max_addresses: int = 10000):
        self.clock = clock
        self.attempts = attempts
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._failures: dict[str, deque] = {}

    def _recent(self, address: str) -> deque:
        now = self.clock.seconds()
        q = self._failures.get(address)
        if q is None:
            if len(self._failures) >= self.max_addresses:
                self._prune(now)
            q = self._failures[address] = deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def _prune(self, now: float) -> None:
        for addr in [a for a, q in self._failures.items() if not q or q[-1] <= now - self.window_s]:
            del self._failures[addr]
        while len(self._failures) >= self.max_addresses:      # a flood from many addresses: forget the oldest
            del self._failures[next(iter(self._failures))]

    def retry_after_s(self, address: str) -> float:
        """0 when `address` may try now, else the seconds until it may."""
        q = self._recent(address)
        if len(q) < self.attempts:
            return 0.0
        return max(1.0, q[0] + self.window_s - self.clock.seconds())

    def failed(self, address: str) -> None:
        self._recent(address).append(self.clock.seconds())


class Authenticator:
    """Checks passwords, keeps cookie sessions. `reactor` provides the thread pool (None: check inline, for tests)."""

    basic_cache_s = 300.0

    def __init__(self, users: dict[str, User], clock, reactor=None, session_ttl_s: float = 43200.0):
        self.users = users
        self.clock = clock
        self.reactor = reactor
        self.session_ttl_s = session_ttl_s
        self.limit = RateLimit(clock)
        self.sessions: dict[str, Login] = {}
        self._basic_ok: dict[bytes, float] = {}
        # Without users everyone is an operator; the CSRF token still keeps other web sites from posting here.
        self.anonymous = Login(None, "operator", secrets.token_urlsafe(24)) if not users else None

    def _verify(self, password: str, stored: str) -> defer.Deferred:
        if self.reactor is None or not hasattr(self.reactor, "getThreadPool"):
            return defer.succeed(verify_password(password, stored))
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), verify_password, password,
                                         stored)

    async def check(self, name: str, password: str) -> Optional[User]:
        """The user when `password` is theirs, else None (unknown users cost the same check, against a dummy)."""
        user = self.users.get(name)
        stored = user.password_hash if user is not None else _DUMMY_HASH
        ok = await self._verify(password, stored)
        return user if ok and user is not None else None

    async def basic(self, name: str, password: str) -> Optional[Login]:
        user = self.users.get(name)
        if user is None:
            await self._verify(password, _DUMMY_HASH)
            return None
        key = hashlib.sha256(b"\0".join(s.encode("utf-8") for s in (name, password, user.password_hash))).digest()
        now = self.clock.seconds()
        if self._basic_ok.get(key, 0) > now:
            return Login(user.name, user.role, "")
        if not await self._verify(password, user.password_hash):
            return None
        if len(self._basic_ok) > 1000:
            self._basic_ok = {k: t for k, t in self._basic_ok.items() if t > now}
        self._basic_ok[key] = now + self.basic_cache_s
        return Login(user.name, user.role, "")

    def open_session(self, user: User) -> Login:
        self._expire()
        token = secrets.token_urlsafe(32)
        login = Login(user.name, user.role, secrets.token_urlsafe(24), self.clock.seconds() + self.session_ttl_s,
                      by_cookie=True, token=token)
        self.sessions[token] = login
        return login

    def session(self, token: Optional[str]) -> Optional[Login]:
        """The live session of a cookie value, or None (missing, unknown, forged or expired)."""
        if not token:
            return None
        login = self.sessions.get(token)
        if login is None:
            return None
        if login.expires_s <= self.clock.seconds():
            del self.sessions[token]
            return None
        return login

    def close_session(self, token: Optional[str]) -> None:
        self.sessions.pop(token or "", None)

    def _expire(self) -> None:
        now = self.clock.seconds()
        for token in [t for t, s in self.sessions.items() if s.expires_s <= now]:
            del self.sessions[token]


# Checked against when the user is unknown, so that a wrong name takes as long as a wrong password.
_DUMMY_HASH = "pbkdf2-sha256$200000$" + base64.b64encode(bytes(16)).decode() + "$" + base64.b64encode(bytes(32)).decode()
