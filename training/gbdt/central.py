"""The central `hist` trainer: the federated protocol with one party holding pooled rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcredit.training.gbdt.binning import BinSpec
from fedcredit.training.gbdt.booster import Ensemble, HistServer, Request, Totals
from fedcredit.training.gbdt.histogram import IntArray
from fedcredit.training.gbdt.params import GBDTParams
from fedcredit.training.gbdt.party import Party


def train_central(
    spec: BinSpec,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    params: GBDTParams,
    ids: Sequence[Any] | None = None,
    on_round: Callable[[Request], None] | None = None,
) -> Ensemble:
    party = Party(spec, x, y, ids, params.validation_fraction)
    server = HistServer(params, spec, party.totals())
    while (req := server.next_request()) is not None:
        if on_round is not None:
            on_round(req)
        hists, valid = party.respond(req)
        server.receive(hists, valid)
    return server.ensemble()


def train_parties(params: GBDTParams, spec: BinSpec, parties: Sequence[Party]) -> Ensemble:
    """The federated protocol in one process: the parties' totals and histograms summed
    as the coordinator sums them (the reference a Flower run must equal)."""
    total = sum((p.totals().to_array() for p in parties), start=np.zeros(4, dtype=np.int64))
    server = HistServer(params, spec, Totals.from_array(total))
    while (req := server.next_request()) is not None:
        replies = [p.respond(req) for p in parties]
        hists: IntArray = np.sum([h for h, _ in replies], axis=0, dtype=np.int64)
        valid: IntArray | None = (
            np.sum([v for _, v in replies if v is not None], axis=0, dtype=np.int64)
            if req.want_valid
            else None
        )
        server.receive(hists, valid)
    return server.ensemble()
