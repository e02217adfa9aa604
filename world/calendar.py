"""Month arithmetic shared by the world generator and the node's feature catalog.

Months are integers ``year * 12 + (month - 1)`` ("month ordinals") internally and
``YYYY-MM`` strings in files; dates are ``YYYY-MM-DD`` strings in files.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def month_ordinal(text: str) -> int:
    """``"2025-12"`` -> 24311. Raises ValueError naming the expected format."""
    try:
        year_s, month_s = text.split("-")[:2]
        year, month = int(year_s), int(month_s)
    except ValueError as exc:
        raise ValueError(f"expected a month as YYYY-MM, got {text!r}") from exc
    if not 1 <= month <= 12 or not 1900 <= year <= 2200:
        raise ValueError(f"expected a month as YYYY-MM, got {text!r}")
    return year * 12 + month - 1


def month_text(ordinal: int) -> str:
    return f"{ordinal // 12:04d}-{ordinal % 12 + 1:02d}"


def month_texts(ordinals: npt.NDArray[np.int64]) -> list[str]:
    """Vectorised ``month_text`` over an array (via a small lookup table)."""
    if len(ordinals) == 0:
        return []
    lo = int(ordinals.min())
    table = [month_text(o) for o in range(lo, int(ordinals.max()) + 1)]
    return [table[o] for o in (ordinals - lo).tolist()]


def date_texts(month_ords: npt.NDArray[np.int64], days: npt.NDArray[np.int64]) -> list[str]:
    """``YYYY-MM-DD`` strings; days are 1..28 so every date exists."""
    months = month_texts(month_ords)
    return [f"{m}-{d:02d}" for m, d in zip(months, days.tolist(), strict=True)]


def parse_month_column(values: list[str] | npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
    """Month ordinals of ``YYYY-MM`` or ``YYYY-MM-DD`` strings (vectorised, validated)."""
    arr = np.asarray(values, dtype="U10")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    chars = arr.view("U1").reshape(arr.size, -1)
    digits = (chars[:, [0, 1, 2, 3, 5, 6]].view(np.uint32) - ord("0")).astype(np.int64)
    if (digits < 0).any() or (digits > 9).any() or (chars[:, 4] != "-").any():
        bad = next(v for v in arr.tolist() if not _looks_like_month(v))
        raise ValueError(f"expected a month as YYYY-MM, got {bad!r}")
    year = digits[:, 0] * 1000 + digits[:, 1] * 100 + digits[:, 2] * 10 + digits[:, 3]
    month = digits[:, 4] * 10 + digits[:, 5]
    if ((month < 1) | (month > 12)).any():
        bad = arr[(month < 1) | (month > 12)][0]
        raise ValueError(f"expected a month as YYYY-MM, got {str(bad)!r}")
    return year * 12 + month - 1


def _looks_like_month(value: str) -> bool:
    try:
        month_ordinal(value)
    except ValueError:
        return False
    return True
