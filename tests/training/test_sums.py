"""A bank's sums on the wire (training/flower/sums.py): one record of .npy bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedcredit.training.flower import sums


def test_sums_round_trip_exactly_in_one_record() -> None:
    hist = np.arange(-50, 46, dtype=np.int64).reshape(4, 8, 3) * (2**40)
    valid = np.array([3.5, -1e300, 0.0])
    content = sums.pack(hist=hist, valid=valid)
    # One record, no ArrayRecord: three objects on the wire with the message itself.
    assert list(content.config_records) == [sums.RECORD] and not content.array_records
    got = sums.unpack(content, "hist")
    assert got.dtype == np.int64 and got.shape == hist.shape and np.array_equal(got, hist)
    assert np.array_equal(sums.unpack(content, "valid"), valid)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (RecordDict(), "expected 'hist' in a bank's sums"),
        (RecordDict({"sums": ConfigRecord({"valid": b""})}), "expected 'hist'"),
        (RecordDict({"sums": ArrayRecord()}), "expected 'hist'"),
        (RecordDict({"sums": ConfigRecord({"hist": "text"})}), "expected bytes for 'hist'"),
        (RecordDict({"sums": ConfigRecord({"hist": b"not npy"})}), "expected a .npy array"),
        (
            RecordDict({"sums": ConfigRecord({"hist": _npy(np.array([{"a": 1}], dtype=object))})}),
            "expected a .npy array",  # pickled objects are never loaded
        ),
        (
            RecordDict({"sums": ConfigRecord({"hist": _npy(np.array(["x"]))})}),
            "expected an integer or float array",
        ),
    ],
)
def test_malformed_sums_are_refused_precisely(content: RecordDict, why: str) -> None:
    with pytest.raises(sums.SumsMalformed, match=why):
        sums.unpack(content, "hist")
