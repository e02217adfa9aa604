"""Entry bytes are RFC 8785 canonical; strict parsing refuses anything else."""

from __future__ import annotations

import random

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcredit.common import uscc
from fedcredit.common.uscc import InvalidUSCC
from fedcredit.ledger.entry import (
    PREFIX_RE,
    ZERO_HASH,
    Entry,
    _parse,
    canonical,
    canonical_each,
    canonical_payloads,
    check_payload,
)
from fedcredit.ledger.errors import EntryMalformed, InvalidEntry
from fedcredit.ledger.log import _entry_bytes

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=250, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_canonical_equals_rfc8785(obj: dict[str, object]) -> None:
    try:
        want = rfc8785.dumps(obj)  # type: ignore[arg-type]
    except Exception:  # lone surrogates etc.: both must refuse
        with pytest.raises(Exception):  # noqa: B017
            canonical(obj)
        return
    assert canonical(obj) == want


def test_canonical_key_order_is_utf16() -> None:
    # U+E000 sorts after U+10000 by code point but before it in UTF-16 code units.
    obj = {"\ue000": 1, "\U00010000": 2}
    assert canonical(obj) == rfc8785.dumps(obj)
    assert canonical(obj).index("\U00010000".encode()) < canonical(obj).index("\ue000".encode())


CODE = uscc.generate(random.Random(7))


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(0, 2**40),
    kind=st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
    actor=st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True),
    subject=st.sampled_from([None, CODE]),
    payload=st.dictionaries(st.text(max_size=5), json_values, max_size=4),
    chain=st.binary(min_size=32, max_size=32),
)
def test_assembled_bytes_equal_entry_encoding(
    index: int, kind: str, actor: str, subject: str | None, payload: dict[str, object], chain: bytes
) -> None:
    try:
        _, pbytes = check_payload(payload, 1 << 20)
    except InvalidEntry:
        return
    t = "2026-11-28T10:00:00.123456Z"
    e = Entry(index, t, kind, actor, subject, _parse(pbytes), chain)
    data = _entry_bytes(index, t, kind, actor, subject, pbytes, chain)
    assert data == e.encode() == rfc8785.dumps(e.to_obj())
    assert Entry.parse(data) == e
    m = PREFIX_RE.match(data)
    assert m is not None and m.group(2).decode() == chain.hex() and int(m.group(3)) == index


def _good() -> bytes:
    return Entry(
        3, "2026-11-28T10:00:00.000001Z", "score_access", "coordinator", CODE, {"a": 1}, ZERO_HASH
    ).encode()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],  # not JSON
        lambda b: b.replace(b'"v":1', b'"v":2'),  # version
        lambda b: b.replace(b'"index":3', b'"index":-3'),
        lambda b: b.replace(b'"index":3', b'"index":"3"'),
        lambda b: b.replace(b'"kind":"score_access"', b'"kind":"Score"'),
        lambda b: b.replace(b'"actor":"coordinator"', b'"actor":"Coord inator"'),
        lambda b: b.replace(
            CODE.encode(), CODE[:-1].encode() + (b"0" if CODE[-1] != "0" else b"1")
        ),
        lambda b: b.replace(b'"time":"2026-11-28T10:00:00.000001Z"', b'"time":"yesterday"'),
        lambda b: b.replace(b'"payload":{"a":1}', b'"payload":[1]'),
        lambda b: b.replace(b'{"actor"', b'{ "actor"'),  # not canonical
        lambda b: b.replace(b'"a":1', b'"a":1.0'),  # not canonical number
        lambda b: b.replace(b',"v":1}', b',"v":1,"x":0}'),  # extra member
        lambda b: b.replace(b'"chain":"00', b'"chain":"0G'),
        lambda b: b.replace(b'"payload":{"a":1}', b'"payload":{"a":1,"a":1}'),  # duplicate key
        lambda b: b"[" + b + b"]",
    ],
)
def test_parse_refuses(mutate: object) -> None:
    bad = mutate(_good())  # type: ignore[operator]
    assert bad != _good()
    with pytest.raises(EntryMalformed):
        Entry.parse(bad)


def test_payload_rules() -> None:
    with pytest.raises(InvalidEntry):
        check_payload([1, 2], 100)  # type: ignore[arg-type]
    with pytest.raises(InvalidEntry) as e:
        check_payload({"x": "y" * 200}, 100)
    assert "at most 100" in e.value.message
    with pytest.raises(InvalidEntry):
        check_payload({"x": float("nan")}, 100)
    with pytest.raises(InvalidEntry):
        check_payload({"x": 2**60}, 100)
    with pytest.raises(InvalidEntry):
        check_payload({"x": object()}, 100)


def test_bad_subject_is_invalid_uscc() -> None:
    from fedcredit.ledger.entry import check_subject

    with pytest.raises(InvalidUSCC):
        check_subject("not-a-credit-code")


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), json_values, max_size=6),
    st.text(max_size=8),
    st.lists(json_values, max_size=5),
)
def test_canonical_each_equals_each_whole_object(
    template: dict[str, object], key: str, values: list[object]
) -> None:
    try:
        want = [rfc8785.dumps({**template, key: v}) for v in values]  # type: ignore[dict-item]
    except Exception:  # a value JCS cannot hold: refused as a whole
        with pytest.raises(Exception):  # noqa: B017
            canonical_each(template, key, values)
        return
    assert canonical_each(template, key, values) == want


def test_canonical_each_when_the_template_holds_the_placeholder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fedcredit.ledger.entry as entry

    monkeypatch.setattr(entry.secrets, "token_hex", lambda _n: "clash")
    template = {"a": "clash", "b": ["clash"]}
    assert canonical_each(template, "jti", ["x", "clash"]) == [
        canonical({**template, "jti": "x"}),
        canonical({**template, "jti": "clash"}),
    ]


def test_canonical_payloads_refuse_big_and_non_objects() -> None:
    assert canonical_payloads({"a": 1}, "j", ["x"], 100) == [b'{"a":1,"j":"x"}']
    with pytest.raises(InvalidEntry, match="at most 20"):
        canonical_payloads({"a": 1}, "j", ["x", "y" * 30], 20)
    with pytest.raises(InvalidEntry, match="JSON object"):
        canonical_payloads(["a"], "j", ["x"], 100)  # type: ignore[arg-type]
