"""A dependency that fails without a typed refusal. A node that fails without a typed refusal (its handler crashed: UNKNOWN with Python's text;
a stream reset: INTERNAL; an oversized answer: RESOURCE_EXHAUSTED; a proxy in front of it
naming an address) reaches the bank as NODE_UNAVAILABLE naming the organisation: never
INTERNAL/UNKNOWN, never the node's address or exception text. A node's own typed refusal
(ErrorInfo) still passes through with its reason. The same for the consent service
(CONSENT_SERVICE_UNAVAILABLE) and the ledger (LEDGER_UNAVAILABLE, without the text)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from fedcredit.common.errors import FedcreditError, Internal, InvalidArgument, ResourceExhausted
from fedcredit.common.rpc import status_trailer
from fedcredit.consent.errors import UsesExhausted
from fedcredit.coordinator.gate import refusal as ledger_refusal
from fedcredit.coordinator.nodes import FetchItem, GrpcNode
from fedcredit.coordinator.scoring import consent_failure
from fedcredit.v1 import feature_pb2_grpc

LEAK = "127.0.0.1:45123 /srv/node/secret.py"


class _Node(feature_pb2_grpc.FeatureServiceServicer):
    def __init__(self, how: str) -> None:
        self.how = how

    async def GetFeatures(self, request: Any, context: Any) -> Any:
        if self.how == "crash":
            raise RuntimeError(f"boom at {LEAK}")  # grpc answers UNKNOWN with this text
        if self.how == "typed":
            err = InvalidArgument("bad feature name", feature="x")
            context.set_trailing_metadata(status_trailer(err))
            await context.abort(err.code, err.message)
        code = getattr(grpc.StatusCode, self.how)
        await context.abort(code, f"upstream connect error to {LEAK}")


async def _ask(how: str) -> FedcreditError:
    server = grpc.aio.server()
    feature_pb2_grpc.add_FeatureServiceServicer_to_server(_Node(how), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    node = GrpcNode(
        org_id="dept-tax", category="operations_tax", address=f"127.0.0.1:{port}",
        tls=None, insecure=True,
    )  # fmt: skip
    try:
        await node.get_features(
            [FetchItem("91371073MAX1QQ6U4K", "t")], ["x"], purpose="credit_assessment",
            bank_org="bank-a", bank_cert_sha256=b"\x01" * 32, timeout=10.0,
        )  # fmt: skip
    except FedcreditError as err:
        return err
    finally:
        await server.stop(None)
    raise AssertionError("the node's failure was not raised")


@pytest.mark.parametrize(
    "how", ["crash", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED", "CANCELLED", "DATA_LOSS"]
)
def test_an_untyped_node_failure_is_named_and_leaks_nothing(how: str) -> None:
    err = asyncio.run(_ask(how))
    assert err.reason == "NODE_UNAVAILABLE", (err.reason, err.message)
    assert err.metadata.get("node") == "dept-tax" and "dept-tax" in err.message
    text = err.message + repr(sorted(err.metadata.items()))
    assert "127.0.0.1" not in text and "secret" not in text and "boom" not in text


def test_a_typed_node_refusal_passes_through() -> None:
    err = asyncio.run(_ask("typed"))
    assert err.reason == "INVALID_ARGUMENT" and err.message == "bad feature name"
    assert err.metadata.get("node") == "dept-tax"


def _untyped(code: str) -> FedcreditError:
    """What common.errors.from_rpc_error makes of a status without ErrorInfo."""
    err = Internal(f"Unexpected <class 'RuntimeError'>: boom at {LEAK}", reason=code)
    return ResourceExhausted(err.message) if code == "RESOURCE_EXHAUSTED" else err


@pytest.mark.parametrize("code", ["UNKNOWN", "INTERNAL", "CANCELLED", "RESOURCE_EXHAUSTED"])
def test_an_untyped_consent_service_failure_is_named_and_leaks_nothing(code: str) -> None:
    err = consent_failure(_untyped(code), "reserving consent uses")
    assert err.reason == "CONSENT_SERVICE_UNAVAILABLE", (err.reason, err.message)
    assert "127.0.0.1" not in err.message and "boom" not in err.message
    # The consent service's own typed refusal is the bank's answer as it is.
    typed = UsesExhausted("consent c allows 1 uses and all have been used", jti="j")
    assert consent_failure(typed, "reserving consent uses") is typed


@pytest.mark.parametrize("code", ["UNKNOWN", "INTERNAL", "CANCELLED", "RESOURCE_EXHAUSTED"])
def test_an_untyped_ledger_failure_leaks_nothing(code: str) -> None:
    err = ledger_refusal("score", _untyped(code))
    assert err.reason == "LEDGER_UNAVAILABLE"
    assert "127.0.0.1" not in err.message and "boom" not in err.message
