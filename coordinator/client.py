"""Python SDK for the coordinator: scoring, guarantees, fund status and the model registry.

    with CoordinatorClient(address, tls) as c:
        result = c.score(enterprise, token)
        print(result.rating, result.probability_of_default, [r.description for r in result.reasons])

Every call has a deadline; a failed call raises the typed fedcredit error the
server sent (e.g. ``consent.errors.ConsentRevoked``, ``coordinator.errors.LedgerUnavailable``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import grpc

# Imported for their error classes: a failed call comes back as the class its reason
# names (consent refusals travel through the coordinator's answers).
import fedcredit.consent.errors
import fedcredit.coordinator.errors  # noqa: F401
from fedcredit.common.client import AsyncServiceClient, ServiceClient
from fedcredit.v1 import coordinator_pb2 as pb
from fedcredit.v1 import coordinator_pb2_grpc as pb_grpc


def privacy_pb(privacy: Mapping[str, Any] | None) -> pb.TrainingPrivacy | None:
    """A run's ``{"epsilon", "delta", ...}`` on the wire (the service's replies and the
    client's publications share this mapping); None: the field stays absent (no noise)."""
    if privacy is None:
        return None
    details = {k: v for k, v in privacy.items() if k not in ("epsilon", "delta")}
    return pb.TrainingPrivacy(
        epsilon=float(privacy["epsilon"]),
        delta=float(privacy["delta"]),
        details_json=json.dumps(details, sort_keys=True),
    )


def score_dict(r: pb.ScoreResult) -> dict[str, Any]:
    """A score as plain data: the one mapping of ScoreResult (the CLI's JSON lines, the
    portal's score page and watch list)."""
    return {
        "enterprise": r.enterprise,
        "rating": r.rating,
        "probability_of_default": r.probability_of_default,
        "model_version": r.model_version,
        "reasons": [
            {
                "feature": x.feature,
                "description": x.description,
                "contribution": x.contribution,
                "missing": x.missing,
            }
            for x in r.reasons
        ],
        "missing_categories": list(r.missing_categories),
        "ledger_index": r.ledger_index,
        "consent_jti": r.consent_jti,
        "feature_hash": r.feature_hash,
        "request_id": r.request_id,
    }


def model_dict(m: pb.ModelVersion) -> dict[str, Any]:
    """A registry entry as plain data (the CLI's --json and the portal's registry page)."""
    return {
        "version": m.version,
        "active": m.active,
        "sha256": m.sha256,
        "trainer": m.trainer,
        "created_at": m.created_at,
        "activated_at": m.activated_at or None,
        "features": list(m.features),
        "metrics": json.loads(m.metrics_json or "{}"),
        "settings": json.loads(m.settings_json or "{}"),
        "thresholds": {"A": m.thresholds.a, "B": m.thresholds.b, "C": m.thresholds.c},
        "calibration_size": m.calibration_size,
        "grade_counts": dict(m.grade_counts),
        "publish_ledger_index": m.publish_ledger_index,
        "activate_ledger_index": m.activate_ledger_index or None,
        "privacy": privacy_dict(m),
    }


def privacy_dict(m: pb.ModelVersion) -> dict[str, Any] | None:
    """The training run's (epsilon, delta) and noise plan; None: trained without noise."""
    if not m.HasField("privacy"):
        return None
    details = json.loads(m.privacy.details_json or "{}")
    return {"epsilon": m.privacy.epsilon, "delta": m.privacy.delta} | details


DEFAULT_SERVER_ORG = "coordinator"
DEFAULT_TIMEOUT = 30.0


class CoordinatorStubs:
    """The coordinator's three services on one channel."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        self.scoring = pb_grpc.ScoringServiceStub(channel)
        self.guarantees = pb_grpc.GuaranteeServiceStub(channel)
        self.registry = pb_grpc.ModelRegistryStub(channel)


# A ScoreBatch stream's deadline: this much, plus BATCH_SECONDS_PER_ITEM per enterprise
# when the caller says how many it sends (about 20x what a healthy federation needs); a
# frozen coordinator is found sooner by the channel's keepalive (common.tls).
BATCH_BASE_SECONDS = 60.0
BATCH_SECONDS_PER_ITEM = 0.02


def batch_deadline(count: int) -> float:
    """The deadline of a ScoreBatch stream of ``count`` enterprises (seconds)."""
    return BATCH_BASE_SECONDS + BATCH_SECONDS_PER_ITEM * max(0, count)


def _requests(
    items: Iterable[tuple[str, str, str]], batch_id: str = ""
) -> Iterator[pb.ScoreRequest]:
    return (
        pb.ScoreRequest(enterprise=e, consent_token=t, request_id=r, batch_id=batch_id)
        for e, t, r in items
    )


def _batch_timeout(items: Iterable[tuple[str, str, str]], timeout: float | None) -> float:
    if timeout is not None:
        return timeout
    return batch_deadline(len(items) if isinstance(items, Sized) else 100_000)


class CoordinatorClient(ServiceClient[CoordinatorStubs]):
    stub_type = CoordinatorStubs
    default_server_org = DEFAULT_SERVER_ORG
    default_timeout = DEFAULT_TIMEOUT

    @property
    def scoring(self) -> pb_grpc.ScoringServiceStub:
        return self._stub.scoring

    @property
    def guarantees(self) -> pb_grpc.GuaranteeServiceStub:
        return self._stub.guarantees

    @property
    def registry(self) -> pb_grpc.ModelRegistryStub:
        return self._stub.registry

    # ------------------------------------------------------------ scoring
    def score(self, enterprise: str, token: str, *, request_id: str = "") -> pb.ScoreResult:
        return self._call(
            self.scoring.Score,
            pb.ScoreRequest(enterprise=enterprise, consent_token=token, request_id=request_id),
        )

    def score_batch(
        self,
        items: Iterable[tuple[str, str, str]],
        *,
        batch_id: str = "",
        timeout: float | None = None,
    ) -> Iterator[pb.ScoreBatchItem]:
        """Stream ``(enterprise, token, request_id)`` in; yield one item per enterprise.

        ``batch_id``: make the batch resumable (request ids unique in it): sending it again
        replays what was scored (``replayed``) and scores the rest. ``timeout``: default
        :func:`batch_deadline` of the number of items (when ``items`` has a length).
        """
        return self._stream(
            self.scoring.ScoreBatch,
            _requests(items, batch_id),
            _batch_timeout(items, timeout),
            bounded=False,
        )

    def watch(
        self,
        subscriptions: Sequence[tuple[str, str]],
        *,
        interval_seconds: int = 0,
        max_rounds: int = 0,
        timeout: float | None = None,
    ) -> Iterator[pb.RatingEvent]:
        req = pb.WatchRequest(
            subscriptions=[
                pb.ScoreRequest(enterprise=e, consent_token=t) for e, t in subscriptions
            ],
            interval_seconds=interval_seconds,
            max_rounds=max_rounds,
        )
        return self._stream(self.scoring.WatchRatings, req, timeout, bounded=False)

    # ------------------------------------------------------------ guarantees
    def apply(
        self,
        *,
        application_id: str,
        enterprise: str,
        token: str,
        amount_yuan: int,
        term_months: int,
        collateral_yuan: int = 0,
    ) -> pb.GuaranteeDecision:
        return self._call(
            self.guarantees.Apply,
            pb.GuaranteeApplication(
                application_id=application_id,
                enterprise=enterprise,
                consent_token=token,
                amount_yuan=amount_yuan,
                term_months=term_months,
                collateral_yuan=collateral_yuan,
            ),
        )

    def report_outcome(
        self, application_id: str, *, defaulted: bool, loss_yuan: int = 0
    ) -> pb.OutcomeResult:
        outcome = pb.OutcomeReport.DEFAULTED if defaulted else pb.OutcomeReport.REPAID
        return self._call(
            self.guarantees.ReportOutcome,
            pb.OutcomeReport(application_id=application_id, outcome=outcome, loss_yuan=loss_yuan),
        )

    def fund_status(self) -> pb.FundStatusReply:
        return self._call(self.guarantees.FundStatus, pb.FundStatusRequest())

    def list_guarantees(
        self, *, enterprise: str = "", limit: int = 100
    ) -> list[pb.GuaranteeDecision]:
        reply = self._call(
            self.guarantees.ListGuarantees,
            pb.ListGuaranteesRequest(enterprise=enterprise, limit=limit),
        )
        return list(reply.guarantees)

    # ------------------------------------------------------------ model registry
    def publish(
        self,
        model_text: str,
        *,
        calibration_pds: Sequence[float],
        version: str = "",
        metrics_json: str = "",
        settings_json: str = "",
        activate: bool = False,
        privacy: Mapping[str, Any] | None = None,
    ) -> pb.ModelVersion:
        """``privacy``: a private run's ``{"epsilon", "delta", ...}`` (None: no noise)."""
        dp = privacy_pb(privacy)
        return self._call(
            self.registry.Publish,
            pb.PublishModelRequest(
                version=version,
                model_text=model_text,
                metrics_json=metrics_json,
                settings_json=settings_json,
                calibration_pds=list(calibration_pds),
                activate=activate,
                privacy=dp,
            ),
        )

    def activate(self, version: str) -> pb.ModelVersion:
        return self._call(self.registry.Activate, pb.ActivateModelRequest(version=version))

    def list_models(self) -> list[pb.ModelVersion]:
        return list(self._call(self.registry.ListModels, pb.ListModelsRequest()).models)

    def get_model(self, version: str = "", *, include_model_text: bool = False) -> pb.ModelVersion:
        return self._call(
            self.registry.GetModel,
            pb.GetModelRequest(version=version, include_model_text=include_model_text),
        )


class AsyncCoordinatorClient(AsyncServiceClient[CoordinatorStubs]):
    """grpc.aio variant of the scoring calls (used by benchmarks and concurrent clients)."""

    stub_type = CoordinatorStubs
    default_server_org = DEFAULT_SERVER_ORG
    default_timeout = DEFAULT_TIMEOUT

    @property
    def scoring(self) -> pb_grpc.ScoringServiceStub:
        return self._stub.scoring

    @property
    def guarantees(self) -> pb_grpc.GuaranteeServiceStub:
        return self._stub.guarantees

    async def score(self, enterprise: str, token: str, *, request_id: str = "") -> pb.ScoreResult:
        return await self._call(  # type: ignore[no-any-return]
            self.scoring.Score,
            pb.ScoreRequest(enterprise=enterprise, consent_token=token, request_id=request_id),
        )

    async def apply(self, **kwargs: Any) -> pb.GuaranteeDecision:
        return await self._call(self.guarantees.Apply, pb.GuaranteeApplication(**kwargs))  # type: ignore[no-any-return]

    def score_batch(
        self,
        items: Iterable[tuple[str, str, str]],
        *,
        batch_id: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[pb.ScoreBatchItem]:
        return self._stream(
            self.scoring.ScoreBatch,
            _requests(items, batch_id),
            _batch_timeout(items, timeout),
            bounded=False,
        )
