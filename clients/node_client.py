"""Typed clients of a department node's FeatureService (sync and grpc.aio, mTLS).

Request-level failures raise the typed fedcredit error (``common.errors.from_rpc_error``);
per-enterprise refusals come back as :class:`ItemResult` with ``error`` set, re-created
as the typed exception of their reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from fedcredit.common.errors import FedcreditError, error_class_for, from_rpc_error
from fedcredit.common.tls import TlsFiles, channel
from fedcredit.v1 import common_pb2, feature_pb2, feature_pb2_grpc

T = TypeVar("T")

MISSING_NAMES = {
    feature_pb2.MISSING_PRESENT: "present",
    feature_pb2.MISSING_NO_RECORDS: "no_records",
    feature_pb2.MISSING_NOT_COVERED: "not_covered",
}


def purpose_value(purpose: str) -> int:
    """``"credit_assessment"`` -> ``PURPOSE_CREDIT_ASSESSMENT``."""
    try:
        return int(common_pb2.Purpose.Value("PURPOSE_" + purpose.upper()))
    except ValueError:
        return common_pb2.PURPOSE_UNSPECIFIED


@dataclass(frozen=True, slots=True)
class Value:
    value: float | None  # None when missing
    missing: str  # "present", "no_records" or "not_covered"


@dataclass(frozen=True, slots=True)
class ItemResult:
    enterprise: str
    values: Mapping[str, Value] | None  # None when refused
    error: FedcreditError | None = None
    consent_jti: str = ""
    disclosure_index: int | None = None

    def plain(self) -> dict[str, float | None] | None:
        """Feature name -> value (None when missing), or None when refused."""
        return None if self.values is None else {k: v.value for k, v in self.values.items()}


def item_from_pb(names: Sequence[str], m: Any) -> ItemResult:
    if m.HasField("error"):
        e = m.error
        code = getattr(grpc.StatusCode, e.code, grpc.StatusCode.UNKNOWN)
        cls = error_class_for(e.reason, code)
        err = cls(e.message, reason=e.reason, **dict(e.metadata))
        return ItemResult(m.enterprise, None, err)
    vals = {
        n: Value(
            None if r != feature_pb2.MISSING_PRESENT or math.isnan(v) else v,
            MISSING_NAMES.get(r, str(r)),
        )
        for n, v, r in zip(names, m.values, m.missing, strict=True)
    }
    return ItemResult(m.enterprise, vals, None, m.consent_jti, m.disclosure_index)


def build_request(
    items: Sequence[tuple[str, str]],
    features: Sequence[str],
    *,
    purpose: str,
    on_behalf_of: str = "",
    on_behalf_of_cert_sha256: bytes = b"",
    request_id: str = "",
    chunk_size: int = 0,
) -> Any:
    return feature_pb2.GetFeaturesRequest(
        items=[feature_pb2.EnterpriseRequest(enterprise=e, consent_token=t) for e, t in items],
        features=list(features),
        purpose=purpose_value(purpose),  # type: ignore[arg-type]
        on_behalf_of=on_behalf_of,
        on_behalf_of_cert_sha256=on_behalf_of_cert_sha256,
        request_id=request_id,
        chunk_size=chunk_size,
    )


class NodeClient:
    """Synchronous client of one node."""

    def __init__(
        self,
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str,
        insecure: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.address = address
        self.server_org = server_org
        self.timeout = timeout
        self._channel = channel(address, tls, server_org=server_org, insecure=insecure)
        self.stub = feature_pb2_grpc.FeatureServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return fn(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def catalog(self) -> Any:
        return self._call(self.stub.GetCatalog, feature_pb2.GetCatalogRequest())

    def get_features_raw(self, request: Any, timeout: float | None = None) -> Any:
        return self._call(self.stub.GetFeatures, request, timeout)

    def get_features(
        self, items: Sequence[tuple[str, str]], features: Sequence[str] = (), **kw: Any
    ) -> list[ItemResult]:
        timeout = kw.pop("timeout", None)
        resp = self.get_features_raw(build_request(items, features, **kw), timeout)
        return [item_from_pb(resp.features, m) for m in resp.items]

    def stream_features(
        self, items: Sequence[tuple[str, str]], features: Sequence[str] = (), **kw: Any
    ) -> Iterator[ItemResult]:
        timeout = kw.pop("timeout", None)
        try:
            for resp in self.stub.StreamFeatures(
                build_request(items, features, **kw), timeout=timeout or self.timeout
            ):
                for m in resp.items:
                    yield item_from_pb(resp.features, m)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def bin_edges(self, features: Sequence[str] = (), *, max_bins: int = 255) -> Any:
        return self._call(
            self.stub.GetBinEdges,
            feature_pb2.GetBinEdgesRequest(
                features=list(features),
                max_bins=max_bins,
                purpose=common_pb2.PURPOSE_MODEL_TRAINING,
            ),
        )


class AsyncNodeClient:
    """grpc.aio client of one node (for the coordinator's parallel fan-out)."""

    def __init__(
        self,
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str,
        insecure: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.address = address
        self.server_org = server_org
        self.timeout = timeout
        self._channel = channel(address, tls, server_org=server_org, insecure=insecure, aio=True)
        self.stub = feature_pb2_grpc.FeatureServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def catalog(self, timeout: float | None = None) -> Any:
        try:
            return await self.stub.GetCatalog(
                feature_pb2.GetCatalogRequest(), timeout=timeout or self.timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def get_features(
        self, items: Sequence[tuple[str, str]], features: Sequence[str] = (), **kw: Any
    ) -> list[ItemResult]:
        timeout = kw.pop("timeout", None)
        try:
            resp = await self.stub.GetFeatures(
                build_request(items, features, **kw), timeout=timeout or self.timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return [item_from_pb(resp.features, m) for m in resp.items]

    async def bin_edges(
        self, features: Sequence[str] = (), *, max_bins: int = 255, timeout: float | None = None
    ) -> Any:
        try:
            return await self.stub.GetBinEdges(
                feature_pb2.GetBinEdgesRequest(
                    features=list(features),
                    max_bins=max_bins,
                    purpose=common_pb2.PURPOSE_MODEL_TRAINING,
                ),
                timeout=timeout or self.timeout,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
