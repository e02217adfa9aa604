"""Command-line conventions shared by every `fedcredit` command.

Results a person reads are rich tables; ``--json`` prints machine-readable
JSON instead. User errors print ``error: REASON: sentence`` on stderr — no
stack trace — and exit with a code that says what kind of failure it was.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import grpc
from rich.console import Console
from rich.table import Table

from fedcredit.common.errors import FedcreditError, from_rpc_error

console = Console()
err_console = Console(stderr=True)

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
            err_console.print(
                f"[bold red]error[/]: {err.reason}: {err.message}", highlight=False, markup=True
            )
        raise SystemExit(code)
    err_console.print(f"[bold red]error[/]: {type(err).__name__}: {err}", highlight=False)
    raise SystemExit(12)


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
