"""Federated training of the credit model, in rooms with one direction of imports.

Top to bottom (a room imports only rooms below it):

- ``run``: what composes both sides — the Simulation Engine runner (the ServerApp and
  the banks' ClientApp in one process), the local Deployment Engine runner, the city
  driver (train, evaluate, publish) and ``fedcredit train``.
- ``server`` | ``bank``, independent of each other: the coordinator's side (Flower
  strategies, ServerApp, registry publication) and a bank's side (Flower ClientApp,
  its data sources, its SuperNode and ClientApp executor).
- ``flower`` | ``gbdt``: what both sides share — Flower plumbing (SecAgg+'s exact integer
  encoding, shorter pulls) and the pure histogram-GBDT core (binning, trees, boosting,
  LightGBM text).
"""

import os

# Neither Flower's telemetry nor Ray's usage statistics may leave this machine (set before
# any room imports Flower: the banks' processes as much as the coordinator's).
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Ray picks the machine's outward interface for its own processes unless told it is a
# single-machine "cluster"; this keeps all of Ray's traffic on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
