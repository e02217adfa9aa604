"""Errors of the world generator (one class per failure)."""

from __future__ import annotations

from fedcredit.common.errors import InvalidArgument, NotFound


class InvalidWorldParameter(InvalidArgument):
    """A generation parameter is out of range; the message says expected vs got."""

    reason = "INVALID_WORLD_PARAMETER"


class NotAWorld(NotFound):
    """A directory is not a generated world (no or wrong manifest.json)."""

    reason = "NOT_A_WORLD"
