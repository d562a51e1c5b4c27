"""What the readers' pure decoders return besides a good frame: bytes they dropped, and why (counted in state)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Dropped:
    """`n` bytes of input that were not a good frame. `reason` names a counter of the reader's state/counters/:
    noise (bytes outside any frame), half_frame (cut short by a new start), bad_checksum, bad_frame (wrong end byte,
    bad length, characters that cannot be there), overlong (a line longer than the reader sends)."""
    reason: str
    n: int


def decode_all(decode, buf: bytes) -> tuple[bytes, list]:
    """Run a `decode(buf) -> (used, item | None)` codec over `buf` until it needs more input.

    Returns (the rest to keep for the next chunk, the items in order: frames and Dropped)."""
    items = []
    while buf:
        used, item = decode(buf)
        if item is not None:
            items.append(item)
        if used == 0:
            break
        buf = buf[used:]
    return buf, items
