"""Malleated and malformed forms of a genuine consent token, shared by the verifier tests and
the node and coordinator gRPC tests (issue 14, findings 3 and 4)."""

from __future__ import annotations

import json
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.consent.statuslist import b64url, b64url_decode

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _nonzero_pad_bits(segment: str) -> str:
    """The same bytes under a lenient decoder, with the unused low bits of the last
    character set (86 characters for 64 bytes: 4 unused bits)."""
    rem = len(segment) % 4
    assert rem in (2, 3), "this segment has no pad bits"
    i = ALPHABET.index(segment[-1])
    return segment[:-1] + ALPHABET[i | 1]


def _plus_slash(token: str) -> str:
    return token.replace("-", "+").replace("_", "/")


def malleated(token: str) -> dict[str, str]:
    """Other string forms of ``token`` that a lenient base64 decoder maps to the same bytes."""
    h, p, s = token.split(".")
    out = {
        "padding": f"{h}.{p}.{s}==",
        "trailing_data_after_padding": f"{h}.{p}.{s}==AAAA",
        "space_in_signature": f"{h}.{p}.{s[:20]} {s[20:]}",
        "newline_at_end": f"{h}.{p}.{s}\n",
        "non_ascii_in_signature": f"{h}.{p}.{s[:20]}é{s[20:]}",
        "nonzero_pad_bits": f"{h}.{p}.{_nonzero_pad_bits(s)}",
        "padded_header": f"{h}{'=' * (-len(h) % 4) or '=='}.{p}.{s}",
    }
    if "-" in token or "_" in token:
        out["plus_slash_instead_of_minus_underscore"] = _plus_slash(token)
    return out


def _sign(h: str, p: str, key: Ed25519PrivateKey) -> str:
    return f"{h}.{p}.{b64url(key.sign(f'{h}.{p}'.encode()))}"


def malformed(token: str, key: Ed25519PrivateKey) -> dict[str, str]:
    """Headers and payloads of the wrong shape, each signed with the genuine key (an attacker
    holding no key gets the same answer: the header is refused before any key is used)."""
    h, p, _ = token.split(".")
    header = json.loads(b64url_decode(h))
    claims = json.loads(b64url_decode(p))

    def with_header(change: Callable[[dict[str, object]], object]) -> str:
        hh = dict(header)
        change(hh)
        return _sign(b64url(json.dumps(hh).encode()), p, key)

    def raw_header(text: bytes) -> str:
        return _sign(b64url(text), p, key)

    def deep(n: int) -> bytes:
        return b'{"alg":"EdDSA","x":' + b"[" * n + b"]" * n + b"}"

    deep_claims = dict(claims, extra={"a": [[[[[[[[[[[[{"b": 1}]]]]]]]]]]]]})
    return {
        "alg_array": with_header(lambda x: x.update(alg=["EdDSA"])),
        "alg_object": with_header(lambda x: x.update(alg={"EdDSA": 1})),
        "typ_number": with_header(lambda x: x.update(typ=7)),
        "crit_object": with_header(lambda x: x.update(crit={"b64": False})),
        "crit_list_of_objects": with_header(lambda x: x.update(crit=[{"b64": False}])),
        "header_nested_50000_deep": raw_header(deep(50_000)),
        "header_nested_300_deep": raw_header(deep(300)),
        "header_not_utf8": raw_header(b'{"alg":"EdDSA","typ":"consent+jwt","kid":"\xff\xfe"}'),
        "header_utf16": raw_header(json.dumps(header).encode("utf-16")),
        "header_lone_surrogate": raw_header(b'{"alg":"EdDSA","x":"\\ud800"}'),
        "header_nan": raw_header(b'{"alg":"EdDSA","x":NaN}'),
        "header_huge": raw_header(json.dumps(dict(header, x="a" * 5000)).encode()),
        "payload_nested_too_deep": _sign(h, b64url(json.dumps(deep_claims).encode()), key),
        "payload_not_utf8": _sign(h, b64url(b'{"sub":"\xff"}'), key),
        "signature_too_short": f"{h}.{p}.{b64url(b'x' * 32)}",
    }


MALLEATED_FORMS = sorted(malleated("a-b.c_d.AAAAAA"))
MALFORMED_CASES = sorted(malformed("e30.e30.AA", Ed25519PrivateKey.generate()))
