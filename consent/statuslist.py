"""Token Status List (IETF OAuth draft-ietf-oauth-status-list): pure encoding.

Each consent token owns one index in a list of 2-bit statuses. The list is a
byte array where status *i* occupies bits ``2i .. 2i+1`` counted from the
least significant bit of byte ``2i // 8`` (draft §4.1), compressed with
DEFLATE in the ZLIB format (RFC 1950) and base64url-encoded into the ``lst``
member of the ``status_list`` claim of a ``statuslist+jwt``.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass
from typing import Any

BITS = 2
PER_BYTE = 8 // BITS
MASK = (1 << BITS) - 1

# Status values (draft §7.1). 0x03 is application-specific and unused here.
VALID = 0x00
INVALID = 0x01  # revoked (terminal)
SUSPENDED = 0x02  # paused

STATUS_NAMES = {
    VALID: "VALID",
    INVALID: "REVOKED",
    SUSPENDED: "SUSPENDED",
    0x03: "APPLICATION_SPECIFIC",
}

STATUSLIST_TYP = "statuslist+jwt"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# RFC 7515 §2 / RFC 4648 §5 without padding: the alphabet only (see b64url_decode).
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PAD = (b"", b"", b"==", b"=")  # by length mod 4 (1 is refused before)
_B64_INDEX = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}


def b64url_decode(text: str) -> bytes:
    """Strict base64url (RFC 4648 §5, unpadded, RFC 7515 §2): one byte string, one text.

    Refused with ValueError: padding, characters outside the alphabet (``+``, ``/``,
    whitespace, non-ASCII), a length no encoding produces, and a final character whose
    unused low bits are not zero (RFC 4648 §3.5 "canonical encoding") — otherwise the same
    signature or payload would have several string forms.
    """
    if not isinstance(text, str):
        raise ValueError("expected unpadded base64url (A-Z a-z 0-9 - _ only)")
    rem = len(text) % 4
    if rem == 1:
        raise ValueError(f"expected a base64url length that is not 1 mod 4, got {len(text)}")
    # The alphabet in C (a regex over a token's payload cost a verifier as much as the
    # decoding): non-ASCII fails to encode; '+', '/' and '=' (standard base64, padding) are
    # refused before the translation would make them valid; binascii's strict mode refuses
    # every other character outside the alphabet (whitespace, '.', '\n', ...).
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("expected unpadded base64url (A-Z a-z 0-9 - _ only)") from None
    if b"+" in raw or b"/" in raw or b"=" in raw:
        raise ValueError("expected unpadded base64url (A-Z a-z 0-9 - _ only)")
    # (a last character outside the alphabet is refused by the strict decoding below)
    if rem and _B64_INDEX.get(text[-1], 0) & (0x0F if rem == 2 else 0x03):
        raise ValueError("expected canonical base64url: the final character has non-zero pad bits")
    try:
        return binascii.a2b_base64(raw.translate(_TO_STANDARD) + _PAD[rem], strict_mode=True)
    except binascii.Error:
        raise ValueError("expected unpadded base64url (A-Z a-z 0-9 - _ only)") from None


class StatusArray:
    """A mutable array of 2-bit statuses that grows on demand."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes | bytearray = b"") -> None:
        self._data = bytearray(data)

    @property
    def capacity(self) -> int:
        return len(self._data) * PER_BYTE

    def get(self, idx: int) -> int:
        byte, slot = divmod(idx, PER_BYTE)
        if idx < 0 or byte >= len(self._data):
            raise IndexError(idx)
        return (self._data[byte] >> (slot * BITS)) & MASK

    def set(self, idx: int, value: int) -> None:
        if idx < 0 or not 0 <= value <= MASK:
            raise ValueError(f"status index {idx} / value {value} out of range")
        byte, slot = divmod(idx, PER_BYTE)
        if byte >= len(self._data):
            # Grow in 4 KiB steps (16384 tokens) so the size leaks little about volume.
            new_len = (byte // 4096 + 1) * 4096
            self._data.extend(b"\x00" * (new_len - len(self._data)))
        shift = slot * BITS
        self._data[byte] = (self._data[byte] & ~(MASK << shift) & 0xFF) | (value << shift)

    def to_bytes(self) -> bytes:
        return bytes(self._data)

    def compressed(self) -> str:
        """The ``lst`` member: base64url(zlib(bytes)) (draft §4.2)."""
        return b64url(zlib.compress(bytes(self._data), 9))

    @classmethod
    def from_compressed(cls, lst: str) -> StatusArray:
        return cls(zlib.decompress(b64url_decode(lst)))


@dataclass(frozen=True, slots=True)
class StatusListPayload:
    """The claims of a status list token that a verifier relies on."""

    uri: str  # the ``sub``: must equal the ``uri`` in the referenced tokens
    iat: int
    exp: int
    ttl: int
    array: StatusArray


def status_list_claims(
    *, uri: str, iat: int, exp: int, ttl: int, array: StatusArray
) -> dict[str, Any]:
    return {
        "sub": uri,
        "iat": iat,
        "exp": exp,
        "ttl": ttl,
        "status_list": {"bits": BITS, "lst": array.compressed()},
    }


def parse_status_list_claims(claims: dict[str, Any]) -> StatusListPayload:
    """Check the shape of verified status-list claims; ValueError says what is wrong."""
    sl = claims.get("status_list")
    if not isinstance(sl, dict):
        raise ValueError("status_list claim missing or not an object")
    if sl.get("bits") != BITS:
        raise ValueError(f"status_list.bits must be {BITS}, got {sl.get('bits')!r}")
    lst = sl.get("lst")
    if not isinstance(lst, str):
        raise ValueError("status_list.lst missing or not a string")
    for name in ("iat", "exp", "ttl"):
        if not isinstance(claims.get(name), int):
            raise ValueError(f"{name} missing or not an integer")
    if not isinstance(claims.get("sub"), str):
        raise ValueError("sub (the list's uri) missing")
    try:
        array = StatusArray.from_compressed(lst)
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"status_list.lst is not base64url ZLIB data: {exc}") from exc
    return StatusListPayload(
        uri=claims["sub"], iat=claims["iat"], exp=claims["exp"], ttl=claims["ttl"], array=array
    )
