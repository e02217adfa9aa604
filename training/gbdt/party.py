"""The bank side of `hist` boosting: its own rows, binned with the global edges.

A party keeps its raw scores and the leaf each of its rows sits in, answers a
:class:`~coordinator.gbdt.booster.Request` with integer histograms of its rows
(and, when asked, summable validation-loss sums), and never sends a row.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcredit.training.gbdt.binning import BinSpec
from fedcredit.training.gbdt.booster import LOGLOSS_BITS, Request, Totals, sigmoid
from fedcredit.training.gbdt.errors import GbdtError, ProtocolError
from fedcredit.training.gbdt.histogram import IntArray, build_histograms, to_fixed
from fedcredit.training.gbdt.privacy import BankNoise, RequestGuard, to_grid


def validation_mask(ids: Sequence[Any], fraction: float) -> npt.NDArray[np.bool_]:
    """Rows held out for validation, chosen by a stable hash of the row id.

    Each bank gets the same choice for a row whether it trains alone, in the
    federation or pooled centrally, so central and federated runs compare.
    """
    if fraction <= 0.0:
        return np.zeros(len(ids), dtype=bool)
    cut = int(fraction * 2**32)
    h = np.fromiter((zlib.crc32(str(i).encode()) for i in ids), dtype=np.uint64, count=len(ids))
    return h < cut


@dataclass
class _Rows:
    binned: npt.NDArray[np.integer[Any]]
    y: npt.NDArray[np.float64]
    raw: npt.NDArray[np.float64]
    leaf: IntArray


class Party:
    def __init__(
        self,
        spec: BinSpec,
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        ids: Sequence[Any] | None = None,
        validation_fraction: float = 0.0,
        noise: BankNoise | None = None,
        guard: RequestGuard | None = None,
    ) -> None:
        """``noise`` (private mode): this bank's share of the noise is added to every
        histogram it returns, and gradients are rounded to the noise's lattice;
        ``guard`` checks every request against the protocol before it is answered."""
        xa = np.asarray(x, dtype=np.float64)
        ya = np.asarray(y, dtype=np.float64).ravel()
        if xa.shape[0] != ya.shape[0]:
            raise GbdtError(f"expected one label per row: {xa.shape[0]} rows, {ya.shape[0]} labels")
        if not np.isin(ya, (0.0, 1.0)).all():
            raise GbdtError("labels must be 0 or 1 for the logloss objective")
        self.spec = spec
        ids_seq: Sequence[Any] = ids if ids is not None else list(range(xa.shape[0]))
        vmask = validation_mask(ids_seq, validation_fraction)
        binned = spec.transform(xa)
        self._train = self._rows(binned[~vmask], ya[~vmask])
        self._valid = self._rows(binned[vmask], ya[vmask])
        self._grad = np.zeros(0, dtype=np.int64)
        self._hess = np.zeros(0, dtype=np.int64)
        self._tree = 0
        self._started = False
        self.noise = noise
        self.guard = guard
        self._noisy_totals: Totals | None = None

    @staticmethod
    def _rows(binned: npt.NDArray[np.integer[Any]], y: npt.NDArray[np.float64]) -> _Rows:
        n = binned.shape[0]
        return _Rows(binned, y, np.zeros(n), np.zeros(n, dtype=np.int64))

    def totals(self) -> Totals:
        """Row counts; in private mode released once, with this bank's noise share."""
        if self.noise is not None:
            if self._noisy_totals is None:
                exact = self._exact_totals().to_array()
                self._noisy_totals = Totals.from_array(self.noise.noisy_totals(exact))
            return self._noisy_totals
        return self._exact_totals()

    def _exact_totals(self) -> Totals:
        return Totals(
            n_train=int(self._train.y.size),
            positives=int(self._train.y.sum()),
            n_valid=int(self._valid.y.size),
            valid_positives=int(self._valid.y.sum()),
        )

    def respond(self, req: Request) -> tuple[IntArray, IntArray | None]:
        """Histograms of the requested leaves and, if asked, [logloss sum, rows] of validation."""
        if self.guard is not None:
            if req.want_valid:
                raise ProtocolError("private training releases no validation loss")
            releases = self.noise.plan.releases if self.noise is not None else 0
            self.guard.check(req.seq, req.tree, req, releases)
        if req.init_score is not None:
            for r in (self._train, self._valid):
                r.raw[:] = req.init_score
                r.leaf[:] = 0
            self._tree = 0
            self._started = True
            self._gradients()
        elif not self._started:
            raise ProtocolError("first request must carry the initial score")
        nan_slot = self.spec.nan_slot
        for op in req.splits:
            for r in (self._train, self._valid):
                at = r.leaf == op.leaf
                v = r.binned[at, op.feature].astype(np.int64)
                right = np.where(v == nan_slot, not op.default_left, v > op.bin)
                idx = np.flatnonzero(at)[right]
                r.leaf[idx] = op.right_leaf
        if req.finish_values is not None:
            values = np.asarray(req.finish_values, dtype=np.float64)
            for r in (self._train, self._valid):
                r.raw += values[r.leaf]
                r.leaf[:] = 0
            self._tree += 1
            self._gradients()
        if req.tree != self._tree:
            raise ProtocolError(
                f"request is for tree {req.tree} but this party is at tree {self._tree}"
            )
        binned = self._train.binned
        if req.features is not None:
            if not all(0 <= f < self.spec.num_features for f in req.features):
                raise ProtocolError(
                    f"asked for features {list(req.features)}; this run has "
                    f"{self.spec.num_features}"
                )
            binned = binned[:, list(req.features)]
        hists = build_histograms(
            binned,
            self._grad,
            self._hess,
            self._train.leaf,
            req.leaves,
            self.spec.slots,
        )
        if self.noise is not None and req.leaves:
            hists = self.noise.noisy_histograms(hists, req.seq)
        valid = self._valid_sums() if req.want_valid else None
        return hists, valid

    def export_state(self) -> dict[str, npt.NDArray[Any]]:
        """What changes between rounds (scores, leaf of each row), to persist between messages."""
        return {
            "raw_train": self._train.raw,
            "raw_valid": self._valid.raw,
            "leaf_train": self._train.leaf,
            "leaf_valid": self._valid.leaf,
            "progress": np.array([self._tree, int(self._started)], dtype=np.int64),
        } | (
            {"noisy_totals": self._noisy_totals.to_array()}
            if self._noisy_totals is not None
            else {}
        )

    def import_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        try:
            raw_t, raw_v = state["raw_train"], state["raw_valid"]
            leaf_t, leaf_v = state["leaf_train"], state["leaf_valid"]
            progress = state["progress"]
        except KeyError as exc:
            raise ProtocolError(f"saved training state lacks {exc}") from None
        if raw_t.shape != self._train.raw.shape or raw_v.shape != self._valid.raw.shape:
            raise ProtocolError("saved training state does not match this bank's rows")
        self._train.raw = np.array(raw_t, dtype=np.float64)
        self._valid.raw = np.array(raw_v, dtype=np.float64)
        self._train.leaf = np.array(leaf_t, dtype=np.int64)
        self._valid.leaf = np.array(leaf_v, dtype=np.int64)
        self._tree, started = int(progress[0]), bool(progress[1])
        if "noisy_totals" in state:
            self._noisy_totals = Totals.from_array(state["noisy_totals"])
        self._started = started
        if started:
            self._gradients()

    def _gradients(self) -> None:
        p = sigmoid(self._train.raw)
        fixed = to_grid if self.noise is not None else to_fixed
        self._grad = fixed(p - self._train.y)
        self._hess = fixed(p * (1.0 - p))

    def _valid_sums(self) -> IntArray:
        r = self._valid
        if r.y.size == 0:
            return np.zeros(2, dtype=np.int64)
        # logloss with logaddexp, stable for large |raw|
        loss = np.logaddexp(0.0, r.raw) - r.y * r.raw
        total = int(np.rint(loss * 2.0**LOGLOSS_BITS).astype(np.int64).sum())
        return np.array([total, r.y.size], dtype=np.int64)
