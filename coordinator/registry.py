"""The model registry: publish and activate credit model versions, ledger first.

Used by the ``ModelRegistry`` gRPC service and directly by the federated
trainer (``training.server``) when it runs inside the coordinator:

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

import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import lightgbm as lgb
import numpy as np

from fedcredit.common.evidence import EvidenceSink
from fedcredit.common.wire import via_field
from fedcredit.coordinator.errors import InvalidModel, ModelChanged, ModelVersionExists
from fedcredit.coordinator.gate import BlockingLedgerGate
from fedcredit.coordinator.model import load_booster, model_sha256
from fedcredit.coordinator.rating import GradeShares, Thresholds, calibrate, distribution
from fedcredit.coordinator.store import CoordinatorStore, ModelRecord

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def calibration_population(
    booster: lgb.Booster,
    calibration_pds: Sequence[float] | np.ndarray | None,
    calibration_matrix: np.ndarray | None,
) -> np.ndarray:
    """The rated population's probabilities of default: given, or the model's own predictions
    on a feature matrix in the model's feature order."""
    if calibration_matrix is not None:
        mat = np.asarray(calibration_matrix, dtype=np.float64)
        if mat.ndim != 2 or mat.shape[1] != booster.num_feature():
            raise InvalidModel(
                f"calibration matrix must have {booster.num_feature()} columns (the model's features), "
                f"got shape {mat.shape}"
            )
        return np.asarray(booster.predict(mat), dtype=np.float64)
    if calibration_pds is not None:
        return np.asarray(calibration_pds, dtype=np.float64)
    raise InvalidModel(
        "a model needs a calibration population (probabilities of default) to set its ratings"
    )


def check_privacy(privacy: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A private run's ``{"epsilon", "delta", ...}`` as the registry keeps it, or None (no
    noise). Refused unless 0 < epsilon < inf and 0 < delta < 1: a published guarantee
    a reader cannot interpret is worse than none."""
    if privacy is None:
        return None
    eps, delta = privacy.get("epsilon"), privacy.get("delta")
    if not (isinstance(eps, int | float) and isinstance(delta, int | float)):
        raise InvalidModel(
            f"a private model's privacy needs numbers epsilon and delta, got epsilon={eps!r}, "
            f"delta={delta!r}"
        )
    if not (eps > 0.0 and math.isfinite(eps) and 0.0 < delta < 1.0):
        raise InvalidModel(
            f"expected 0 < epsilon < inf and 0 < delta < 1, got epsilon={eps}, delta={delta}"
        )
    bad = [k for k, v in privacy.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise InvalidModel(
            f"privacy details must be finite numbers or null (RFC 8785 JSON has no NaN or "
            f"infinity), got {', '.join(f'{k}={privacy[k]}' for k in bad)}"
        )
    out = dict(privacy)
    out["epsilon"], out["delta"] = float(eps), float(delta)
    return out


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
        self.gate = BlockingLedgerGate(ledger)
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
        privacy: Mapping[str, Any] | None = None,
    ) -> ModelRecord:
        """Register a model version; its thresholds are calibrated on the rated population.

        ``privacy`` (private training runs): ``{"epsilon": ..., "delta": ..., ...}`` of the
        whole run, kept with the version and written into ``model_published``.

        The population is given either as the model's probabilities of default
        (``calibration_pds``) or as a feature matrix in the model's feature
        order (``calibration_matrix``), which the registry scores itself.
        """
        digest = model_sha256(model_text)
        dp = check_privacy(privacy)
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
        pds = calibration_population(booster, calibration_pds, calibration_matrix)
        thresholds = calibrate(pds, self.shares)
        rec = ModelRecord(
            version=version,
            sha256=digest,
            features=tuple(booster.feature_name()),
            metrics=dict(metrics or {}),
            settings=dict(settings or {}),
            trainer=trainer,
            created_at=int(time.time()),
            thresholds=thresholds,
            grade_counts=distribution(pds, thresholds),
            publish_ledger_index=0,  # set once the ledger has the publication
            calibration=pds,
            model_text=model_text,
            privacy=dp,
        )
        rec = self._record_publication(rec)
        if activate:
            return self.activate(version, actor=trainer)
        return rec

    def _record_publication(self, rec: ModelRecord) -> ModelRecord:
        """``model_published`` to the ledger, then the version into the store (one at a time)."""
        with self._lock:
            if self.store.get_model(rec.version) is not None:
                raise ModelVersionExists(f"model version {rec.version!r} is already registered")
            index = self.gate.append(
                "model_published",
                None,
                {
                    "version": rec.version,
                    "sha256": rec.sha256,
                    "trainer": rec.trainer,
                    "features": list(rec.features),
                    "thresholds": rec.thresholds.to_dict(),
                    "metrics": dict(rec.metrics),
                    # Issue 15: the run's (epsilon, delta); null for a model trained
                    # without noise.
                    "privacy": rec.privacy,
                },
            )
            rec = replace(rec, publish_ledger_index=index)
            self.store.add_model(rec)
        return rec

    def activate(
        self,
        version: str,
        *,
        actor: str,
        via: str = "",
        replaces: str | None = None,
        evidence: dict[str, str] | None = None,
    ) -> ModelRecord:
        """Make ``version`` the scoring model; thresholds re-calibrated with the current shares.
        ``via``: ``portal`` when the operator acted from its portal page (a delegated
        session), recorded in the ledger entry; "" for its own certificate. ``replaces``:
        the version that must be active now ("" none; None: any), else ``MODEL_CHANGED``
        and nothing changes. ``evidence``: what the ledger entry records of the operator's
        passkey assertion (credential, assertion and statement digests)."""
        with self._lock:
            if replaces is not None and (self.store.active_version() or "") != replaces:
                raise ModelChanged(
                    f"the active model is now {self.store.active_version() or 'none'}, not "
                    f"{replaces or 'none'} as when the activation was signed; nothing was activated"
                )
            rec = self.store.require_model(version, with_text=True)
            thresholds: Thresholds = calibrate(rec.calibration, self.shares)
            counts = distribution(rec.calibration, thresholds)
            now = int(time.time())
            index = self.gate.append(
                "model_activated",
                None,
                {
                    "version": version,
                    "sha256": rec.sha256,
                    "actor": actor,
                    "thresholds": thresholds.to_dict(),
                    "grade_counts": counts,
                    **via_field(via),
                    **(evidence or {}),
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
