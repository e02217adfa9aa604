"""How a bank's sums travel in a reply: one ConfigRecord of ``.npy`` bytes per reply.

Flower 1.42 stores and sends every record, and every ``Array`` in an ``ArrayRecord``
with its chunk, as a separate object, each its own request (signed, from a SuperNode)
to push and its own request to pull. A `hist` reply as an ``ArrayRecord`` of two
arrays is seven objects; the same arrays as ``.npy`` bytes in one ``ConfigRecord``
are three (message, record dict, record), like the empty reply's two plus one. On a
local deployment those per-object requests, not the few kilobytes of sums, set the
round's pace (bench/bench_training_rounds.py measures both).

``.npy`` (NumPy's own format, read with ``allow_pickle=False``) keeps dtype and
shape; :func:`unpack` accepts only the integer and float arrays the banks send.
"""

from __future__ import annotations

import io
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedcredit.common.errors import FailedPrecondition

RECORD = "sums"


class SumsMalformed(FailedPrecondition):
    """A bank's reply does not carry the sums asked for as integer or float .npy arrays."""

    reason = "TRAINING_SUMS_MALFORMED"


_KINDS = ("i", "u", "f")


def encode(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode(blob: bytes) -> np.ndarray:
    try:
        out = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SumsMalformed(f"expected a .npy array in a bank's sums, got: {exc}") from None
    if not isinstance(out, np.ndarray) or out.dtype.kind not in _KINDS:
        raise SumsMalformed(
            f"expected an integer or float array in a bank's sums, got {getattr(out, 'dtype', out)!r}"
        )
    return out


def pack(**arrays: np.ndarray) -> RecordDict:
    """A reply's content: the named arrays under ``sums``."""
    return RecordDict({RECORD: ConfigRecord({k: encode(v) for k, v in arrays.items()})})


def unpack(content: RecordDict, key: str) -> np.ndarray:
    """The array ``key`` of a reply made by :func:`pack`."""
    rec = content.config_records.get(RECORD)
    if rec is None or key not in rec:
        raise SumsMalformed(f"expected {key!r} in a bank's sums, got {sorted(rec or {})}")
    value: Any = rec[key]
    if not isinstance(value, bytes):
        raise SumsMalformed(
            f"expected bytes for {key!r} in a bank's sums, got {type(value).__name__}"
        )
    return decode(cast(bytes, value))
