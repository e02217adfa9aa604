"""City mode: a bank's training rows from its own loan book and the department nodes.

A bank's SuperNode is started with
``--node-config "deployment='/path/deployment.toml' bank='bank-xyz'"`` (optionally
``world='/path/world'``, default ``<deployment dir>/world``, and ``holdout=0.2``).
Its ClientApp then, as that bank (its own mTLS certificate):

1. reads the bank's loan book ``<world>/banks/<bank>/loans.csv`` (labels: ``defaulted``);
2. lists its ACTIVE ``model_training`` consents at the consent service and fetches
   their tokens (only borrowers who granted one take part);
3. fetches those borrowers' features from every department node with the tokens
   (each node checks every token itself and logs the disclosure);
4. asks the nodes for global bin edges (population quantiles, no consent needed).

The model's features are every node's published catalog, nodes in deployment
order and each catalog in its own order — names the coordinator's scoring finds
in the same catalogs, so a published model scores.

A stable hash of the enterprise code holds out ``holdout`` of the borrowers: they
never train; :func:`load_city_bank` returns them separately for evaluation.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
import threading
import uuid
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedcredit.common.errors import FailedPrecondition
from fedcredit.training.bank.data import BankData, TrainingDataInvalid, TrainingDataNotFound
from fedcredit.training.gbdt.privacy import BANK_PRIVACY_KEYS, CATALOG

if TYPE_CHECKING:
    from fedcredit.common.config import Deployment
    from fedcredit.common.tls import TlsFiles
    from fedcredit.consent.terms import ConsentView
    from fedcredit.node.client import NodeClient

DEFAULT_HOLDOUT = 0.2
TOKEN_THREADS = 8


class NoTrainingConsents(FailedPrecondition):
    reason = "NO_TRAINING_CONSENTS"


@dataclass(frozen=True)
class CityBank:
    """One bank's rows in city mode: training rows, held-out rows, and the nodes' bin edges."""

    bank: str
    train: BankData
    test: BankData
    borrowers: int  # loans in the book
    consented: int  # borrowers with an ACTIVE model_training consent
    refused: int  # consented borrowers a node refused (dropped entirely)


def holdout_mask(codes: Sequence[str], fraction: float) -> npt.NDArray[np.bool_]:
    """Held-out enterprises by a stable hash of the code (independent of the validation split)."""
    if fraction <= 0.0:
        return np.zeros(len(codes), dtype=bool)
    cut = int(fraction * 2**32)
    h = np.fromiter(
        (zlib.crc32(b"holdout:" + c.encode()) for c in codes), dtype=np.uint64, count=len(codes)
    )
    return h < cut


def read_loan_book(world: Path, bank: str) -> dict[str, float]:
    """Enterprise code -> 1.0 if its loan defaulted; the last loan counts if several."""
    path = world / "banks" / bank / "loans.csv"
    if not path.is_file():
        raise TrainingDataNotFound(
            f"no loan book for {bank} at {path}; expected the generated city's "
            "banks/<org>/loans.csv",
            bank=bank,
            path=str(path),
        )
    out: dict[str, float] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"code", "defaulted"} <= set(reader.fieldnames):
            raise TrainingDataInvalid(f"{path}: expected columns code and defaulted")
        for row in reader:
            out[row["code"]] = float(row["defaulted"])
    return out


def _node_clients(dep: Deployment, bank: str) -> list[NodeClient]:
    from fedcredit.node.client import NodeClient

    tls = dep.tls(bank)
    return [NodeClient(n.address, tls, server_org=n.org_id, timeout=60.0) for n in dep.nodes]


def catalog_features(nodes: Sequence[NodeClient]) -> list[list[str]]:
    """Per node, its published feature names in catalog order."""
    return [[f.name for f in c.catalog().features] for c in nodes]


def training_tokens(dep: Deployment, bank: str, codes: set[str]) -> dict[str, str]:
    """Enterprise -> token of the bank's ACTIVE model_training consents over ``codes``."""
    from fedcredit.consent.client import ConsentClient

    svc = dep.service("consent")
    with ConsentClient(svc.address, dep.tls(bank), server_org=svc.org_id, timeout=30.0) as cc:
        views = cc.list(states=["ACTIVE"])
        chosen: dict[str, ConsentView] = {}
        for v in views:
            if v.purpose == "model_training" and v.enterprise in codes:
                # the newest consent of an enterprise wins (longest left to run)
                old = chosen.get(v.enterprise)
                if old is None or v.expires_at > old.expires_at:
                    chosen[v.enterprise] = v
        lock = threading.Lock()
        out: dict[str, str] = {}

        def fetch(v: ConsentView) -> None:
            tok = cc.token(v.consent_id).token
            if tok:
                with lock:
                    out[v.enterprise] = tok

        with ThreadPoolExecutor(TOKEN_THREADS) as pool:
            list(pool.map(fetch, chosen.values()))
    return out


def _fetch_node(
    client: NodeClient,
    names: list[str],
    items: list[tuple[str, str]],
    bank_sha: bytes,
    use_id: str = "",
) -> tuple[npt.NDArray[np.float64], dict[str, str]]:
    """Columns of one node for ``items`` (NaN = missing) and the enterprises it refused, why.

    ``use_id``: this training round's use (sent as the request id): every node and page
    of one round counts as one use of each consent."""
    mat = np.full((len(items), len(names)), np.nan, dtype=np.float64)
    refused: dict[str, str] = {}
    step = 1000
    for start in range(0, len(items), step):
        chunk = items[start : start + step]
        results = client.get_features(
            chunk,
            names,
            purpose="model_training",
            on_behalf_of_cert_sha256=bank_sha,
            request_id=use_id,
        )
        for k, r in enumerate(results):
            vals = r.plain()
            if vals is None:
                err = r.error
                refused[r.enterprise] = (
                    f"{client.server_org}: {err.reason}: {err.message}" if err else "refused"
                )
                continue
            mat[start + k] = [math.nan if vals.get(n) is None else vals[n] for n in names]
    return mat, refused


def node_bin_edges(
    nodes: Sequence[NodeClient], per_node: Sequence[Sequence[str]], max_bins: int
) -> list[npt.NDArray[np.float64]]:
    """Global upper bounds per feature from the nodes (their last bound, +inf, dropped)."""
    out: list[npt.NDArray[np.float64]] = []
    for client, names in zip(nodes, per_node, strict=True):
        resp = client.bin_edges(list(names), max_bins=max_bins)
        got = {f.name: [b for b in f.upper_bounds if math.isfinite(b)] for f in resp.features}
        for n in names:
            out.append(np.asarray(got.get(n, []), dtype=np.float64))
    return out


def load_city_bank(
    deployment: str | Path,
    bank: str,
    *,
    world: str | Path | None = None,
    holdout: float = DEFAULT_HOLDOUT,
) -> CityBank:
    """Everything one bank trains on in city mode, fetched as that bank."""
    from fedcredit.common.config import load_config

    dep = load_config(deployment)
    world_dir = Path(world) if world else dep.dir / "world"
    book = read_loan_book(world_dir, bank)
    tokens = training_tokens(dep, bank, set(book))
    if not tokens:
        raise NoTrainingConsents(
            f"{bank} holds no ACTIVE model_training consent from any of its {len(book)} "
            "borrowers; enterprises must grant one before the bank can train",
            bank=bank,
        )
    codes = sorted(tokens)
    items = [(c, tokens[c]) for c in codes]
    bank_sha = dep.tls(bank).identity().cert_sha256
    nodes = _node_clients(dep, bank)
    try:
        per_node = catalog_features(nodes)
        round_use = f"training-{uuid.uuid4().hex}"  # one fetch round = one use
        with ThreadPoolExecutor(max(1, min(len(nodes), 6))) as pool:
            parts = list(
                pool.map(
                    lambda cn: _fetch_node(cn[0], cn[1], items, bank_sha, round_use),
                    zip(nodes, per_node, strict=True),
                )
            )
    finally:
        for c in nodes:
            c.close()
    names = tuple(n for ns in per_node for n in ns)
    x = np.hstack([p[0] for p in parts]) if parts else np.zeros((len(codes), 0))
    refused: dict[str, str] = {}
    for p in parts:
        refused.update(p[1])
    keep = np.array([c not in refused for c in codes], dtype=bool)
    kept = [c for c, k in zip(codes, keep, strict=True) if k]
    if not kept:
        raise NoTrainingConsents(
            f"the nodes refused every one of {bank}'s {len(codes)} model_training consents "
            f"(e.g. {next(iter(refused.values()))})",
            bank=bank,
        )
    x = x[keep]
    y = np.array([book[c] for c in kept], dtype=np.float64)
    test = holdout_mask(kept, holdout)
    tr = ~test

    def part(mask: npt.NDArray[np.bool_]) -> BankData:
        return BankData(
            ids=[c for c, m in zip(kept, mask, strict=True) if m],
            x=x[mask],
            y=y[mask],
            feature_names=names,
        )

    return CityBank(
        bank=bank,
        train=part(tr),
        test=part(test),
        borrowers=len(book),
        consented=len(codes),
        refused=len(refused),
    )


# (deployment, bank, world, holdout) -> CityBank, per process (a SuperNode serves one bank).
_CACHE: dict[tuple[str, str, str, float], CityBank] = {}
_EDGES: dict[tuple[str, int], list[npt.NDArray[np.float64]]] = {}
_LOCK = threading.Lock()


def _save_bank(path: Path, cb: CityBank) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        np.savez(
            fh,
            names=np.asarray(cb.train.feature_names, dtype=str),
            train_ids=np.asarray(cb.train.ids, dtype=str),
            train_x=cb.train.x,
            train_y=cb.train.y,
            test_ids=np.asarray(cb.test.ids, dtype=str),
            test_x=cb.test.x,
            test_y=cb.test.y,
            counts=np.asarray([cb.borrowers, cb.consented, cb.refused], dtype=np.int64),
        )
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _load_bank(path: Path, bank: str) -> CityBank:
    with np.load(path, allow_pickle=False) as z:
        names = tuple(str(n) for n in z["names"])

        def part(p: str) -> BankData:
            return BankData(
                ids=[str(i) for i in z[f"{p}_ids"]],
                x=np.asarray(z[f"{p}_x"], dtype=np.float64).reshape(-1, len(names)),
                y=np.asarray(z[f"{p}_y"], dtype=np.float64),
                feature_names=names,
            )

        borrowers, consented, refused = (int(v) for v in z["counts"])
        return CityBank(bank, part("train"), part("test"), borrowers, consented, refused)


@dataclass(frozen=True)
class CitySource:
    """The ClientApp's data in city mode, from the SuperNode's node config (deployment) or,
    in the Simulation Engine, the bank at the virtual node's ``partition-id``."""

    deployment: str = ""
    banks: tuple[str, ...] = ()
    world: str = ""
    holdout: float = DEFAULT_HOLDOUT
    # Where a bank keeps what it fetched for one run (node config ``cache``; default: the
    # system's temporary folder). Flower's Deployment Engine starts a new ClientApp
    # process for every message: without it each message would fetch again from the
    # nodes, and spend a use of every consent.
    cache: str = ""
    # Simulation: every bank's own privacy settings (PRIVACY_KEYS); "noise-seed" is
    # offset per bank so the banks' noise differs but replays.
    privacy: tuple[tuple[str, Any], ...] = ()

    def _cache_path(
        self, node_config: dict[str, Any], where: tuple[str, str, str, float]
    ) -> Path | None:
        run = node_config.get("run-id")
        if run is None:
            return None
        base = str(node_config.get("cache", self.cache)) or str(
            Path(tempfile.gettempdir()) / "fedcredit-city-cache"
        )
        digest = hashlib.sha256("|".join(map(str, (*where, run))).encode()).hexdigest()[:20]
        return Path(base) / f"{where[1]}-{digest}.npz"

    def _where(self, node_config: dict[str, Any]) -> tuple[str, str, str, float]:
        dep = str(node_config.get("deployment", self.deployment))
        if "bank" in node_config:
            bank = str(node_config["bank"])
        elif "partition-id" in node_config and self.banks:
            pid = int(node_config["partition-id"])
            if not 0 <= pid < len(self.banks):
                raise TrainingDataNotFound(
                    f"no bank for partition {pid}: {len(self.banks)} banks were given"
                )
            bank = self.banks[pid]
        else:
            bank = ""
        if not dep or not bank:
            raise TrainingDataNotFound(
                "this node has no city-mode data: start the SuperNode with --node-config "
                "\"deployment='/path/deployment.toml' bank='<bank org id>'\""
            )
        world = str(node_config.get("world", self.world))
        holdout = float(node_config.get("holdout", self.holdout))
        return dep, bank, world, holdout

    def key(self, node_config: dict[str, Any]) -> str:
        return "|".join(str(v) for v in self._where(node_config))

    def city(self, node_config: dict[str, Any]) -> CityBank:
        where = self._where(node_config)
        with _LOCK:
            got = _CACHE.get(where)
            if got is None:
                dep, bank, world, holdout = where
                path = self._cache_path(node_config, where)
                if path is not None and path.is_file():
                    got = _load_bank(path, bank)
                else:
                    got = load_city_bank(dep, bank, world=world or None, holdout=holdout)
                    if path is not None:
                        _save_bank(path, got)
                _CACHE[where] = got
        return got

    def load(self, node_config: dict[str, Any]) -> BankData:
        return self.city(node_config).train

    def bank_id(self, node_config: dict[str, Any]) -> str:
        return self._where(node_config)[1]

    def privacy_config(self, node_config: dict[str, Any]) -> dict[str, Any]:
        # As training.bank.source.privacy_from_node_config (which imports this module).
        # The public ranges default to the feature catalog's declared domains, from this
        # bank's own copy of the catalog (never the coordinator's word).
        keys = BANK_PRIVACY_KEYS
        out = {"public-ranges": CATALOG} | dict(self.privacy)
        out |= {k: node_config[k] for k in keys if k in node_config}
        if "noise-seed" in out:
            bank = self._where(node_config)[1]
            out["noise-seed"] = int(out["noise-seed"]) + zlib.crc32(bank.encode())
        return out

    def identity(self, node_config: dict[str, Any]) -> TlsFiles | None:
        """The bank's own certificate and key in the deployment's PKI."""
        from fedcredit.common.config import load_config

        dep_path, bank = self._where(node_config)[:2]
        return load_config(dep_path).tls(bank)

    def bin_edges(
        self, node_config: dict[str, Any], max_bins: int
    ) -> list[npt.NDArray[np.float64]] | None:
        """The nodes' global edges for the model's features (asked once per process)."""
        from fedcredit.common.config import load_config

        where = self._where(node_config)
        dep_path, bank = where[0], where[1]
        k = (dep_path, max_bins)
        path = self._cache_path(node_config, where)
        if path is not None:
            path = path.with_name(path.stem + f"-edges{max_bins}.json")
        with _LOCK:
            if k not in _EDGES:
                if path is not None and path.is_file():
                    _EDGES[k] = [
                        np.asarray(e, dtype=np.float64) for e in json.loads(path.read_text())
                    ]
                else:
                    dep = load_config(dep_path)
                    nodes = _node_clients(dep, bank)
                    try:
                        _EDGES[k] = node_bin_edges(nodes, catalog_features(nodes), max_bins)
                    finally:
                        for c in nodes:
                            c.close()
                    if path is not None:
                        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                        path.write_text(json.dumps([e.tolist() for e in _EDGES[k]]))
            return _EDGES[k]


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
        _EDGES.clear()
