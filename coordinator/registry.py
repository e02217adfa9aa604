"""The model registry: publish and activate credit model versions, ledger first.

Used by the ``ModelRegistry`` gRPC service and directly by the federated
trainer (``coordinator.training``) when it runs inside the coordinator:

    registry = Registry(store, ledger_sink, shares=GradeShares())
    rec = registry.publish(model_text, trainer="coordinator", metrics={...},
                           calibration_pds=pds, settings={...})
    registry.activate(rec.version, actor="operator")

Every publication (``model_published``) and activation (``model_activated``)
is appended to the ledger with the model's SHA-256 *before* the store
changes and before anyone is answered; a ledger failure leaves the registry
unchanged and raises :class:`coordinator.errors.LedgerUnavailable`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedcredit.common.errors import FedcreditError
from fedcredit.common.evidence import EvidenceSink
from fedcredit.coordinator.errors import InvalidModel, LedgerUnavailable, ModelVersionExists
from fedcredit.coordinator.model import load_booster, model_sha256
from fedcredit.coordinator.rating import GradeShares, Thresholds, calibrate, distribution
from fedcredit.coordinator.store import CoordinatorStore, ModelRecord

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def ledger_append(
    sink: EvidenceSink, kind: str, subject: str | None, payload: Mapping[str, Any]
) -> int:
    """Append to the ledger, turning any failure into LedgerUnavailable (no entry, no answer)."""
    try:
        return sink.append(kind, subject, payload).index
    except LedgerUnavailable:
        raise
    except FedcreditError as exc:
        raise LedgerUnavailable(
            f"the ledger refused the {kind} entry: {exc.reason}: {exc.message}"
        ) from exc
    except Exception as exc:
        raise LedgerUnavailable(
            f"the ledger did not take the {kind} entry: {type(exc).__name__}: {exc}"
        ) from exc


class Registry:
    def __init__(
        self,
        store: CoordinatorStore,
        ledger: EvidenceSink,
        *,
        shares: GradeShares = GradeShares(),
        on_activate: Callable[[ModelRecord], None] | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.shares = shares
        self.on_activate = on_activate
        self._lock = threading.Lock()  # one publication/activation at a time in this process

    def publish(
        self,
        model_text: str,
        *,
        trainer: str,
        version: str | None = None,
        sha256: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        calibration_pds: Sequence[float] | np.ndarray | None = None,
        calibration_matrix: np.ndarray | None = None,
        activate: bool = False,
    ) -> ModelRecord:
        """Register a model version; its thresholds are calibrated on the rated population.

        The population is given either as the model's probabilities of default
        (``calibration_pds``) or as a feature matrix in the model's feature
        order (``calibration_matrix``), which the registry scores itself.
        """
        digest = model_sha256(model_text)
        if sha256 and sha256.lower() != digest:
            raise InvalidModel(
                f"the model text's SHA-256 is {digest}, the request says {sha256.lower()}"
            )
        booster = load_booster(model_text)
        version = version or f"m-{digest[:16]}"
        if not VERSION_RE.match(version):
            raise InvalidModel(
                f"model version {version!r} is not valid: expected 1-128 letters, digits, '.', '_', '+' or '-'"
            )
        if calibration_matrix is not None:
            mat = np.asarray(calibration_matrix, dtype=np.float64)
            if mat.ndim != 2 or mat.shape[1] != booster.num_feature():
                raise InvalidModel(
                    f"calibration matrix must have {booster.num_feature()} columns (the model's features), "
                    f"got shape {mat.shape}"
                )
            pds = np.asarray(booster.predict(mat), dtype=np.float64)
        elif calibration_pds is not None:
            pds = np.asarray(calibration_pds, dtype=np.float64)
        else:
            raise InvalidModel(
                "a model needs a calibration population (probabilities of default) to set its ratings"
            )
        thresholds = calibrate(pds, self.shares)
        counts = distribution(pds, thresholds)
        features = tuple(booster.feature_name())
        with self._lock:
            if self.store.get_model(version) is not None:
                raise ModelVersionExists(f"model version {version!r} is already registered")
            index = ledger_append(
                self.ledger,
                "model_published",
                None,
                {
                    "version": version,
                    "sha256": digest,
                    "trainer": trainer,
                    "features": list(features),
                    "thresholds": thresholds.to_dict(),
                    "metrics": dict(metrics or {}),
                },
            )
            rec = ModelRecord(
                version=version,
                sha256=digest,
                features=features,
                metrics=dict(metrics or {}),
                settings=dict(settings or {}),
                trainer=trainer,
                created_at=int(time.time()),
                thresholds=thresholds,
                grade_counts=counts,
                publish_ledger_index=index,
                calibration=pds,
                model_text=model_text,
            )
            self.store.add_model(rec)
        if activate:
            return self.activate(version, actor=trainer)
        return rec

    def activate(self, version: str, *, actor: str) -> ModelRecord:
        """Make ``version`` the scoring model; thresholds re-calibrated with the current shares."""
        with self._lock:
            rec = self.store.require_model(version, with_text=True)
            thresholds: Thresholds = calibrate(rec.calibration, self.shares)
            counts = distribution(rec.calibration, thresholds)
            now = int(time.time())
            index = ledger_append(
                self.ledger,
                "model_activated",
                None,
                {
                    "version": version,
                    "sha256": rec.sha256,
                    "actor": actor,
                    "thresholds": thresholds.to_dict(),
                    "grade_counts": counts,
                },
            )
            self.store.activate(version, thresholds, counts, index, now)
            out = self.store.require_model(version, with_text=True)
        if self.on_activate is not None:
            self.on_activate(out)
        return out

    def list(self) -> list[ModelRecord]:
        return self.store.list_models()

    def get(self, version: str | None, *, with_text: bool = False) -> ModelRecord | None:
        return self.store.get_model(version, with_text=with_text)
