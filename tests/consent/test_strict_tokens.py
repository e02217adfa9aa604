"""Strict tokens (issue 14, findings 3 and 4): one token has exactly one string form, and
every malformed header or payload is CONSENT_TOKEN_MALFORMED — never a crash, never a
traceback in the log."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from fedcredit.common.errors import FedcreditError
from fedcredit.consent.statuslist import b64url, b64url_decode
from tests.consent.conftest import World
from tests.consent.malformed import MALFORMED_CASES, MALLEATED_FORMS, malformed, malleated
from tests.consent.test_attack_matrix import Matrix


@pytest.fixture
def m(sqlite_world: World) -> Matrix:
    m = Matrix(sqlite_world)
    # Make sure the '+'/'/' form exists: re-sign until a '-' or '_' appears (1 - (62/64)^n).
    n = 0

    def new_jti(c: dict[str, Any]) -> None:
        c["jti"] = f"{c['jti']}{n}"

    while "-" not in m.token and "_" not in m.token:
        n += 1
        m.token = m.forge(claims=new_jti)
    return m


def _refused_malformed(m: Matrix, token: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(FedcreditError) as info:
        m.verify(token)
    assert info.value.reason == "CONSENT_TOKEN_MALFORMED", info.value
    assert info.value.message and len(info.value.message) < 400
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_the_genuine_form_verifies(m: Matrix) -> None:
    assert m.verify(m.token).enterprise == m.w.ent


@pytest.mark.parametrize("form", MALLEATED_FORMS)
def test_every_other_string_form_is_refused(
    m: Matrix, form: str, caplog: pytest.LogCaptureFixture
) -> None:
    variant = malleated(m.token)[form]
    assert variant != m.token
    _refused_malformed(m, variant, caplog)
    assert m.verify(m.token).enterprise == m.w.ent  # the genuine form still verifies


@pytest.mark.parametrize("case", MALFORMED_CASES)
def test_every_malformed_header_or_payload_is_refused(
    m: Matrix, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    _refused_malformed(m, malformed(m.token, m.key)[case], caplog)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("", True),
        ("AA", True),
        ("AB", False),  # pad bits set
        ("AAA", True),
        ("AAB", False),
        ("AAAA", True),
        ("A", False),  # no encoding has this length
        ("AA==", False),
        ("A+AA", False),
        ("A/AA", False),
        ("AA\n", False),
        ("AA AA", False),
    ],
)
def test_base64url_is_strict(text: str, ok: bool) -> None:
    if ok:
        assert b64url(b64url_decode(text)) == text
    else:
        with pytest.raises(ValueError, match="expected"):
            b64url_decode(text)
