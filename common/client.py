"""The base of every service's typed gRPC client (``<service>/client.py``).

One channel per client, closed by ``close()`` or the ``with``/``async with`` block;
every call goes through ``_call``/``_stream`` so a failed RPC always surfaces as the
typed :class:`~fedcredit.common.errors.FedcreditError` its ErrorInfo names
(``from_rpc_error``), never as a bare ``grpc.RpcError``.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, Self, TypeVar

import grpc

from fedcredit.common.errors import from_rpc_error
from fedcredit.common.tls import TlsFiles, channel

T = TypeVar("T")
StubT = TypeVar("StubT")


class ServiceClient(Generic[StubT]):
    """A blocking client of one service: ``stub_type`` is the generated ``*Stub`` class."""

    stub_type: Callable[[grpc.Channel], StubT]
    default_server_org: str = ""
    default_timeout: float = 10.0

    def __init__(
        self,
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str | None = None,
        insecure: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.address = address
        self.timeout = self.default_timeout if timeout is None else timeout
        self.channel: grpc.Channel = channel(
            address, tls, server_org=server_org or self.default_server_org, insecure=insecure
        )
        self._stub: StubT = type(self).stub_type(self.channel)

    def close(self) -> None:
        self.channel.close()

    # Metadata sent with every call of this client (a delegated view, below).
    _metadata: tuple[tuple[str, str], ...] = ()

    def delegated(self, ticket: str) -> Self:
        """This client (same channel) carrying a delegation ticket (consent/delegation.py):
        the portal's certificate then acts for the organisation the ticket names, at
        services that verify it. Do not close the view: it shares the channel."""
        from fedcredit.common.tls import DELEGATION_METADATA_KEY

        view = copy.copy(self)
        view._metadata = ((DELEGATION_METADATA_KEY, ticket),)
        return view

    def _kw(self, timeout: float | None) -> dict[str, Any]:
        kw: dict[str, Any] = {"timeout": timeout}
        if self._metadata:
            kw["metadata"] = self._metadata
        return kw

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return fn(request, **self._kw(timeout or self.timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def _stream(
        self,
        fn: Callable[..., Any],
        request: Any,
        timeout: float | None = None,
        *,
        bounded: bool = True,
    ) -> Iterator[Any]:
        """The messages of a server stream; a failure mid-stream raises the typed error.

        ``bounded=False``: ``timeout=None`` means no deadline (a long-lived stream, e.g.
        a watch) instead of the client's default.
        """
        try:
            yield from fn(request, **self._kw(timeout if timeout or not bounded else self.timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None


class AsyncServiceClient(Generic[StubT]):
    """The grpc.aio twin of :class:`ServiceClient` (``async with``, awaitable calls)."""

    stub_type: Callable[[grpc.aio.Channel], StubT]
    default_server_org: str = ""
    default_timeout: float = 10.0

    def __init__(
        self,
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str | None = None,
        insecure: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.address = address
        self.timeout = self.default_timeout if timeout is None else timeout
        self.channel: grpc.aio.Channel = channel(
            address,
            tls,
            server_org=server_org or self.default_server_org,
            insecure=insecure,
            aio=True,
        )
        self._stub: StubT = type(self).stub_type(self.channel)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self, fn: Callable[..., Any], request: Any, timeout: float | None = None
    ) -> Any:
        try:
            return await fn(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def _stream(
        self,
        fn: Callable[..., Any],
        request: Any,
        timeout: float | None = None,
        *,
        bounded: bool = True,
    ) -> AsyncIterator[Any]:
        """See :meth:`ServiceClient._stream` (``bounded=False``: None is no deadline)."""
        try:
            deadline = timeout if timeout or not bounded else self.timeout
            async for m in fn(request, timeout=deadline):
                yield m
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
