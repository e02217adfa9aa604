"""Lossless histogram gradient-boosted decision trees (the federated `hist` strategy).

The same code trains centrally and across banks: every party bins its rows with
the same global edges, turns gradients and hessians into fixed-point integers
and builds integer histograms; the server sums them (in plain or through
SecAgg+), chooses splits and sets leaf values. Integer sums are exact and
order-independent, so the federated model equals the central one bit for bit.
The ensemble is written in LightGBM's text model format.
"""

from coordinator.gbdt.binning import BinSpec, fit_bin_spec
from coordinator.gbdt.booster import Ensemble, HistServer, Request
from coordinator.gbdt.central import train_central
from coordinator.gbdt.errors import GbdtError, InvalidGbdtParams, NoSplitPossible
from coordinator.gbdt.params import GBDTParams
from coordinator.gbdt.party import Party

__all__ = [
    "BinSpec",
    "Ensemble",
    "GBDTParams",
    "GbdtError",
    "HistServer",
    "InvalidGbdtParams",
    "NoSplitPossible",
    "Party",
    "Request",
    "fit_bin_spec",
    "train_central",
]
