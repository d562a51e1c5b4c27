"""Charge point passwords: salted hashes, Basic auth headers, `evc passwd`."""
import io

import pytest

from evc import cli
from evc.ocpp.cs_auth import (
    basic_auth_header, check_hash_format, hash_password, parse_basic_auth, verify_password,
)


def test_a_hash_verifies_its_password_only():
    stored = hash_password("0123456789abcdef0123", iterations=1000)
    assert stored.startswith("pbkdf2-sha256$1000$")
    assert verify_password("0123456789abcdef0123", stored)
    assert not verify_password("0123456789abcdef0124", stored)
    assert hash_password("same", iterations=10) != hash_password("same", iterations=10)      # salted


def test_a_plain_password_is_compared_when_there_is_no_hash():
    assert verify_password("secret-secret-16", plain="secret-secret-16")
    assert not verify_password("secret-secret-17", plain="secret-secret-16")
    assert not verify_password("anything")
    assert verify_password("a-b", hash_password("a-b", iterations=5), plain="other")           # the hash wins


@pytest.mark.parametrize("stored", ["secret", "md5$1$a$b", "pbkdf2-sha256$x$AAAA$AAAA", "pbkdf2-sha256$0$AAAA$AAAA",
                                    "pbkdf2-sha256$10$!!$AAAA", "pbkdf2-sha256$10$AAAA$AAAA"])
def test_malformed_hashes_are_explained_without_their_content(stored):
    problem = check_hash_format(stored)
    assert problem and stored not in problem
    assert not verify_password("secret", stored)


@pytest.mark.parametrize("header, expected", [
    (basic_auth_header("cp1", "pa:ss"), ("cp1", "pa:ss")),
    ("basic " + basic_auth_header("cp1", "x").split()[1], ("cp1", "x")),
    (None, None), ("", None), ("Bearer abc", None), ("Basic !!!", None), ("Basic " + "bm9jb2xvbg==", None),
])
def test_basic_auth_headers(header, expected):
    assert parse_basic_auth(header) == expected


def test_evc_passwd_hashes_a_line_of_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("0123456789abcdef0123\n"))
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["passwd", "--iterations", "100"], out, err) == 0
    stored = out.getvalue().strip()
    assert verify_password("0123456789abcdef0123", stored) and err.getvalue() == ""
    assert "0123456789abcdef0123" not in out.getvalue()


def test_evc_passwd_warns_about_short_passwords_and_refuses_empty_ones(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["passwd", "--iterations", "10"], out, err) == 0
    assert "16 to 40" in err.getvalue()
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["passwd"], out, err) == 1
    assert "empty password" in err.getvalue() and out.getvalue() == ""


def test_evc_passwd_generates_a_key_and_its_hash():
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["passwd", "--generate", "--iterations", "10"], out, err) == 0
    lines = dict(line.split(": ", 1) for line in out.getvalue().splitlines() if ": " in line)
    assert len(lines["password"]) == 40 and int(lines["password"], 16) >= 0
    assert verify_password(lines["password"], lines["password_hash"])
