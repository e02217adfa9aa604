"""Typed clients of a department node's FeatureService (sync and grpc.aio, mTLS).

Request-level failures raise the typed fedcredit error (``common.errors.from_rpc_error``);
per-enterprise refusals come back as :class:`ItemResult` with ``error`` set, re-created
as the typed exception of their reason (``common.wire.item_exception``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcredit.common.client import AsyncServiceClient, ServiceClient
from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import TlsFiles
from fedcredit.common.wire import feature_value, item_exception, missing_name, purpose_to_pb
from fedcredit.node import celvars
from fedcredit.v1 import common_pb2, feature_pb2, feature_pb2_grpc

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Value:
    value: float | None  # None when missing
    missing: str  # "present", "no_records" or "not_covered"


@dataclass(frozen=True, slots=True)
class Screened:
    """A node's screening answer: per clause id, one boolean per enterprise."""

    bits: Mapping[str, npt.NDArray[np.bool_]]
    disclosure_index: int
    data_version: int


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
        return ItemResult(m.enterprise, None, item_exception(m.error))
    vals = {
        n: Value(feature_value(v, r), missing_name(r))
        for n, v, r in zip(names, m.values, m.missing, strict=True)
    }
    return ItemResult(m.enterprise, vals, None, m.consent_jti, m.disclosure_index)


def _purpose(purpose: str) -> int:
    """The request's purpose: ``""`` travels as UNSPECIFIED (the node answers
    PURPOSE_REQUIRED); an unknown name is refused here (``common.wire.purpose_to_pb``)."""
    return purpose_to_pb(purpose) if purpose else common_pb2.PURPOSE_UNSPECIFIED


def build_request(
    items: Sequence[tuple[str, str]],
    features: Sequence[str],
    *,
    purpose: str,
    on_behalf_of: str = "",
    on_behalf_of_cert_sha256: bytes = b"",
    request_id: str = "",
    chunk_size: int = 0,
    via: str = "",
) -> Any:
    """The GetFeaturesRequest (the one mapping: the coordinator builds its fan-out head
    with it too). ``via``: provenance only, from the coordinator ("portal": a person's
    delegated session it verified); the node writes it to its disclosure entries and
    decides nothing by it."""
    return feature_pb2.GetFeaturesRequest(
        items=[feature_pb2.EnterpriseRequest(enterprise=e, consent_token=t) for e, t in items],
        features=list(features),
        purpose=_purpose(purpose),  # type: ignore[arg-type]
        on_behalf_of=on_behalf_of,
        on_behalf_of_cert_sha256=on_behalf_of_cert_sha256,
        request_id=request_id,
        chunk_size=chunk_size,
        via=via,
    )


def _bin_edges_request(features: Sequence[str], max_bins: int) -> feature_pb2.GetBinEdgesRequest:
    return feature_pb2.GetBinEdgesRequest(
        features=list(features), max_bins=max_bins, purpose=common_pb2.PURPOSE_MODEL_TRAINING
    )


class NodeClient(ServiceClient[feature_pb2_grpc.FeatureServiceStub]):
    """Synchronous client of one node."""

    stub_type = feature_pb2_grpc.FeatureServiceStub
    default_timeout = DEFAULT_TIMEOUT

    def __init__(
        self,
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str,
        insecure: bool = False,
        timeout: float | None = None,
    ) -> None:
        super().__init__(address, tls, server_org=server_org, insecure=insecure, timeout=timeout)
        self.server_org = server_org

    @property
    def stub(self) -> feature_pb2_grpc.FeatureServiceStub:
        return self._stub

    def catalog(self) -> Any:
        return self._call(self._stub.GetCatalog, feature_pb2.GetCatalogRequest())

    def get_features_raw(self, request: Any, timeout: float | None = None) -> Any:
        return self._call(self._stub.GetFeatures, request, timeout)

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
        request = build_request(items, features, **kw)
        for resp in self._stream(self._stub.StreamFeatures, request, timeout):
            for m in resp.items:
                yield item_from_pb(resp.features, m)

    def bin_edges(self, features: Sequence[str] = (), *, max_bins: int = 255) -> Any:
        return self._call(self._stub.GetBinEdges, _bin_edges_request(features, max_bins))

    def screen(
        self,
        run_id: str,
        clauses: Sequence[tuple[str, str]],
        enterprises: Sequence[str],
        *,
        legal_basis: str = "policy_screening",
        timeout: float | None = None,
    ) -> Screened:
        """Evaluate ``clauses`` ((id, CEL) over this node's features) for ``enterprises``
        at the node; one boolean array per clause id, in the order of ``enterprises``."""
        request = feature_pb2.ScreenRequest(
            run_id=run_id,
            legal_basis=legal_basis,
            clauses=[feature_pb2.ScreeningClause(id=i, cel=c) for i, c in clauses],
            enterprises=list(enterprises),
        )
        resp = self._call(self._stub.ScreenPolicies, request, timeout)
        n = len(enterprises)
        if resp.enterprises != n:
            raise ValueError(f"expected an answer for {n} enterprises, got {resp.enterprises}")
        return Screened(
            {r.id: celvars.unpack(r.bits, n) for r in resp.results},
            resp.disclosure_index,
            resp.data_version,
        )

    def aggregate(
        self, round_id: str, indicators: Sequence[str], enterprises: Sequence[str],
        *, legal_basis: str = "subsidy_tracking", timeout: float | None = None,
    ) -> Any:  # fmt: skip
        """Counts and sums of ``indicators`` over the cohort ``enterprises`` (node.cohort)."""
        request = feature_pb2.CohortRequest(
            round_id=round_id, legal_basis=legal_basis, indicators=list(indicators),
            enterprises=list(enterprises),
        )  # fmt: skip
        return self._call(self._stub.AggregateCohort, request, timeout)


class AsyncNodeClient(AsyncServiceClient["feature_pb2_grpc.FeatureServiceAsyncStub"]):
    """grpc.aio client of one node (for the coordinator's parallel fan-out)."""

    stub_type = feature_pb2_grpc.FeatureServiceStub
    default_timeout = DEFAULT_TIMEOUT

    def __init__(
        self,
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str,
        insecure: bool = False,
        timeout: float | None = None,
    ) -> None:
        super().__init__(address, tls, server_org=server_org, insecure=insecure, timeout=timeout)
        self.server_org = server_org

    @property
    def stub(self) -> feature_pb2_grpc.FeatureServiceAsyncStub:
        return self._stub

    async def catalog(self, timeout: float | None = None) -> Any:
        return await self._call(self._stub.GetCatalog, feature_pb2.GetCatalogRequest(), timeout)

    async def get_features(
        self, items: Sequence[tuple[str, str]], features: Sequence[str] = (), **kw: Any
    ) -> list[ItemResult]:
        timeout = kw.pop("timeout", None)
        resp = await self._call(
            self._stub.GetFeatures, build_request(items, features, **kw), timeout
        )
        return [item_from_pb(resp.features, m) for m in resp.items]

    async def bin_edges(
        self, features: Sequence[str] = (), *, max_bins: int = 255, timeout: float | None = None
    ) -> Any:
        return await self._call(
            self._stub.GetBinEdges, _bin_edges_request(features, max_bins), timeout
        )
