"""common.canonical.number writes exactly what RFC 8785 (the rfc8785 library) writes."""

from __future__ import annotations

import math

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcredit.common.canonical import number

EDGES = [0.0, -0.0, 1.0, -1.0, 0.1, 1e-7, 1e-6, 9.999999e-7, 1.5e-7, 1e21, 1e20, 9.99e20,
         1.5e16, 1e16, 0.0001, 1e-5, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
         100.0, 1234.5, 0.000123, 123456789.125, -2.5e-300]  # fmt: skip


@pytest.mark.parametrize("v", EDGES)
def test_edges(v: float) -> None:
    assert number(v) == rfc8785.dumps(v).decode()


@settings(max_examples=3000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float(v: float) -> None:
    assert number(v) == rfc8785.dumps(v).decode()


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_integral_floats(i: int) -> None:
    assert number(float(i)) == rfc8785.dumps(float(i)).decode()


@pytest.mark.parametrize("v", [math.inf, -math.inf, math.nan])
def test_non_finite_is_refused(v: float) -> None:
    with pytest.raises(ValueError, match="no JSON form"):
        number(v)
