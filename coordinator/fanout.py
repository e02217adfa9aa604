"""What the coordinator needs from a department node, and the catalog it assembles.

:class:`NodeFeatures` is the coordinator's view of one node's
``FeatureService``: a batch of enterprises, each with its own consent token,
asked on behalf of a bank (the node checks every token itself). The gRPC
implementation lives in :mod:`coordinator.nodes`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fedcredit.common.errors import FedcreditError


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


class FeatureRow(Mapping[str, float | None]):
    """One enterprise's values from one node as the node sent them: the feature names of
    the answer (one tuple shared by every enterprise of it), the values and the missing
    flags. A read-only mapping name -> value (None = missing), built without a dict;
    :meth:`floats` gives the row with NaN for missing, as the model reads it."""

    __slots__ = ("_index", "_missing", "_values", "names")

    def __init__(
        self,
        names: tuple[str, ...],
        index: Mapping[str, int],
        values: Sequence[float],
        missing: Sequence[int],
    ) -> None:
        self.names, self._index, self._values, self._missing = names, index, values, missing

    def floats(self) -> list[float]:
        return [x if m == 0 else math.nan for x, m in zip(self._values, self._missing, strict=True)]

    def __getitem__(self, name: str) -> float | None:
        k = self._index[name]
        x = self._values[k]
        return None if self._missing[k] != 0 or x != x else x  # x != x: NaN

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


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


class FeatureCall(Protocol):
    """A GetFeatures call in flight (:meth:`NodeFeatures.start_features`)."""

    async def answers(self) -> list[NodeAnswer]:
        """One answer per item, in order; raise NodeUnavailable/NodeDeadlineExceeded when
        the node fails."""
        ...

    def cancel(self) -> None:
        """Abandon the call (its answer is no longer wanted)."""
        ...


class NodeFeatures(Protocol):
    org_id: str
    category: str
    max_batch: int

    async def catalog(self, *, timeout: float) -> list[CatalogFeature]: ...

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
    ) -> FeatureCall:
        """Send the request NOW and return the call; its answers are awaited from it.

        The scorer starts every node's call first and then awaits them in turn: the calls
        run in parallel with no task of the scorer's own per node (each would cost the
        event loop a task and a wake-up per answer, which is most of the coordinator's
        own CPU per Score). ``use_id``: the use the coordinator reserved (sent as the
        request id; the node joins that use at the consent service instead of opening
        one of its own). ``via``: how the bank's request reached the coordinator
        ("portal": a delegated session it verified), written to the node's disclosure
        entries as provenance."""
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
