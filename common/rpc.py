"""Servicer-side error handling: domain errors become rich gRPC statuses.

``@handle_errors`` wraps a servicer method (sync or async, unary or
streaming). A :class:`~common.errors.FedcreditError` aborts the call with its
status code, its message and a ``google.rpc.ErrorInfo`` carrying the reason;
anything else is logged with its traceback and reported as INTERNAL without
internals leaking to the caller.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from fedcredit.common import metrics
from fedcredit.common.errors import DOMAIN, FedcreditError, Internal

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

STATUS_DETAILS_KEY = "grpc-status-details-bin"


MAX_MESSAGE = 1_000  # characters of a status message
MAX_METADATA_VALUE = 200
_LONG_RUN = re.compile(r"\S{97,}")  # a run this long is an echoed value, not a word
# where a database driver's or Python's own text starts: cut there (the server logs it)
_INTERNALS = re.compile(
    r"\((?:sqlite3|psycopg2?|asyncpg)\.|\[SQL: |\bsqlalchemy\b|Traceback \(most recent|<class '"
    r"|\b(?:SELECT|INSERT INTO|UPDATE|DELETE FROM)\s.*\b(?:FROM|VALUES|SET|WHERE)\b"
    r"|\b(?:[A-Za-z_]\w*\.)*[A-Z][a-z]\w*(?:Error|Exception)\b",
    re.S,
)


def _shorten(m: re.Match[str]) -> str:
    return f"{m.group(0)[:24]}… ({len(m.group(0))} characters)"


def public_text(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` as it may cross the wire: cut before any SQL, driver or Python class
    text, long runs (echoed values) elided, at most ``limit`` characters."""
    cut = _INTERNALS.search(text)
    if cut is not None:
        text = text[: cut.start()].rstrip(" :;,(") + " (details are in the server's log)"
        log.warning("status message cut before internals: %r", text[:200])
    text = _LONG_RUN.sub(_shorten, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_trailer(err: FedcreditError) -> tuple[tuple[str, bytes], ...]:
    metadata = {k[:64]: public_text(v, MAX_METADATA_VALUE) for k, v in err.metadata.items()}
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    message = public_text(err.message)
    status = status_pb2.Status(code=err.code.value[0], message=message, details=[detail])
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


def _as_domain(exc: BaseException, method: str) -> FedcreditError:
    if isinstance(exc, FedcreditError):
        return exc
    if isinstance(exc, grpc.RpcError):
        # A call this servicer made downstream failed and nobody translated it:
        # relay the downstream status rather than hiding it as INTERNAL.
        from fedcredit.common.errors import from_rpc_error

        return from_rpc_error(exc)
    log.exception("unexpected error in %s", method)
    return Internal(f"internal error in {method}; the server logged the details")


def _abort_sync(context: grpc.ServicerContext, err: FedcreditError) -> None:
    metrics.refusal(err.code.name, err.reason)
    context.set_trailing_metadata(status_trailer(err))
    context.abort(err.code, public_text(err.message))


async def _abort_aio(context: Any, err: FedcreditError) -> None:
    metrics.refusal(err.code.name, err.reason)
    context.set_trailing_metadata(status_trailer(err))
    await context.abort(err.code, public_text(err.message))


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises an exception that must propagate untouched: the
    # sync server raises a bare ``Exception()``, grpc.aio an ``AbortError``.
    return isinstance(exc, grpc.aio.AbortError) or (type(exc) is Exception and not exc.args)


def handle_errors(fn: F) -> F:
    """Decorate a servicer method so domain errors become gRPC statuses."""
    name = fn.__qualname__

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen_wrapper(self: Any, request: Any, context: Any) -> Any:
            try:
                async for item in fn(self, request, context):
                    yield item
            except BaseException as exc:
                if _is_abort(exc) or not isinstance(exc, Exception):
                    raise
                await _abort_aio(context, _as_domain(exc, name))

        return agen_wrapper  # type: ignore[return-value]

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coro_wrapper(self: Any, request: Any, context: Any) -> Any:
            try:
                return await fn(self, request, context)
            except BaseException as exc:
                if _is_abort(exc) or not isinstance(exc, Exception):
                    raise
                await _abort_aio(context, _as_domain(exc, name))

        return coro_wrapper  # type: ignore[return-value]

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(self: Any, request: Any, context: Any) -> Any:
            try:
                yield from fn(self, request, context)
            except Exception as exc:
                if _is_abort(exc):
                    raise
                _abort_sync(context, _as_domain(exc, name))

        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            _abort_sync(context, _as_domain(exc, name))

    return wrapper  # type: ignore[return-value]
