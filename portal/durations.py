"""Durations as people type them: ``90s``, ``30m``, ``12h``, ``7d`` or plain seconds."""

from __future__ import annotations

import re

from fedcredit.common.errors import InvalidArgument

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``90s``, ``30m``, ``12h``, ``7d`` or plain seconds, as seconds."""
    m = re.fullmatch(r"\s*(\d{1,9})\s*([smhd]?)\s*", text)
    if m is None:
        raise InvalidArgument(f"expected a duration such as 30m, 12h or 7d, got {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]
