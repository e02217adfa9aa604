"""Federated training of the credit model, in three rooms with one direction of imports.

- ``gbdt``: the pure histogram-GBDT core (binning, trees, boosting, LightGBM text).
- ``server``: the coordinator's side (Flower strategies and ServerApp, registry publication).
- ``bank``: a bank's side (Flower ClientApp, its data sources).

``server`` and ``bank`` both build on ``gbdt``; neither imports the other.
"""
