"""The central `hist` trainer: the federated protocol with one party holding pooled rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy.typing as npt

from fedcredit.training.gbdt.binning import BinSpec
from fedcredit.training.gbdt.booster import Ensemble, HistServer, Request
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
