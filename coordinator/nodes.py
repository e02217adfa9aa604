"""The department nodes' FeatureService, as the coordinator calls it (grpc.aio, mTLS, deadlines).

The coordinator asks on behalf of the bank (``on_behalf_of`` and the bank's
certificate SHA-256 in the request); every node verifies each token itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from fedcredit.common.departments import BY_ID
from fedcredit.common.errors import (
    DeadlineExceeded,
    FedcreditError,
    Unavailable,
    from_rpc_error,
)
from fedcredit.common.rpc import STATUS_DETAILS_KEY
from fedcredit.common.tls import TlsFiles, channel
from fedcredit.common.wire import item_exception
from fedcredit.coordinator.errors import NodeDeadlineExceeded, NodeUnavailable
from fedcredit.coordinator.fanout import (
    CatalogFeature,
    FeatureRow,
    FetchBatch,
    FetchItem,
    NodeAnswer,
    NodeFeatures,
)
from fedcredit.node.client import build_request
from fedcredit.v1 import feature_pb2, feature_pb2_grpc

if TYPE_CHECKING:
    from fedcredit.common.config import NodeConfig


def encode_items(items: Sequence[FetchItem]) -> bytes:
    """The ``items`` field of a GetFeaturesRequest, encoded on its own.

    Protocol buffers parse concatenated encodings as one message, with repeated fields
    appended, so the request on the wire is the small per-node part followed by these
    bytes: a batch's tokens (about 1.2 kB each) are encoded once for all nodes.
    """
    if isinstance(items, FetchBatch) and items.wire is not None:
        return items.wire
    wire = feature_pb2.GetFeaturesRequest(
        items=[
            feature_pb2.EnterpriseRequest(enterprise=i.enterprise, consent_token=i.token)
            for i in items
        ]
    ).SerializeToString()
    if isinstance(items, FetchBatch):
        items.wire = wire
    return wire


log = logging.getLogger(__name__)

SERVICE = feature_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name


def _typed(exc: grpc.RpcError) -> bool:
    """Whether the status carries the server's typed refusal (``google.rpc.Status`` details,
    see common.rpc.status_trailer) rather than a bare code and text."""
    trailers: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    return any(m[0] == STATUS_DETAILS_KEY for m in trailers or ())


class PendingFeatures:
    """A GrpcNode's GetFeatures call in flight (a :class:`~fedcredit.coordinator.fanout.FeatureCall`)."""

    __slots__ = ("_call", "_items", "_node", "_timeout")

    def __init__(
        self, node: GrpcNode, call: Any, items: Sequence[FetchItem], timeout: float
    ) -> None:
        self._node, self._call, self._items, self._timeout = node, call, items, timeout

    async def answers(self) -> list[NodeAnswer]:
        try:
            resp = await self._call
        except grpc.RpcError as exc:
            raise self._node.failure(exc, self._timeout) from None
        return self._node.answers(resp, self._items)

    def cancel(self) -> None:
        self._call.cancel()


class GrpcNode:
    """One department node reached over mTLS."""

    def __init__(
        self,
        *,
        org_id: str,
        category: str,
        address: str,
        tls: TlsFiles | None,
        max_batch: int = 1000,
        insecure: bool = False,
    ) -> None:
        self.org_id = org_id
        self.category = category
        self.address = address
        self.max_batch = max_batch
        self._channel = channel(address, tls, server_org=org_id, aio=True, insecure=insecure)
        self._stub = feature_pb2_grpc.FeatureServiceStub(self._channel)
        # GetFeatures with the request already encoded (see encode_items)
        self._get_features = self._channel.unary_unary(
            f"/{SERVICE}/GetFeatures",
            request_serializer=None,
            response_deserializer=feature_pb2.GetFeaturesResponse.FromString,
        )

    def failure(self, exc: grpc.RpcError, timeout: float) -> FedcreditError:
        """The coordinator's error for this node's failed call."""
        err = from_rpc_error(exc)
        if isinstance(err, DeadlineExceeded) or exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return NodeDeadlineExceeded(
                f"node {self.org_id} ({self.category}) did not answer within {timeout} s",
                node=self.org_id,
                category=self.category,
            )
        if isinstance(err, Unavailable) or not _typed(exc):
            # The transport's text names an address and a socket error; a status without
            # ErrorInfo (a crashed handler's UNKNOWN with Python's text, a reset stream's
            # INTERNAL, an oversized answer) is the node failing, not a refusal. The bank
            # is told which organisation's node, the operator's log has the rest.
            log.warning("node %s (%s) at %s: %s", self.org_id, self.category, self.address, err)
            return NodeUnavailable(
                f"node {self.org_id} ({self.category}) is unavailable (not reachable or not "
                "answering)",
                node=self.org_id,
                category=self.category,
            )
        err.metadata.setdefault("node", self.org_id)
        return err

    async def catalog(self, *, timeout: float) -> list[CatalogFeature]:
        try:
            cat = await self._stub.GetCatalog(feature_pb2.GetCatalogRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            raise self.failure(exc, timeout) from None
        if cat.max_batch:
            self.max_batch = int(cat.max_batch)
        return [
            CatalogFeature(f.name, f.category or self.category, f.description) for f in cat.features
        ]

    def start_features(
        self,
        items: Sequence[FetchItem],
        features: Sequence[str],
        *,
        purpose: str,
        bank_org: str,
        bank_cert_sha256: bytes,
        timeout: float,
        use_id: str = "",
        via: str = "",
    ) -> PendingFeatures:
        """Send the GetFeatures request now (see :meth:`NodeFeatures.start_features`)."""
        # the request's own fields through the node SDK's one mapping; the items after them
        head = build_request(
            (), features, purpose=purpose, on_behalf_of=bank_org,
            on_behalf_of_cert_sha256=bank_cert_sha256, request_id=use_id, via=via,
        ).SerializeToString()  # fmt: skip
        call = self._get_features(head + encode_items(items), timeout=timeout)
        return PendingFeatures(self, call, items, timeout)

    async def get_features(
        self,
        items: Sequence[FetchItem],
        features: Sequence[str],
        *,
        purpose: str,
        bank_org: str,
        bank_cert_sha256: bytes,
        timeout: float,
        use_id: str = "",
        via: str = "",
    ) -> list[NodeAnswer]:
        """One answer per item, in order; raise NodeUnavailable/NodeDeadlineExceeded when the
        node fails (:meth:`start_features`, awaited)."""
        return await self.start_features(
            items, features, purpose=purpose, bank_org=bank_org,
            bank_cert_sha256=bank_cert_sha256, timeout=timeout, use_id=use_id, via=via,
        ).answers()  # fmt: skip

    def answers(
        self, resp: feature_pb2.GetFeaturesResponse, items: Sequence[FetchItem]
    ) -> list[NodeAnswer]:
        """The node's answer per item of ``items``, in order."""
        names = tuple(resp.features)
        n_names = len(names)
        index = {name: k for k, name in enumerate(names)}
        answered = list(resp.items)
        in_order = len(answered) == len(items) and all(
            v.enterprise == i.enterprise for v, i in zip(answered, items, strict=True)
        )
        by_code: dict[str, Any] = {} if in_order else {v.enterprise: v for v in answered}
        out: list[NodeAnswer] = []
        for k_item, it in enumerate(items):
            v = answered[k_item] if in_order else by_code.get(it.enterprise)
            if v is None:
                out.append(
                    NodeAnswer(
                        None,
                        NodeUnavailable(
                            f"node {self.org_id} gave no answer for enterprise {it.enterprise}",
                            node=self.org_id,
                        ),
                    )
                )
            elif v.HasField("error") and v.error.reason:
                out.append(NodeAnswer(None, item_exception(v.error)))
            else:
                # One copy of each repeated field (indexing them costs a C call each):
                # this loop runs once per feature of every enterprise of a batch.
                xs, ms = list(v.values), list(v.missing)
                values: Mapping[str, float | None]
                if len(xs) == n_names and len(ms) == n_names:
                    values = FeatureRow(names, index, xs, ms)
                else:  # short lists: what is absent counts as missing
                    partial: dict[str, float | None] = {}
                    for k, name in enumerate(names):
                        x = xs[k] if k < len(xs) else math.nan
                        present = (k >= len(ms) or ms[k] == 0) and not math.isnan(x)
                        partial[name] = float(x) if present else None
                    values = partial
                out.append(NodeAnswer(values))
        return out

    async def close(self) -> None:
        await self._channel.close()


def grpc_nodes(
    node_configs: Sequence[NodeConfig],
    tls: TlsFiles | None,
    *,
    insecure: bool = False,
    timeout: float = 2.0,
) -> dict[str, NodeFeatures]:
    """category -> GrpcNode for every ``[[nodes]]`` entry of a deployment."""
    out: dict[str, NodeFeatures] = {}
    for n in node_configs:
        category = BY_ID[n.department].category
        out[category] = GrpcNode(
            org_id=n.org_id, category=category, address=n.address, tls=tls, insecure=insecure
        )
    return out
