"""Command-line conventions shared by every `fedcredit` command.

Results a person reads are rich tables; ``--json`` prints machine-readable
JSON instead. User errors print ``error: REASON: sentence`` on stderr — no
stack trace — and exit with a code that says what kind of failure it was.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedcredit.common.errors import (
    FedcreditError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    from_rpc_error,
)

console = Console()
# Errors are one line each, whatever the width: no hard wrap when stderr is a file or a
# pipe (Rich would otherwise cut at 80 columns), so `2>err.log` and grep see whole lines.
err_console = Console(stderr=True, soft_wrap=True)

# Exit codes: 0 ok, 1 failed check (verification found a problem), 2 usage
# (click's own), then one per gRPC status family.
EXIT_CODES: dict[str, int] = {
    "INVALID_ARGUMENT": 3,
    "NOT_FOUND": 4,
    "ALREADY_EXISTS": 5,
    "PERMISSION_DENIED": 6,
    "UNAUTHENTICATED": 7,
    "FAILED_PRECONDITION": 8,
    "RESOURCE_EXHAUSTED": 9,
    "UNAVAILABLE": 10,
    "DEADLINE_EXCEEDED": 11,
    "INTERNAL": 12,
    "DATA_LOSS": 13,
}
EXIT_VERIFICATION_FAILED = 1

T = TypeVar("T")


def to_jsonable(data: Any) -> Any:
    if hasattr(data, "to_dict"):
        return data.to_dict()
    if isinstance(data, bytes):
        return data.hex()
    if isinstance(data, dict):
        return {str(k): to_jsonable(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [to_jsonable(v) for v in data]
    return data


def output(data: Any, as_json: bool, table: Table | None = None) -> None:
    """Print ``data`` as JSON (``--json``) or ``table`` (or a generic rendering)."""
    if as_json:
        sys.stdout.write(
            json.dumps(to_jsonable(data), indent=2, sort_keys=True, default=str) + "\n"
        )
        return
    if table is not None:
        console.print(table)
    elif isinstance(data, dict):
        t = Table(show_header=False)
        t.add_column("key", style="bold")
        t.add_column("value")
        for k, v in data.items():
            t.add_row(str(k), str(v))
        console.print(t)
    else:
        console.print(data)


def fail(err: BaseException, *, as_json: bool = False) -> NoReturn:
    """Report a user-facing error and exit with its code."""
    if isinstance(err, grpc.RpcError):
        err = from_rpc_error(err)
    if isinstance(err, FedcreditError):
        code = EXIT_CODES.get(err.code.name, 12)
        if as_json:
            sys.stdout.write(json.dumps({"error": err.to_dict()}, indent=2) + "\n")
        else:
            # soft_wrap: one error, one line (Rich would hard-wrap it at the width).
            err_console.print(
                # escaped: a message naming a TOML table ("[[organisations]]") is text,
                # not Rich markup (which would print it as "[]")
                f"[bold red]error[/]: {escape(err.reason)}: {escape(err.message)}",
                highlight=False,
                markup=True,
                soft_wrap=True,
            )
        raise SystemExit(code)
    fail(last_resort(err), as_json=as_json)


def last_resort(exc: BaseException) -> FedcreditError:
    """The one-line error for an exception no command translated.

    Input problems a command did not foresee still get their own code (a missing or
    unreadable file, bytes that are not UTF-8 text, a number out of range); anything
    else is INTERNAL, with the traceback written to a file the message names.
    """
    if isinstance(exc, FedcreditError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"no such file: {exc.filename}", reason="FILE_NOT_FOUND")
    if isinstance(exc, IsADirectoryError):
        return InvalidArgument(
            f"expected a file, got a directory: {exc.filename}", reason="NOT_A_FILE"
        )
    if isinstance(exc, NotADirectoryError | FileExistsError):
        # a file where a folder was expected (or on its path): `--out some-file`
        return InvalidArgument(
            f"expected a folder or a new path at {exc.filename}, got a file", reason="NOT_A_FOLDER"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return InvalidArgument(
            f"a name is too long for a file name ({len(str(exc.filename or ''))} characters)",
            reason="NAME_TOO_LONG",
        )
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return Unavailable(
            "cannot listen: the address is already in use (is the service running already?)",
            reason="ADDRESS_IN_USE",
        )
    if isinstance(exc, PermissionError):
        return PermissionDenied(
            f"cannot read or write {exc.filename}: permission denied", reason="FILE_PERMISSION"
        )
    if isinstance(exc, UnicodeError):
        return InvalidArgument(
            f"expected UTF-8 text, got bytes that are not ({exc})", reason="NOT_UTF8"
        )
    if isinstance(exc, OverflowError) or (
        isinstance(exc, ValueError) and "out of range" in str(exc)
    ):
        return InvalidArgument(f"a number is out of range: {exc}", reason="OUT_OF_RANGE")
    fd, path = tempfile.mkstemp(prefix="fedcredit-error-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        traceback.print_exception(exc, file=f)
    return Internal(
        f"unexpected {type(exc).__name__}; this is a fedcredit bug, please report it with {path}",
        reason="INTERNAL",
    )


@contextmanager
def user_errors(as_json: bool = False) -> Iterator[None]:
    """Turn domain and gRPC errors raised inside the block into a clean exit."""
    try:
        yield
    except (FedcreditError, grpc.RpcError) as exc:
        fail(exc, as_json=as_json)


def run_cli(fn: Callable[[], T], as_json: bool = False) -> T:
    with user_errors(as_json):
        return fn()


MAX_TOKEN_FILE_BYTES = 64 * 1024  # a consent token is a few KB; anything far larger is not one


def read_token_file(path: Path) -> str:
    """A consent token from a file a person names: the token itself, or the JSON of
    `fedcredit bank consent token --json`. Anything else is one INVALID_ARGUMENT line."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read the consent token file {path}: {exc.strerror}") from exc
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise InvalidArgument(
            f"{path} does not hold a consent token: expected at most "
            f"{MAX_TOKEN_FILE_BYTES:,} bytes, got more"
        )
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidArgument(
            f"{path} does not hold a consent token: expected text, got bytes that are not UTF-8"
        ) from None
    if text.startswith("{"):  # a JSON file from `fedcredit bank consent token --json`
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(
                f"{path} starts with '{{' but is not JSON ({exc.msg} at line {exc.lineno}); "
                "expected a token, or the JSON of `fedcredit bank consent token --json`"
            ) from None
        found = (
            parsed.get("token") or parsed.get("consent_token") if isinstance(parsed, dict) else None
        )
        text = found if isinstance(found, str) else ""
    if text.count(".") != 2:
        raise InvalidArgument(
            f"{path} does not hold a consent token (a JWT with three dot-separated parts)"
        )
    return text
