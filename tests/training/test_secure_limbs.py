"""Fixed-point limbs survive Flower's SecAgg+ quantisation exactly."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from fedcredit.training.flower import secure


def test_limbs_round_trip_through_secagg_quantisation() -> None:
    rng = np.random.default_rng(0)
    banks = [rng.integers(-(2**48), 2**48, size=1000, dtype=np.int64) for _ in range(5)]
    banks[0][:3] = [-(2**49), 2**49 - 1, 0]  # the extremes of the range
    quantised = [
        quantize([secure.encode(v)], secure.CLIPPING_RANGE, secure.QUANTIZATION_RANGE)[0]
        for v in banks
    ]
    # SecAgg+ sums the quantised vectors mod 2**32, dequantises, removes the
    # (n-1) clipping offsets and divides by the total weight (n banks x weight 1).
    total = np.sum(quantised, axis=0) % secure.MODULUS_RANGE
    deq = dequantize([total], secure.CLIPPING_RANGE, secure.QUANTIZATION_RANGE)[0]
    n = len(banks)
    mean = (deq - (n - 1) * secure.CLIPPING_RANGE) / n
    np.testing.assert_array_equal(secure.decode(mean, n), np.sum(banks, axis=0))


def test_values_outside_the_limb_range_are_refused() -> None:
    with pytest.raises(secure.ValueTooLargeForSecAgg, match="outside"):
        secure.encode(np.array([2**49], dtype=np.int64))
    with pytest.raises(secure.TooManyBanksForSecAgg):
        secure.decode(np.zeros((2, 1)), secure.MAX_BANKS + 1)
