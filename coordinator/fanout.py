"""What the coordinator needs from a department node, and the catalog it assembles.

:class:`NodeFeatures` is the coordinator's view of one node's
``FeatureService``: a batch of enterprises, each with its own consent token,
asked on behalf of a bank (the node checks every token itself). The gRPC
implementation lives in :mod:`coordinator.nodes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from common.errors import FedcreditError


@dataclass(frozen=True, slots=True)
class FetchItem:
    enterprise: str
    token: str


class FetchBatch(tuple[FetchItem, ...]):
    """The items of one fan-out, shared by every node asked about the same enterprises.

    A transport may keep its encoding of the items here (``wire``) so that a chunk sent
    to twelve nodes is encoded once, not twelve times; nothing else about it differs
    from a tuple of :class:`FetchItem`.
    """

    wire: bytes | None = None


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    """One enterprise's features from one node, or why the node refused them."""

    values: Mapping[str, float | None] | None  # None value = missing at the node
    error: FedcreditError | None = None


@dataclass(frozen=True, slots=True)
class CatalogFeature:
    name: str
    category: str
    description: str


class NodeFeatures(Protocol):
    org_id: str
    category: str
    max_batch: int

    async def catalog(self, *, timeout: float) -> list[CatalogFeature]: ...

    async def get_features(
        self,
        items: Sequence[FetchItem],
        features: Sequence[str],
        *,
        purpose: str,
        bank_org: str,
        bank_cert_sha256: bytes,
        timeout: float,
    ) -> list[NodeAnswer]:
        """One answer per item, in order; raise NodeUnavailable/NodeDeadlineExceeded when the node fails."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Catalog:
    """The union of every node's published catalog."""

    features: Mapping[str, CatalogFeature]

    @classmethod
    def of(cls, entries: Sequence[CatalogFeature]) -> Catalog:
        return cls({f.name: f for f in entries})

    def descriptions(self) -> dict[str, str]:
        return {n: f.description for n, f in self.features.items()}

    def category_of(self, feature: str) -> str | None:
        f = self.features.get(feature)
        return None if f is None else f.category
