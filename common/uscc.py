"""Unified social credit codes (统一社会信用代码), GB 32100-2015.

An 18-character code::

    9 1 371002 MA3C4D5E6 X
    | | |      |         `- position 18: check character over positions 1-17
    | | |      `- positions 9-17: organisation code, GB 11714 (8 characters + its own check)
    | | `- positions 3-8: administrative division code (GB/T 2260)
    | `- position 2: organisation category code (depends on the authority)
    `- position 1: registration authority code

Character set: digits and the capital letters except I, O, Z, S and V
(31 characters, values 0-30 in this order). The final check character is
``C18 = 31 - (sum(value_i * W_i) mod 31)`` with ``W_i = 3^(i-1) mod 31``, a
result of 31 written as ``0``. The organisation code's check character uses
GB 11714: weights 3, 7, 9, 10, 5, 8, 4, 2 on values 0-35 (digits, then A=10
to Z=35), ``C9 = 11 - (sum mod 11)`` where 10 is written ``X`` and 11 ``0``.
"""

from __future__ import annotations

import functools
import operator
import random
import re
from collections.abc import Sequence

from fedcredit.common.errors import InvalidArgument

CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
VALUES = {c: i for i, c in enumerate(CHARSET)}
WEIGHTS = tuple(pow(3, i, 31) for i in range(17))  # W_i = 3^(i-1) mod 31, i = 1..17
ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)

# Registration authority -> allowed organisation category codes (GB 32100-2015, Table 1).
CATEGORIES: dict[str, str] = {
    "1": "1239",  # institutional establishment: organs, public institutions, mass organisations, other
    "2": "19",  # foreign affairs
    "3": "12345",  # justice administration
    "4": "19",  # culture
    "5": "1239",  # civil affairs: social organisations, private non-enterprise units, foundations
    "6": "129",  # tourism
    "7": "129",  # religious affairs
    "8": "19",  # trade unions
    "9": "123",  # market regulation: enterprises, individual businesses, farmers' cooperatives
    "A": "19",  # central military commission reform office
    "N": "1239",  # agriculture
    "Y": "1",  # other
}

# First two digits of GB/T 2260 division codes in use (provinces and equivalents).
PROVINCES = frozenset(
    [
        "11",
        "12",
        "13",
        "14",
        "15",
        "21",
        "22",
        "23",
        "31",
        "32",
        "33",
        "34",
        "35",
        "36",
        "37",
        "41",
        "42",
        "43",
        "44",
        "45",
        "46",
        "50",
        "51",
        "52",
        "53",
        "54",
        "61",
        "62",
        "63",
        "64",
        "65",
        "71",
        "81",
        "82",
    ]
)

# Weihai (威海市, 3710xx) and its districts: the synthetic city's divisions.
WEIHAI_DIVISIONS: tuple[str, ...] = (
    "371002",
    "371003",
    "371082",
    "371083",
    "371071",
    "371072",
    "371073",
)


class InvalidUSCC(InvalidArgument):
    """A string is not a valid unified social credit code; the message says exactly why."""

    reason = "INVALID_USCC"


def _org_value(ch: str) -> int:
    return int(ch) if ch.isdigit() else ord(ch) - ord("A") + 10


# What _validate uses once a code's characters are known to be in CHARSET: C-level loops
# (map over a dict lookup and the weights) instead of a generator per character. A
# batch's first sight of 120,000 codes at 13 services paid ~6 us per code each.
_CODE_CHARS = re.compile(f"[{CHARSET}]{{18}}")
_ORG_VALUES = {c: _org_value(c) for c in CHARSET}


def _fast_org_check(body: str) -> str:
    total = sum(map(operator.mul, map(_ORG_VALUES.__getitem__, body), ORG_WEIGHTS))
    c9 = 11 - total % 11
    return "X" if c9 == 10 else "0" if c9 == 11 else str(c9)


def _fast_check(first17: str) -> str:
    return CHARSET[
        (31 - sum(map(operator.mul, map(VALUES.__getitem__, first17), WEIGHTS)) % 31) % 31
    ]


def org_check_char(body: str) -> str:
    """GB 11714 check character for the 8-character organisation code body."""
    total = sum(_org_value(c) * w for c, w in zip(body, ORG_WEIGHTS, strict=True))
    c9 = 11 - total % 11
    return "X" if c9 == 10 else "0" if c9 == 11 else str(c9)


def check_char(first17: str) -> str:
    """GB 32100-2015 check character for the first 17 characters."""
    total = sum(VALUES[c] * w for c, w in zip(first17, WEIGHTS, strict=True))
    return CHARSET[(31 - total % 31) % 31]


def validate(code: str) -> str:
    """Return ``code`` if it is a valid USCC, else raise :class:`InvalidUSCC` naming the problem."""
    if not isinstance(code, str):
        raise InvalidUSCC(f"a credit code must be a string, got {type(code).__name__}")
    return _validate(code)


# Valid codes are remembered (exceptions are not cached, so an invalid code is checked
# in full every time): one request validates the same code at the node's door and again
# as the subject of its disclosure-log entry, and a portfolio is scored again and again.
@functools.lru_cache(maxsize=1 << 18)
def _validate(code: str) -> str:
    if len(code) != 18:
        raise InvalidUSCC(
            f"credit code {code!r} has {len(code)} characters; expected 18", code=code, position=0
        )
    for i, ch in enumerate(code, start=1) if _CODE_CHARS.fullmatch(code) is None else ():
        if ch not in VALUES:
            hint = " (lower-case letters are not allowed)" if ch.upper() in VALUES else ""
            raise InvalidUSCC(
                f"credit code {code!r}: character {i} is {ch!r}, which is not in the code's character set "
                f"(digits and capital letters except I, O, Z, S, V){hint}",
                code=code,
                position=i,
            )
    authority, category = code[0], code[1]
    if authority not in CATEGORIES:
        raise InvalidUSCC(
            f"credit code {code!r}: character 1 (registration authority) is {authority!r}; "
            f"expected one of {', '.join(CATEGORIES)}",
            code=code,
            position=1,
        )
    if category not in CATEGORIES[authority]:
        raise InvalidUSCC(
            f"credit code {code!r}: character 2 (organisation category) is {category!r}, "
            f"not a category of authority {authority!r}; expected one of {', '.join(CATEGORIES[authority])}",
            code=code,
            position=2,
        )
    division = code[2:8]
    if not division.isdigit() or division[:2] not in PROVINCES:
        raise InvalidUSCC(
            f"credit code {code!r}: characters 3-8 ({division!r}) are not an administrative division code "
            "(six digits starting with a province code such as 37)",
            code=code,
            position=3,
        )
    org_body, org_check = code[8:16], code[16]
    expected_org = _fast_org_check(org_body)
    if org_check != expected_org:
        raise InvalidUSCC(
            f"credit code {code!r}: character 17 (organisation code check, GB 11714) is {org_check!r}; "
            f"expected {expected_org!r} for organisation code body {org_body!r}",
            code=code,
            position=17,
        )
    expected = _fast_check(code[:17])
    if code[17] != expected:
        raise InvalidUSCC(
            f"credit code {code!r}: character 18 (check character) is {code[17]!r}; expected {expected!r}",
            code=code,
            position=18,
        )
    return code


def is_valid(code: str) -> bool:
    try:
        validate(code)
    except InvalidUSCC:
        return False
    return True


def generate(
    rng: random.Random,
    *,
    divisions: Sequence[str] = WEIHAI_DIVISIONS,
    authority: str = "9",
    category: str = "1",
) -> str:
    """A random valid code (an enterprise registered with market regulation by default)."""
    division = rng.choice(list(divisions))
    # Organisation code bodies avoid the letters GB 32100 excludes, and in
    # practice start with "MA" for codes issued after 2015.
    body = "MA" + "".join(rng.choice(CHARSET) for _ in range(6))
    org = body + org_check_char(body)
    first17 = authority + category + division + org
    return first17 + check_char(first17)
