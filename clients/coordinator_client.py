"""Python SDK for the coordinator: scoring, guarantees, fund status and the model registry.

    with CoordinatorClient(address, tls) as c:
        result = c.score(enterprise, token)
        print(result.rating, result.probability_of_default, [r.description for r in result.reasons])

Every call has a deadline; a failed call raises the typed fedcredit error the
server sent (e.g. ``consent.errors.ConsentRevoked``, ``coordinator.errors.LedgerUnavailable``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from fedcredit.common.errors import from_rpc_error
from fedcredit.common.tls import TlsFiles, channel
from fedcredit.v1 import coordinator_pb2 as pb
from fedcredit.v1 import coordinator_pb2_grpc as pb_grpc

DEFAULT_SERVER_ORG = "coordinator"
DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


def _load_error_classes() -> None:
    """Import the modules that define reasons, so errors come back with their own classes."""
    import contextlib
    import importlib

    for mod in ("fedcredit.coordinator.errors", "fedcredit.consent.errors"):
        with contextlib.suppress(ImportError):  # a client without that component installed
            importlib.import_module(mod)


_load_error_classes()


class CoordinatorClient:
    def __init__(
        self,
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str = DEFAULT_SERVER_ORG,
        timeout: float = DEFAULT_TIMEOUT,
        insecure: bool = False,
    ) -> None:
        self.channel = channel(address, tls, server_org=server_org, insecure=insecure)
        self.timeout = timeout
        self.scoring = pb_grpc.ScoringServiceStub(self.channel)
        self.guarantees = pb_grpc.GuaranteeServiceStub(self.channel)
        self.registry = pb_grpc.ModelRegistryStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return fn(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # ------------------------------------------------------------ scoring
    def score(self, enterprise: str, token: str, *, request_id: str = "") -> pb.ScoreResult:
        return self._call(
            self.scoring.Score,
            pb.ScoreRequest(enterprise=enterprise, consent_token=token, request_id=request_id),
        )  # type: ignore[no-any-return]

    def score_batch(
        self, items: Iterable[tuple[str, str, str]], *, timeout: float | None = 3600.0
    ) -> Iterator[pb.ScoreBatchItem]:
        """Stream ``(enterprise, token, request_id)`` in; yield one item per enterprise."""
        reqs = (pb.ScoreRequest(enterprise=e, consent_token=t, request_id=r) for e, t, r in items)
        try:
            yield from self.scoring.ScoreBatch(reqs, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

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
        try:
            yield from self.scoring.WatchRatings(req, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

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
        return self._call(  # type: ignore[no-any-return]
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
        return self._call(  # type: ignore[no-any-return]
            self.guarantees.ReportOutcome,
            pb.OutcomeReport(application_id=application_id, outcome=outcome, loss_yuan=loss_yuan),
        )

    def fund_status(self) -> pb.FundStatusReply:
        return self._call(self.guarantees.FundStatus, pb.FundStatusRequest())  # type: ignore[no-any-return]

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
    ) -> pb.ModelVersion:
        return self._call(  # type: ignore[no-any-return]
            self.registry.Publish,
            pb.PublishModelRequest(
                version=version,
                model_text=model_text,
                metrics_json=metrics_json,
                settings_json=settings_json,
                calibration_pds=list(calibration_pds),
                activate=activate,
            ),
        )

    def activate(self, version: str) -> pb.ModelVersion:
        return self._call(self.registry.Activate, pb.ActivateModelRequest(version=version))  # type: ignore[no-any-return]

    def list_models(self) -> list[pb.ModelVersion]:
        return list(self._call(self.registry.ListModels, pb.ListModelsRequest()).models)

    def get_model(self, version: str = "", *, include_model_text: bool = False) -> pb.ModelVersion:
        return self._call(  # type: ignore[no-any-return]
            self.registry.GetModel,
            pb.GetModelRequest(version=version, include_model_text=include_model_text),
        )


class AsyncCoordinatorClient:
    """grpc.aio variant of the scoring calls (used by benchmarks and concurrent clients)."""

    def __init__(
        self,
        address: str,
        tls: TlsFiles | None,
        *,
        server_org: str = DEFAULT_SERVER_ORG,
        timeout: float = DEFAULT_TIMEOUT,
        insecure: bool = False,
    ) -> None:
        self.channel = channel(address, tls, server_org=server_org, aio=True, insecure=insecure)
        self.timeout = timeout
        self.scoring = pb_grpc.ScoringServiceStub(self.channel)
        self.guarantees = pb_grpc.GuaranteeServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncCoordinatorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def score(self, enterprise: str, token: str, *, request_id: str = "") -> pb.ScoreResult:
        try:
            return await self.scoring.Score(  # type: ignore[no-any-return]
                pb.ScoreRequest(enterprise=enterprise, consent_token=token, request_id=request_id),
                timeout=self.timeout,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def apply(self, **kwargs: Any) -> pb.GuaranteeDecision:
        try:
            return await self.guarantees.Apply(  # type: ignore[no-any-return]
                pb.GuaranteeApplication(**kwargs), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def score_batch(
        self, items: Iterable[tuple[str, str, str]], *, timeout: float | None = 3600.0
    ) -> AsyncIterator[pb.ScoreBatchItem]:
        reqs = (pb.ScoreRequest(enterprise=e, consent_token=t, request_id=r) for e, t, r in items)
        call = self.scoring.ScoreBatch(reqs, timeout=timeout)
        try:
            async for item in call:
                yield item
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
