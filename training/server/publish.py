"""Registry publication: the trained model goes to the coordinator's model registry.

The operator registers (and optionally activates) the model over gRPC; the registry
writes ``model_published`` (and ``model_activated``) to the ledger before it answers.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from fedcredit.common.config import Deployment
from fedcredit.coordinator.client import CoordinatorClient
from fedcredit.v1 import coordinator_pb2 as pb


def publish_model(
    dep: Deployment,
    operator: str,
    model_text: str,
    pds: np.ndarray,
    *,
    metrics: dict[str, Any],
    settings: dict[str, Any],
    activate: bool,
    version: str = "",
    privacy: dict[str, Any] | None = None,
) -> pb.ModelVersion:
    """Register (and optionally activate) over gRPC as the operator; the registry writes the
    ledger entries before it answers. ``privacy``: a private run's (epsilon, delta) and
    noise plan, kept with the version and written into ``model_published``."""
    svc = dep.service("coordinator")
    with CoordinatorClient(
        svc.address, dep.tls(operator), server_org=svc.org_id, timeout=60.0
    ) as c:
        return c.publish(
            model_text,
            calibration_pds=[float(v) for v in pds],
            version=version,
            metrics_json=json.dumps(metrics, default=_jsonable),
            settings_json=json.dumps(settings, default=_jsonable),
            activate=activate,
            privacy=None if privacy is None else finite(privacy),
        )


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (recursively): the ledger's
    canonical JSON (RFC 8785) has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
