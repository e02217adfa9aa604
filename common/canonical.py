"""Canonical JSON (RFC 8785, JSON Canonicalization Scheme).

Ledger entries and anything else that is hashed or signed are serialised
with JCS so that every party computes the same bytes for the same value.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785


def canonical_json(obj: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``obj`` (dicts, lists, str, int, float, bool, None)."""
    return rfc8785.dumps(obj)


def parse_json(data: bytes | str) -> Any:
    """Parse JSON, refusing duplicate object keys (RFC 8785 §3.1 requires unique names)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r} in JSON object")
            out[key] = value
        return out

    return json.loads(data, object_pairs_hook=no_duplicates)
