"""Charge point passwords (OCPP security profiles 1 and 2): salted hashes for config, HTTP Basic checks.

A charge point authenticates with `Authorization: Basic base64(<cp_id>:<AuthorizationKey>)` on the websocket
upgrade. EVC stores only a salted PBKDF2-SHA256 hash of the key in the charger's config (`password_hash`, made
by `evc passwd`), in the form

    pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>

so reading etcd does not reveal the key. A plain `password` in config is accepted too (compared in constant
time) for operators who cannot run `evc passwd`; it is never logged and never written to state.
Nothing here logs: callers log the outcome, never the secret.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SCHEME = "pbkdf2-sha256"
# About 0.1 s on a small machine: cheap once per connection, slow for someone who stole etcd's content.
DEFAULT_ITERATIONS = 200_000
SALT_BYTES = 16


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """The `password_hash` config value for `password`."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def check_hash_format(stored: str) -> str | None:
    """None when `stored` is a hash this module can check, else a sentence saying what is wrong (never the value)."""
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        return f"not a {SCHEME} hash made by `evc passwd` ({SCHEME}$<iterations>$<salt>$<hash>)"
    if not parts[1].isdigit() or int(parts[1]) < 1:
        return "the iteration count is not a positive number"
    try:
        _unb64(parts[2])
        if len(_unb64(parts[3])) != 32:
            return "the hash is not 32 bytes long"
    except (binascii.Error, ValueError):
        return "the salt or the hash is not valid base64"
    return None


def verify_password(password: str, stored_hash: str | None = None, plain: str | None = None) -> bool:
    """True when `password` matches the stored hash (preferred) or the plain config password. CPU-bound for hashes:
    run it off the event loop."""
    if stored_hash:
        if check_hash_format(stored_hash) is not None:
            return False
        _, iterations, salt, digest = stored_hash.split("$")
        mine = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), _unb64(salt), int(iterations))
        return hmac.compare_digest(mine, _unb64(digest))
    if plain is not None:
        return hmac.compare_digest(password.encode("utf-8"), plain.encode("utf-8"))
    return False


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """`Basic base64(user:password)` -> (user, password); None when the header is absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def basic_auth_header(user: str, password: str) -> str:
    """The header value a charge point sends (tests and simulators)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
