"""Requests whose bytes do not parse (e.g. a ``string`` field that is not UTF-8) get
INVALID_ARGUMENT with ``google.rpc.ErrorInfo`` reason ``REQUEST_MALFORMED``.

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

from fedcredit.common.errors import InvalidArgument
from fedcredit.common.rpc import status_trailer


class RequestMalformed(InvalidArgument):
    reason = "REQUEST_MALFORMED"


class _Undecodable:
    __slots__ = ("error",)

    def __init__(self, error: RequestMalformed) -> None:
        self.error = error


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _Undecodable(
                RequestMalformed(
                    f"the request ({len(data)} bytes) is not a valid protobuf message: "
                    "expected UTF-8 in every string field"
                )
            )

    return decode


def _sync_iter(requests: Iterator[Any]) -> Iterator[Any]:
    for r in requests:
        if isinstance(r, _Undecodable):
            raise r.error
        yield r


async def _aio_iter(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for r in requests:
        if isinstance(r, _Undecodable):
            raise r.error
        yield r


def _wrap_stream(behavior: Any, aio: bool) -> Any:
    # grpc.aio runs a behaviour by its kind (async generator, coroutine, plain): keep it.
    if aio and inspect.isasyncgenfunction(behavior):

        async def agen(requests: Any, context: Any) -> Any:
            async for item in behavior(_aio_iter(requests), context):
                yield item

        return agen
    if aio:

        async def coro(requests: Any, context: Any) -> Any:
            return await behavior(_aio_iter(requests), context)

        return coro

    def plain(requests: Any, context: Any) -> Any:
        return behavior(_sync_iter(requests), context)

    return plain


def _wrap(handler: Any, aio: bool) -> Any:
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
        new = _wrap_stream(behavior, aio)
    elif aio and inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> Any:
            if isinstance(request, _Undecodable):
                context.set_trailing_metadata(status_trailer(request.error))
                await context.abort(request.error.code, request.error.message)
            async for item in behavior(request, context):
                yield item

        new = agen
    elif aio and not inspect.iscoroutinefunction(behavior):
        return handler  # a plain function on an aio server: left to grpc as it was
    elif aio:

        async def coro(request: Any, context: Any) -> Any:
            if isinstance(request, _Undecodable):
                context.set_trailing_metadata(status_trailer(request.error))
                await context.abort(request.error.code, request.error.message)
            return await behavior(request, context)

        new = coro
    else:

        def plain(request: Any, context: Any) -> Any:
            if isinstance(request, _Undecodable):
                context.set_trailing_metadata(status_trailer(request.error))
                context.abort(request.error.code, request.error.message)
            return behavior(request, context)

        new = plain
    return handler._replace(request_deserializer=_safe(handler.request_deserializer), **{kind: new})


class DecodeInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        return None if handler is None else _wrap(handler, aio=False)


class AioDecodeInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        return None if handler is None else _wrap(handler, aio=True)
