"""Exact integer sums through Flower's SecAgg+.

Flower's SecAgg+ averages float vectors after clipping them to
``[-clipping_range, clipping_range]`` and quantising them to
``quantization_range`` levels with *stochastic* rounding — lossy by design.
We make it exact: with ``clipping_range = quantization_range / 2`` the
quantiser is the identity on integers, and an integer needs no rounding, so a
vector of small non-negative integers passes through unchanged. Every int64
value (fixed-point gradient sums, counts) is therefore split into base-2**25
"limbs" (with a bias that makes it non-negative) before SecAgg+, and the
server recombines the summed limbs. Each bank's weight (``num_examples``) is 1
and ``max_weight`` 1, so SecAgg+ returns the mean of the limbs over the
surviving banks; multiplying by their number gives the exact sum.

Limits: 2 limbs hold |v| < 2**49 per bank (about 2 million rows per bank at
28 fractional bits); the modulus 2**32 holds the sum of up to 63 banks.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedcredit.common.errors import FailedPrecondition, InvalidArgument

LIMB_BITS = 25
LIMBS = 2
BIAS = 1 << (LIMB_BITS * LIMBS - 1)
QUANTIZATION_RANGE = 1 << (LIMB_BITS + 1)
CLIPPING_RANGE = float(QUANTIZATION_RANGE // 2)
MODULUS_RANGE = 1 << 32
MAX_BANKS = MODULUS_RANGE // QUANTIZATION_RANGE - 1
# Fewest banks SecAgg+ can hide each bank among: the server learns only the sum, and
# with 2 banks each one could subtract its own vector from the sum and read the other's.
MIN_BANKS = 3
WHY_MIN_BANKS = (
    "the server learns only the sum of the banks' histograms, and with 2 banks each bank "
    "could subtract its own from the sum and read the other's"
)

IntArray = npt.NDArray[np.int64]


class ValueTooLargeForSecAgg(InvalidArgument):
    reason = "SECAGG_VALUE_OUT_OF_RANGE"


class TooManyBanksForSecAgg(FailedPrecondition):
    reason = "SECAGG_TOO_MANY_BANKS"


def encode(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """int64 values -> limbs (float64 holding small integers), shape (LIMBS, *values.shape)."""
    v = np.asarray(values, dtype=np.int64)
    if v.size and (v.min() < -BIAS or v.max() >= BIAS):
        raise ValueTooLargeForSecAgg(
            f"a value to aggregate is outside [-2**{LIMB_BITS * LIMBS - 1}, "
            f"2**{LIMB_BITS * LIMBS - 1}); got {int(v.min())}..{int(v.max())}"
        )
    u = v + BIAS  # non-negative
    mask = (1 << LIMB_BITS) - 1
    limbs = np.stack([(u >> (LIMB_BITS * j)) & mask for j in range(LIMBS)])
    return limbs.astype(np.float64)


def decode(mean_limbs: npt.ArrayLike, banks: int) -> IntArray:
    """Summed limbs (given as SecAgg+'s mean over ``banks``) -> exact int64 sums."""
    if banks < 1 or banks > MAX_BANKS:
        raise TooManyBanksForSecAgg(f"expected 1..{MAX_BANKS} banks, got {banks}")
    sums = np.rint(np.asarray(mean_limbs, dtype=np.float64) * banks).astype(np.int64)
    total = np.zeros(sums.shape[1:], dtype=np.int64)
    for j in range(LIMBS):
        total += sums[j] << (LIMB_BITS * j)
    return total - banks * BIAS
