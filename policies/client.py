"""Typed client of the policy service (sync, mTLS): the SDK for departments, the operator
and enterprises. Failures raise the typed fedcredit error of their reason. The portal
calls for a signed-in enterprise or department with ``client.delegated(ticket)``
(common/client.py; the service verifies the ticket, consent/delegation.py)."""

from __future__ import annotations

from typing import Any

from fedcredit.common.client import ServiceClient
from fedcredit.v1 import policies_pb2, policies_pb2_grpc


class PolicyClient(ServiceClient[policies_pb2_grpc.PolicyServiceStub]):
    stub_type = policies_pb2_grpc.PolicyServiceStub
    default_server_org = "policies"
    default_timeout = 600.0  # a screening run of a whole city takes a minute or so

    def applications(self, policy_id: str = "", state: str = "") -> list[Any]:
        req = policies_pb2.ListApplicationsRequest(policy_id=policy_id, state=state)
        return list(self._call(self._stub.ListApplications, req).applications)

    def tracking_history(self, policy_id: str = "", limit: int = 12) -> list[Any]:
        req = policies_pb2.TrackingHistoryRequest(policy_id=policy_id, limit=limit)
        return list(self._call(self._stub.TrackingHistory, req).rounds)

    def check_rule(self, rule: str) -> Any:
        return self._call(self._stub.CheckRule, policies_pb2.CheckRuleRequest(rule=rule))

    def publish(self, policy: policies_pb2.PolicyMessage) -> Any:
        return self._call(self._stub.PublishPolicy, policy)

    def policies(self, mode: str = "") -> list[Any]:
        resp = self._call(self._stub.ListPolicies, policies_pb2.ListPoliciesRequest(mode=mode))
        return list(resp.policies)

    def run_screening(self, today: str, run_id: str = "") -> Any:
        req = policies_pb2.RunScreeningRequest(run_id=run_id, today=today)
        return self._call(self._stub.RunScreening, req)

    def awards(self) -> list[Any]:
        return list(self._call(self._stub.ListAwards, policies_pb2.ListAwardsRequest()).awards)

    def decline(self, policy_id: str) -> Any:
        req = policies_pb2.DeclineAwardRequest(policy_id=policy_id)
        return self._call(self._stub.DeclineAward, req)

    def pay_due(self) -> Any:
        return self._call(self._stub.PayDue, policies_pb2.PayDueRequest())

    # -- applications ---------------------------------------------------------------------

    def apply(self, application_id: str, policy_id: str, fields: dict[str, str],
              attachments: dict[str, bytes]) -> Any:  # fmt: skip
        req = policies_pb2.ApplyRequest(
            application_id=application_id,
            policy_id=policy_id,
            fields=[policies_pb2.FormField(name=k, value=v) for k, v in fields.items()],
            attachments=[
                policies_pb2.Attachment(name=k, content=v) for k, v in attachments.items()
            ],
        )
        return self._call(self._stub.Apply, req)

    def review(self, application_id: str, approve: bool) -> Any:
        req = policies_pb2.ReviewRequest(application_id=application_id, approve=approve)
        return self._call(self._stub.Review, req)

    def object(self, application_id: str, reason: str) -> Any:
        req = policies_pb2.ObjectRequest(application_id=application_id, reason=reason)
        return self._call(self._stub.Object, req)

    def resolve(self, application_id: str, upheld: bool) -> Any:
        req = policies_pb2.ResolveRequest(application_id=application_id, upheld=upheld)
        return self._call(self._stub.ResolveObjection, req)

    def advance(self, application_id: str, step: str) -> Any:
        req = policies_pb2.AdvanceRequest(application_id=application_id, step=step)
        return self._call(self._stub.Advance, req)

    def application(self, application_id: str) -> Any:
        req = policies_pb2.GetApplicationRequest(application_id=application_id)
        return self._call(self._stub.GetApplication, req)

    # -- tracking ---------------------------------------------------------------------------

    def report_progress(self, policy_id: str, period: str, indicators: dict[str, float],
                        narrative: str = "") -> Any:  # fmt: skip
        req = policies_pb2.ReportProgressRequest(
            policy_id=policy_id,
            period=period,
            indicators=[policies_pb2.Indicator(name=k, value=v) for k, v in indicators.items()],
            narrative=narrative,
        )
        return self._call(self._stub.ReportProgress, req)

    def progress(self, policy_id: str = "") -> list[Any]:
        req = policies_pb2.ListProgressRequest(policy_id=policy_id)
        return list(self._call(self._stub.ListProgress, req).reports)

    def tracking_round(self, round_id: str) -> Any:
        req = policies_pb2.TrackingRoundRequest(round_id=round_id)
        return self._call(self._stub.TrackingRound, req)
