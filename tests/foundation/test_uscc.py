"""GB 32100-2015 credit codes: known codes, generated codes, every single-character change."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcredit.common import uscc

# Published codes of real enterprises (printed on their business licences).
KNOWN_VALID = ["91350100M000100Y43", "91110000802100433B"]


@pytest.mark.parametrize("code", KNOWN_VALID)
def test_known_codes_validate(code: str) -> None:
    assert uscc.validate(code) == code


def test_weights_are_powers_of_three_mod_31() -> None:
    assert uscc.WEIGHTS == (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


@pytest.mark.parametrize(
    ("code", "position", "fragment"),
    [
        ("9135010M000100Y43", 0, "has 17 characters"),
        ("91350100M000100Y4I", 18, "not in the code's character set"),
        ("91350100m000100Y43", 9, "lower-case"),
        ("B1350100M000100Y43", 1, "registration authority"),
        ("94350100M000100Y43", 2, "organisation category"),
        ("91990100M000100Y43", 3, "administrative division"),
        ("91350100M000100X43", 17, "organisation code check"),
        ("91350100M000100Y44", 18, "check character"),
    ],
)
def test_each_problem_is_named(code: str, position: int, fragment: str) -> None:
    with pytest.raises(uscc.InvalidUSCC) as info:
        uscc.validate(code)
    assert fragment in info.value.message
    assert info.value.reason == "INVALID_USCC"
    if position:
        assert info.value.metadata["position"] == str(position)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_generated_codes_validate(seed: int) -> None:
    code = uscc.generate(random.Random(seed))
    assert len(code) == 18
    assert uscc.is_valid(code)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32),
    st.integers(min_value=0, max_value=17),
    st.sampled_from([*uscc.CHARSET, "I", "O", "Z", "S", "V", "a", "-", " "]),
)
def test_every_single_character_change_is_rejected(seed: int, pos: int, ch: str) -> None:
    code = uscc.generate(random.Random(seed))
    if code[pos] == ch:
        return  # not a change
    changed = code[:pos] + ch + code[pos + 1 :]
    assert not uscc.is_valid(changed), f"{changed} (from {code}, position {pos + 1}) was accepted"


def test_every_single_character_change_exhaustively_for_one_code() -> None:
    code = uscc.generate(random.Random(7))
    for pos in range(18):
        for ch in uscc.CHARSET:
            if ch != code[pos]:
                assert not uscc.is_valid(code[:pos] + ch + code[pos + 1 :])
