"""Federated training of the credit model with Flower: ServerApp, strategies, publication."""

import os

# Neither Flower's telemetry nor Ray's usage statistics may leave this machine.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Ray picks the machine's outward interface for its own processes unless told it is a
# single-machine "cluster"; this keeps all of Ray's traffic on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
