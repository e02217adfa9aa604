"""Requests whose bytes do not parse (e.g. a ``string`` field that is not UTF-8) get
INVALID_ARGUMENT with ``google.rpc.ErrorInfo`` reason ``REQUEST_MALFORMED``; requests that
parse but break a shape rule (an unknown enum value, an oversized field, a uint64 at or
above 2^63: :mod:`common.limits`) get INVALID_ARGUMENT with that rule's reason. No
servicer sees either.

Left to grpc, a protobuf DecodeError in the request deserializer is logged with a traceback
and answered INTERNAL "Exception deserializing request!", with no ErrorInfo. The
interceptors here wrap every method's deserializer so that it returns a marker instead of
raising, and the method's behaviour so that the marker aborts the call with the precise
status (for a request stream: when the undecodable message is read, raising the error the
servicer's ``@handle_errors`` turns into that status).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fedcredit.common import metrics
from fedcredit.common.errors import InvalidArgument
from fedcredit.common.limits import check_request
from fedcredit.common.rpc import status_trailer


class RequestMalformed(InvalidArgument):
    reason = "REQUEST_MALFORMED"


class _Undecodable:
    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            msg = deserializer(data)
        except DecodeError:
            return _Undecodable(
                RequestMalformed(
                    f"the request ({len(data)} bytes) is not a valid protobuf message: "
                    "expected UTF-8 in every string field"
                )
            )
        except RecursionError:  # nesting deeper than the parser's limit
            return _Undecodable(
                RequestMalformed(f"the request ({len(data)} bytes) nests too deeply")
            )
        try:
            check_request(msg)
        except InvalidArgument as exc:
            return _Undecodable(exc)
        return msg

    return decode


def _sync_iter(requests: Iterator[Any]) -> Iterator[Any]:
    for r in requests:
        if isinstance(r, _Undecodable):
            raise _refuse(r.error)
        yield r


async def _aio_iter(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for r in requests:
        if isinstance(r, _Undecodable):
            raise _refuse(r.error)
        yield r


def _wrap_stream(behavior: Any, aio: bool, count: Callable[[], None]) -> Any:
    # grpc.aio runs a behaviour by its kind (async generator, coroutine, plain): keep it.
    if aio and inspect.isasyncgenfunction(behavior):

        async def agen(requests: Any, context: Any) -> Any:
            count()
            async for item in behavior(_aio_iter(requests), context):
                yield item

        return agen
    if aio:

        async def coro(requests: Any, context: Any) -> Any:
            count()
            return await behavior(_aio_iter(requests), context)

        return coro

    def plain(requests: Any, context: Any) -> Any:
        count()
        return behavior(_sync_iter(requests), context)

    return plain


def _refuse(err: InvalidArgument) -> InvalidArgument:
    metrics.refusal(err.code.name, err.reason)
    return err


def _wrap(handler: Any, aio: bool, method: str = "") -> Any:
    count = metrics.REQUESTS.labels(metrics.service(), method.rsplit("/", 1)[-1]).inc
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    behavior = getattr(handler, kind)
    if behavior is None or handler.request_deserializer is None:
        return handler
    new: Any
    if handler.request_streaming:
        new = _wrap_stream(behavior, aio, count)
    elif aio and inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> Any:
            count()
            if isinstance(request, _Undecodable):
                _refuse(request.error)
                context.set_trailing_metadata(status_trailer(request.error))
                await context.abort(request.error.code, request.error.message)
            async for item in behavior(request, context):
                yield item

        new = agen
    elif aio and inspect.iscoroutinefunction(behavior):

        async def coro(request: Any, context: Any) -> Any:
            count()
            if isinstance(request, _Undecodable):
                _refuse(request.error)
                context.set_trailing_metadata(status_trailer(request.error))
                await context.abort(request.error.code, request.error.message)
            return await behavior(request, context)

        new = coro
    else:  # sync server, or a plain function on an aio server (grpc gives it a sync context)

        def plain(request: Any, context: Any) -> Any:
            count()
            if isinstance(request, _Undecodable):
                _refuse(request.error)
                context.set_trailing_metadata(status_trailer(request.error))
                context.abort(request.error.code, request.error.message)
            return behavior(request, context)

        new = plain
    return handler._replace(request_deserializer=_safe(handler.request_deserializer), **{kind: new})


class _Wrapped:
    """Each method's wrapped handler, made once: grpc hands the interceptor the same
    registered handler for every call of a method, and wrapping it anew (closures, the
    request counter's label lookup) cost every call of every service ~30 us of CPU."""

    def __init__(self, aio: bool) -> None:
        self.aio = aio
        self._by_method: dict[str, tuple[Any, Any]] = {}

    def of(self, handler: Any, method: str) -> Any:
        if handler is None:
            return None
        known = self._by_method.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = _wrap(handler, aio=self.aio, method=method)
        self._by_method[method] = (handler, wrapped)  # a race only wraps twice
        return wrapped


class DecodeInterceptor(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped = _Wrapped(aio=False)

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        return self._wrapped.of(continuation(details), details.method)


class AioDecodeInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped = _Wrapped(aio=True)

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return self._wrapped.of(await continuation(details), details.method)
