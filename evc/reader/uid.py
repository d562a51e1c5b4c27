"""Card UIDs -> id tags (`uid_format`), the same rules for every reader type (reference rfid-readers.md §9).

The canonical id tag is the UID in uppercase hex, byte 0 first (what OCPP chargers' own readers send). `hex_reversed`
is the byte order some readers and Wiegand converters use; `decimal` is the UID bytes as one big-endian number,
zero-padded to at least 10 digits (for EM4100 cards the number printed on the card, see evc.reader.rdm6300).
"""
from __future__ import annotations

UID_FORMATS = ("hex", "decimal", "hex_reversed")
DECIMAL_DIGITS = 10


def id_tag(uid: bytes, uid_format: str = "hex") -> str:
    """The id tag of `uid` in `uid_format` (hex: b"\\x1c\\x78\\xf2\\xbf" -> "1C78F2BF")."""
    if not uid:
        raise ValueError("an empty UID has no id tag")
    if uid_format == "hex":
        return uid.hex().upper()
    if uid_format == "hex_reversed":
        return uid[::-1].hex().upper()
    if uid_format == "decimal":
        return str(int.from_bytes(uid, "big")).zfill(DECIMAL_DIGITS)
    raise ValueError(f"uid_format {uid_format!r} is not one of {', '.join(UID_FORMATS)}")


def same_tag(a: str | None, b: str | None) -> bool:
    """OCPP id tags compare case-insensitively (IdToken is a CiString)."""
    return a is not None and b is not None and a.upper() == b.upper()
