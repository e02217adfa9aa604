"""Lossless histogram gradient-boosted decision trees (the federated `hist` strategy).

The same code trains centrally and across banks: every party bins its rows with
the same global edges, turns gradients and hessians into fixed-point integers
and builds integer histograms; the server sums them (in plain or through
SecAgg+), chooses splits and sets leaf values. Integer sums are exact and
order-independent, so the federated model equals the central one bit for bit.
The ensemble is written in LightGBM's text model format.
"""

from fedcredit.training.gbdt.binning import BinSpec, fit_bin_spec
from fedcredit.training.gbdt.booster import Ensemble, HistServer, Request
from fedcredit.training.gbdt.central import train_central
from fedcredit.training.gbdt.errors import GbdtError, InvalidGbdtParams, NoSplitPossible
from fedcredit.training.gbdt.params import GBDTParams
from fedcredit.training.gbdt.party import Party

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
