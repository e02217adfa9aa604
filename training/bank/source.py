"""Where a bank's ClientApp finds its rows.

Deployment: each SuperNode is started with ``--node-config "csv='/path/bank.csv'"``.
Simulation: the run carries the list of CSV files and each virtual node takes
the one at its ``partition-id``. Loaded data is cached per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fedcredit.common.tls import TlsFiles
from fedcredit.training.bank.data import BankData, TrainingDataNotFound, load_csv
from fedcredit.training.gbdt.privacy import BANK_PRIVACY_KEYS

_CACHE: dict[tuple[str, str], BankData] = {}


# Per feature, the upper bounds of its bins (the last, +inf, left out).
BinEdges = list[npt.NDArray[np.float64]]


class DataSource(Protocol):
    """Where a bank's ClientApp finds its rows (and, optionally, shared bin edges)."""

    def key(self, node_config: dict[str, Any]) -> str:
        """What identifies the rows ``load`` returns (a cache key)."""
        ...

    def load(self, node_config: dict[str, Any]) -> BankData: ...

    def bank_id(self, node_config: dict[str, Any]) -> str:
        """The bank's organisation id (or, for a CSV, its file name): how messages name it."""
        ...

    def bin_edges(self, node_config: dict[str, Any], max_bins: int) -> BinEdges | None:
        """Global bin edges, the same for every bank, or None: the banks then agree on
        bins in a sketch round over their own rows."""
        ...

    def privacy_config(self, node_config: dict[str, Any]) -> dict[str, Any]:
        """The bank's own settings for private training, never the coordinator's:
        ``public-ranges`` (its copy of the public schema file), ``max-epsilon`` (the most
        it spends on one run), ``private-only`` (refuse every request outside the private
        protocol) and, for tests only, ``noise-seed``."""
        ...

    def identity(self, node_config: dict[str, Any]) -> TlsFiles | None:
        """The bank's certificate and key in the deployment's PKI (it signs its secure-sum
        key with them and checks the other banks' signatures against the CA), or None
        (no PKI: keys go unsigned)."""
        ...


PRIVACY_KEYS = BANK_PRIVACY_KEYS


def privacy_from_node_config(node_config: dict[str, Any]) -> dict[str, Any]:
    return {k: node_config[k] for k in PRIVACY_KEYS if k in node_config}


@dataclass(frozen=True)
class CsvSource:
    """One CSV per bank: by partition id (simulation) or from the node's own config."""

    paths: tuple[str, ...] = ()
    label: str = "y"
    # Simulation: every bank's privacy settings (PRIVACY_KEYS); "noise-seed" is offset by
    # the partition id so the banks' noise differs but replays.
    privacy: tuple[tuple[str, Any], ...] = ()

    def key(self, node_config: dict[str, Any]) -> str:
        if "csv" in node_config:
            return str(node_config["csv"])
        if "partition-id" in node_config and self.paths:
            pid = int(node_config["partition-id"])
            if not 0 <= pid < len(self.paths):
                raise TrainingDataNotFound(
                    f"no CSV for partition {pid}: {len(self.paths)} files were given"
                )
            return self.paths[pid]
        raise TrainingDataNotFound(
            "this node has no training data: start the SuperNode with "
            "--node-config \"csv='/path/to/bank.csv'\""
        )

    def load(self, node_config: dict[str, Any]) -> BankData:
        path = self.key(node_config)
        k = (path, self.label)
        if k not in _CACHE:
            _CACHE[k] = load_csv(path, self.label)
        return _CACHE[k]

    def bank_id(self, node_config: dict[str, Any]) -> str:
        if "bank" in node_config:
            return str(node_config["bank"])
        return Path(self.key(node_config)).name

    def bin_edges(self, node_config: dict[str, Any], max_bins: int) -> BinEdges | None:
        return None  # a bank's CSV alone knows no population's quantiles

    def privacy_config(self, node_config: dict[str, Any]) -> dict[str, Any]:
        out = dict(self.privacy)
        if "noise-seed" in out:
            out["noise-seed"] = int(out["noise-seed"]) + int(node_config.get("partition-id", 0))
        return out | privacy_from_node_config(node_config)

    def identity(self, node_config: dict[str, Any]) -> TlsFiles | None:
        return None  # a CSV bank has no identity in a PKI


@dataclass(frozen=True)
class NodeConfigSource:
    """The Deployment Engine's default: city mode when the SuperNode's node config names a
    ``deployment`` (and ``bank``), else one CSV (``csv``)."""

    def _pick(self, node_config: dict[str, Any]) -> DataSource:
        if "deployment" in node_config:
            from fedcredit.training.bank.city import CitySource

            return CitySource()
        return CsvSource()

    def key(self, node_config: dict[str, Any]) -> str:
        return self._pick(node_config).key(node_config)

    def load(self, node_config: dict[str, Any]) -> BankData:
        return self._pick(node_config).load(node_config)

    def bank_id(self, node_config: dict[str, Any]) -> str:
        return self._pick(node_config).bank_id(node_config)

    def bin_edges(self, node_config: dict[str, Any], max_bins: int) -> BinEdges | None:
        return self._pick(node_config).bin_edges(node_config, max_bins)

    def privacy_config(self, node_config: dict[str, Any]) -> dict[str, Any]:
        return self._pick(node_config).privacy_config(node_config)

    def identity(self, node_config: dict[str, Any]) -> TlsFiles | None:
        return self._pick(node_config).identity(node_config)
