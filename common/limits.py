"""One shape check for every gRPC request, before any servicer sees it.

Every request message of every service passes :func:`check_request` (run by the
server interceptors in :mod:`common.decode`, for each message of a request stream
too). It refuses, with INVALID_ARGUMENT and a machine-readable reason:

- ``ENUM_VALUE_UNKNOWN``: an enum field holding a number its enum does not define
  (proto3 enums are open: the bytes decode, the servicer's mapping would not);
- ``REQUEST_TOO_LARGE``: a string, bytes or repeated field longer than its cap;
- ``VALUE_OUT_OF_RANGE``: an unsigned 64-bit field at or above 2^63 (no store, no
  tree size and no index reaches it; a database's BIGINT cannot hold it).

The caps are defaults by kind plus the named exceptions below, so a new field is
capped the day it is added. A field whose service owns a configurable limit with its
own reason (``BATCH_TOO_LARGE``: a node's ``max_batch``, the ledger's
``max_append_batch``, ...) is listed with ``None`` here: the service's check is the one
a caller meets, and the message size limit bounds it. Errors name the field and the
cap, never the value (a 10 MB id is not echoed back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from fedcredit.common.errors import InvalidArgument

MAX_STRING = 1_024  # characters: ids, codes, versions, reasons
MAX_BYTES = 1_024
MAX_REPEATED = 1_000
MAX_UINT64 = 2**63 - 1

TOKEN_CHARS = 16_384  # consent.token.MAX_TOKEN_CHARS: a token longer than that is refused there too

# Field full name -> cap (None: the service checks its own configurable limit).
STRING_CAPS: dict[str, int | None] = {
    # A token that is one item of a batch (a node's GetFeatures items, each message of a
    # ScoreBatch stream) is refused by the token parser as that item's
    # CONSENT_TOKEN_MALFORMED (consent.token.MAX_TOKEN_CHARS): one oversized token must
    # fail only its own item, never the genuine items beside it (issue 14).
    "fedcredit.v1.ScoreRequest.consent_token": None,
    "fedcredit.v1.EnterpriseRequest.consent_token": None,
    "fedcredit.v1.GuaranteeApplication.consent_token": TOKEN_CHARS,
    # the marketplace's consented reveal and a fund manager's review carry a whole token
    "fedcredit.v1.RevealRequest.consent_token": TOKEN_CHARS,
    "fedcredit.v1.ReviewApplicationRequest.consent_token": TOKEN_CHARS,
    "fedcredit.v1.PublishModelRequest.model_text": 48 * 1024 * 1024,
    "fedcredit.v1.PublishModelRequest.metrics_json": 1024 * 1024,
    "fedcredit.v1.PublishModelRequest.settings_json": 1024 * 1024,
    "fedcredit.v1.AddCheckpointRequest.checkpoint": 16 * 1024,  # ledger.witness_http.MAX_BODY
    "fedcredit.v1.CheckRuleRequest.rule": 4_096,  # policies.rules.MAX_RULE_CHARS
    "fedcredit.v1.PolicyMessage.rule": 4_096,
    "fedcredit.v1.ScreeningClause.cel": 8_192,  # node.screening.MAX_CLAUSE_TEXT
    # passkeys (consent.passkeys): WebAuthn JSON from the browser, the signed statement,
    # the consent service's session ticket, a credential id (up to 1,023 bytes, base64url)
    "fedcredit.v1.SignedStatement.statement_json": 16_384,
    "fedcredit.v1.SignedStatement.assertion_json": 16_384,
    "fedcredit.v1.FinishRegistrationRequest.credential_json": 65_536,
    "fedcredit.v1.SessionRequest.session": 4_096,
    "fedcredit.v1.PortalRequestConsent.session": 4_096,
    "fedcredit.v1.ChallengeRequest.credential_id": 2_048,
}
BYTES_CAPS: dict[str, int | None] = {
    # the ledger's payload limit is a setting (ledger.max_payload_bytes): checked there
    "fedcredit.v1.NewEntry.payload_json": None,
    "fedcredit.v1.GetFeaturesRequest.on_behalf_of_cert_sha256": 64,
    "fedcredit.v1.AddCheckpointRequest.consistency_proof": 64,  # each hash is 32 bytes
    "fedcredit.v1.Attachment.content": 8 * 1024 * 1024,  # one application attachment
}
REPEATED_CAPS: dict[str, int | None] = {
    "fedcredit.v1.ListConsentsRequest.states": 64,
    "fedcredit.v1.ConsentTerms.scope": 64,
    "fedcredit.v1.ConsentTerms.nodes": 64,
    "fedcredit.v1.NarrowConsentRequest.remove_categories": 64,
    "fedcredit.v1.NarrowConsentRequest.remove_nodes": 64,
    "fedcredit.v1.AddCheckpointRequest.consistency_proof": 63,  # a tree of < 2^63 leaves
    "fedcredit.v1.GetFeaturesRequest.features": 4_096,
    "fedcredit.v1.GetBinEdgesRequest.features": 4_096,
    "fedcredit.v1.PublishModelRequest.features": 65_536,
    "fedcredit.v1.PublishModelRequest.calibration_pds": 1_000_000,
    # the services' own, configurable batch limits (BATCH_TOO_LARGE)
    "fedcredit.v1.GetFeaturesRequest.items": None,  # node max_batch
    "fedcredit.v1.AppendRequest.entries": None,  # ledger max_append_batch
    "fedcredit.v1.RecordUsesRequest.jti": None,  # consent max_uses_batch
    "fedcredit.v1.ReserveUsesRequest.uses": None,
    "fedcredit.v1.SettleUsesRequest.uses": None,
    "fedcredit.v1.WatchRequest.subscriptions": None,  # coordinator watch_max_subscriptions
    "fedcredit.v1.ScreenRequest.enterprises": None,  # node.screening.MAX_ENTERPRISES
}


class EnumValueUnknown(InvalidArgument):
    reason = "ENUM_VALUE_UNKNOWN"


class RequestTooLarge(InvalidArgument):
    reason = "REQUEST_TOO_LARGE"


class ValueOutOfRange(InvalidArgument):
    reason = "VALUE_OUT_OF_RANGE"


_STRING, _BYTES, _ENUM, _U64, _MSG, _MAP = range(6)
_KIND = {
    FieldDescriptor.TYPE_STRING: _STRING,
    FieldDescriptor.TYPE_BYTES: _BYTES,
    FieldDescriptor.TYPE_ENUM: _ENUM,
    FieldDescriptor.TYPE_UINT64: _U64,
    FieldDescriptor.TYPE_FIXED64: _U64,
    FieldDescriptor.TYPE_MESSAGE: _MSG,
}


@dataclass(frozen=True)
class _Rule:
    name: str  # the field's name as a caller wrote it (message.field)
    kind: int
    repeated: bool
    max_items: int | None
    max_len: int | None
    enum_values: frozenset[int]
    entry: tuple[_Rule | None, _Rule | None] = (None, None)  # a map's key and value rules


_PLANS: dict[str, dict[str, _Rule]] = {}


def _rule(f: FieldDescriptor) -> _Rule | None:
    kind = _KIND.get(f.type)
    repeated = f.is_repeated
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        # A map iterates as its keys: check each key and value by the entry's own fields.
        key, val = (_rule(f.message_type.fields_by_name[n]) for n in ("key", "value"))
        items = REPEATED_CAPS.get(f.full_name, MAX_REPEATED)
        name = f"{f.containing_type.name}.{f.name}"  # type: ignore[union-attr]
        return _Rule(name, _MAP, True, items, None, frozenset(), (key, val))
    if kind is None and not repeated:
        return None  # bool, 32-bit and signed 64-bit integers, doubles: every value parses
    name = f"{f.containing_type.name}.{f.name}"  # type: ignore[union-attr]
    max_len = None
    if kind == _STRING:
        max_len = STRING_CAPS.get(f.full_name, MAX_STRING)
    elif kind == _BYTES:
        max_len = BYTES_CAPS.get(f.full_name, MAX_BYTES)
    enums = frozenset(v.number for v in f.enum_type.values) if f.enum_type else frozenset()
    max_items = REPEATED_CAPS.get(f.full_name, MAX_REPEATED) if repeated else None
    return _Rule(name, -1 if kind is None else kind, repeated, max_items, max_len, enums)


def _plan(d: Descriptor) -> dict[str, _Rule]:
    plan = _PLANS.get(d.full_name)
    if plan is None:
        plan = {}
        for f in d.fields:
            r = _rule(f)
            if r is not None:
                plan[f.name] = r
        _PLANS[d.full_name] = plan
    return plan


def _check_value(rule: _Rule, v: Any) -> None:
    k = rule.kind
    if k == _MSG:
        check_request(v)
    elif k in (_STRING, _BYTES):
        if rule.max_len is not None and len(v) > rule.max_len:
            unit = "characters" if k == _STRING else "bytes"
            raise RequestTooLarge(
                f"{rule.name} holds {len(v)} {unit}; at most {rule.max_len} are accepted",
                field=rule.name,
                max=rule.max_len,
                got=len(v),
            )
    elif k == _ENUM:
        if v not in rule.enum_values:
            raise EnumValueUnknown(
                f"{rule.name} holds {int(v)}, which is not one of its defined values",
                field=rule.name,
            )
    elif k == _U64 and v > MAX_UINT64:
        raise ValueOutOfRange(
            f"{rule.name} must be below 2^63, got {int(v)}", field=rule.name, max=MAX_UINT64
        )


def check_request(msg: Any) -> None:
    """Raise the first shape error of ``msg`` (and of the messages it holds), if any."""
    plan = _plan(msg.DESCRIPTOR)
    if not plan:
        return
    for f, value in msg.ListFields():  # only the fields set: a default never fails
        rule = plan.get(f.name)
        if rule is None:
            continue
        if rule.repeated:
            n = len(value)
            if rule.max_items is not None and n > rule.max_items:
                raise RequestTooLarge(
                    f"{rule.name} holds {n} items; at most {rule.max_items} are accepted",
                    field=rule.name,
                    max=rule.max_items,
                    got=n,
                )
            if rule.kind == _MAP:
                key_rule, value_rule = rule.entry
                for k, v in value.items():
                    if key_rule is not None:
                        _check_value(key_rule, k)
                    if value_rule is not None:
                        _check_value(value_rule, v)
            elif rule.kind >= 0:
                for v in value:
                    _check_value(rule, v)
        else:
            _check_value(rule, value)
