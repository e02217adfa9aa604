"""Ledger entries: the envelope, its canonical bytes (RFC 8785) and strict parsing.

An entry is a JSON object with exactly these members::

    {"actor": ORG, "chain": HEX(prev leaf hash), "index": N, "kind": KIND,
     "payload": {...}, "subject": USCC | null, "time": RFC3339, "v": 1}

and its bytes are the RFC 8785 (JCS) canonical form, so anyone recomputes the
same leaf hash, SHA-256(0x00 ‖ bytes). ``chain`` is the leaf hash of the
previous entry (32 zero bytes for entry 0): a stream of entries can be checked
without the tree. Member names were chosen so that JCS ordering puts the fixed
fields (actor, chain, index, kind) first, which lets auditors check the chain
at hashing speed (:data:`PREFIX_RE`).

Entries carry references and hashes only — never feature values or other
personal data; ``payload`` is limited in size and must be a JSON object.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fedcredit.common import uscc
from fedcredit.common.canonical import canonical_json
from fedcredit.ledger.errors import EntryMalformed, InvalidEntry
from fedcredit.ledger.merkle import leaf_hash

VERSION = 1
ZERO_HASH = bytes(32)
MAX_SAFE_INT = 2**53 - 1

KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
ACTOR_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
# The JCS form starts with the fixed members; an auditor can read actor, chain,
# index and kind with this anchored pattern (sound: the character classes admit
# no quote or backslash, so the match cannot straddle members).
PREFIX_RE = re.compile(
    rb'\{"actor":"([a-z0-9][a-z0-9._-]{0,127})","chain":"([0-9a-f]{64})",'
    rb'"index":(0|[1-9][0-9]{0,15}),"kind":"([a-z][a-z0-9_]{0,63})","payload":\{'
)
KEYS = frozenset({"actor", "chain", "index", "kind", "payload", "subject", "time", "v"})

_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def _jcs_fast_ok(value: Any) -> bool:
    """True if ``json.dumps(sort_keys=True)`` yields exactly the RFC 8785 bytes for ``value``.

    That holds for str/bool/None, integers within ±(2^53−1), lists and dicts
    whose keys sort the same by code point as by UTF-16 code unit (no key
    character at or above U+E000). Floats and anything else go to the rfc8785
    package. Lone surrogates make the UTF-8 encoding fail and fall back too.
    """
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return -MAX_SAFE_INT <= value <= MAX_SAFE_INT
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or (not k.isascii() and max(k) >= "\ue000"):
                return False
            if not _jcs_fast_ok(v):
                return False
        return True
    if t is list:
        return all(_jcs_fast_ok(v) for v in value)
    return False


def canonical(value: Any) -> bytes:
    """RFC 8785 canonical bytes, using the C JSON encoder when it provably agrees."""
    if _jcs_fast_ok(value):
        try:
            return _dumps(value).encode("utf-8")
        except UnicodeEncodeError:
            pass
    return canonical_json(value)


def canonical_each(template: Mapping[str, Any], key: str, values: Sequence[Any]) -> list[bytes]:
    """RFC 8785 bytes of ``{**template, key: v}`` for every ``v`` of ``values``.

    The template is encoded once with a random placeholder as ``key``'s value and each
    value on its own, spliced in where the placeholder was. Sound because in JCS a
    member's value is encoded the same whatever surrounds it, and the members and their
    order are the same for every value. (A batch of disclosure entries differs only in
    the consent ``jti``.) Tested against :func:`canonical` of each whole object.
    """
    slot = secrets.token_hex(16)
    whole = canonical({**template, key: slot})
    mark = canonical(slot)
    if whole.count(mark) != 1:  # the template happens to hold the placeholder's text
        return [canonical({**template, key: v}) for v in values]
    head, tail = whole.split(mark)
    return [head + canonical(v) + tail for v in values]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r} (RFC 8785 §3.1 requires unique names)")
        out[key] = value
    return out


def _parse_int(text: str) -> int | float:
    # JCS numbers are IEEE 754 doubles: a float such as 2^53 is written with
    # integer digits, so integers beyond the exact range read back as floats.
    n = int(text)
    return n if -MAX_SAFE_INT <= n <= MAX_SAFE_INT else float(n)


def _jcs_normalise(value: Any) -> Any:
    """Integers beyond 2^53 read back from JCS text stand for doubles (RFC 8785 §3.2.2.3)."""
    t = type(value)
    if t is int and not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        return float(value)
    if t is dict:
        return {k: _jcs_normalise(v) for k, v in value.items()}
    if t is list:
        return [_jcs_normalise(v) for v in value]
    return value


def _decode_bytes(data: bytes) -> Any:
    return _json_decoder.decode(data.decode("utf-8"))


_json_decoder = json.JSONDecoder()
_decode = _decode_bytes


def _parse(data: bytes, *, check_duplicates: bool = True) -> Any:
    if check_duplicates:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_int=_parse_int)
    return json.loads(data, parse_int=_parse_int)


def utc_now() -> str:
    return format_time(datetime.now(UTC))


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not KIND_RE.fullmatch(kind):
        raise InvalidEntry(
            f"entry kind must be lower_snake_case ASCII of at most 64 characters; got {kind!r}",
            field="kind",
        )
    return kind


def check_actor(actor: str) -> str:
    if not isinstance(actor, str) or not ACTOR_RE.fullmatch(actor):
        raise InvalidEntry(
            f"the actor must be an organisation id (lowercase letters, digits, '.', '_', '-'); got {actor!r}",
            field="actor",
        )
    return actor


def check_subject(subject: str | None) -> str | None:
    """None or a valid unified social credit code (raises common.uscc.InvalidUSCC)."""
    if subject is None:
        return None
    return uscc.validate(subject)


def check_payload(payload: Mapping[str, Any], max_bytes: int) -> tuple[dict[str, Any], bytes]:
    """The payload as a plain dict plus its canonical bytes; refuses non-objects and big ones."""
    _check_object(payload)
    obj = dict(payload)
    return obj, canonical_payload(obj, max_bytes)


def _check_object(payload: Any) -> None:
    if not isinstance(payload, Mapping):
        raise InvalidEntry(
            f"the payload must be a JSON object; got {type(payload).__name__}", field="payload"
        )


def _not_canonical(exc: Exception) -> InvalidEntry:
    return InvalidEntry(
        f"the payload is not representable as canonical JSON (RFC 8785): {exc}", field="payload"
    )


def canonical_payload(obj: dict[str, Any], max_bytes: int) -> bytes:
    """The canonical bytes of a payload dict; refuses values JCS cannot hold and big ones."""
    try:
        data = canonical(obj)
    except Exception as exc:  # rfc8785 raises several types for non-JSON values
        raise _not_canonical(exc) from exc
    return check_size(data, max_bytes)


def canonical_payloads(
    template: Mapping[str, Any], key: str, values: Sequence[Any], max_bytes: int
) -> list[bytes]:
    """:func:`canonical_payload` of ``{**template, key: v}`` for every ``v`` (see
    :func:`canonical_each`)."""
    _check_object(template)
    try:
        datas = canonical_each(template, key, values)
    except Exception as exc:
        raise _not_canonical(exc) from exc
    return [check_size(d, max_bytes) for d in datas]


def check_size(data: bytes, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise InvalidEntry(
            f"the payload is {len(data)} bytes of canonical JSON; at most {max_bytes} are allowed "
            "(entries hold hashes and references, not data)",
            field="payload",
        )
    return data


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    time: str
    kind: str
    actor: str
    subject: str | None
    payload: dict[str, Any]
    chain: bytes  # leaf hash of the previous entry

    def to_obj(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "chain": self.chain.hex(),
            "index": self.index,
            "kind": self.kind,
            "payload": self.payload,
            "subject": self.subject,
            "time": self.time,
            "v": VERSION,
        }

    def encode(self) -> bytes:
        return canonical(self.to_obj())

    @staticmethod
    def parse(data: bytes) -> Entry:
        """Strictly parse canonical entry bytes; raises EntryMalformed naming what is wrong."""
        try:
            # Duplicate members need no separate check: they would vanish from
            # the parsed object, so the canonical re-encoding below would differ.
            obj = _decode(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EntryMalformed(f"the entry is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise EntryMalformed(f"the entry must be a JSON object; got {type(obj).__name__}")
        if obj.keys() != KEYS:
            raise EntryMalformed(
                f"the entry must have exactly the members {sorted(KEYS)}; got {sorted(obj)}"
            )
        if obj["v"] != VERSION or type(obj["v"]) is not int:
            raise EntryMalformed(f"entry format version must be {VERSION}; got {obj['v']!r}")
        index = obj["index"]
        if type(index) is not int or index < 0:
            raise EntryMalformed(f"entry index must be a non-negative integer; got {index!r}")
        chain = obj["chain"]
        if not isinstance(chain, str) or not re.fullmatch(r"[0-9a-f]{64}", chain):
            raise EntryMalformed(f"entry chain must be 64 lowercase hex digits; got {chain!r}")
        t = obj["time"]
        if not isinstance(t, str) or not TIME_RE.fullmatch(t):
            raise EntryMalformed(
                f"entry time must look like 2026-01-31T12:00:00.000000Z; got {t!r}"
            )
        if not isinstance(obj["payload"], dict):
            raise EntryMalformed("entry payload must be a JSON object")
        try:
            check_kind(obj["kind"])
            check_actor(obj["actor"])
            check_subject(obj["subject"])
        except Exception as exc:
            raise EntryMalformed(f"entry {index}: {getattr(exc, 'message', exc)}") from exc
        try:
            # The envelope members were validated above; only the payload can
            # hold values on which the C encoder and RFC 8785 disagree.
            if _jcs_fast_ok(obj["payload"]):
                again = _dumps(obj).encode("utf-8")
            else:
                obj["payload"] = _jcs_normalise(obj["payload"])
                again = canonical_json(obj)
        except Exception as exc:
            raise EntryMalformed(
                f"entry {index} holds a value RFC 8785 cannot represent: {exc}"
            ) from exc
        if again != data:
            raise EntryMalformed(f"entry {index} is not in RFC 8785 canonical form")
        return Entry(
            index=index,
            time=t,
            kind=obj["kind"],
            actor=obj["actor"],
            subject=obj["subject"],
            payload=obj["payload"],
            chain=bytes.fromhex(chain),
        )

    def leaf_hash(self) -> bytes:
        return leaf_hash(self.encode())
