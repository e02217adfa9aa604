"""The node's access policy as data: which roles may ask for which purposes (default deny).

Modelled on X-Road: the node itself decides whom it answers, from the caller's verified
certificate (organisation id and role), whatever another service has checked before.

- The coordinator asks **on behalf of a bank** (the request names the bank and its
  certificate SHA-256, to which the consent token must be bound) for credit assessment,
  guarantee and post-loan monitoring. The features feed a score; they are not released
  to the bank, so a score-only consent suffices.
- A bank asks **directly, only for model training, only for itself**: every token must be
  bound to the calling bank's own certificate and addressed to it, i.e. the enterprise
  granted *this* bank a model-training consent (its own borrower). Features are released
  to the bank, so a score-only consent is refused.
- Nobody else, for nothing else. Bin edges (population aggregates, no consent) go to the
  coordinator and to banks for model training only.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from fedcredit.common.departments import PURPOSES
from fedcredit.common.errors import RoleNotAllowed
from fedcredit.common.tls import Identity
from fedcredit.common.wire import VIA_VALUES
from fedcredit.node.errors import (
    OnBehalfOfMismatch,
    OnBehalfOfRequired,
    PurposeNotAllowed,
    PurposeRequired,
    UnknownBank,
    ViaNotAllowed,
)

OnBehalf = Literal["bank", "self"]


@dataclass(frozen=True, slots=True)
class Rule:
    role: str
    purposes: frozenset[str]
    on_behalf: OnBehalf  # "bank": the request names the bank; "self": the caller is the bank
    release: bool  # features reach the bank itself (score-only consents do not allow it)


def check_via(caller: Identity, via: str) -> None:
    """``via`` is provenance the coordinator vouches for (it verified the portal's
    delegation ticket); a bank calling directly acts through no portal, and a value this
    build does not know is refused rather than written to the log."""
    if via and caller.role != "coordinator":
        raise ViaNotAllowed(f"only the coordinator says how a request reached it; {caller.org_id} ({caller.role}) sent via={via[:40]!r}")  # fmt: skip
    if via not in VIA_VALUES:
        raise ViaNotAllowed(f"expected via of {VIA_VALUES}, got {via[:40]!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    """Who the consent tokens must be bound to, and whether features are released."""

    bank_org: str
    bank_cert_sha256: bytes
    release: bool
    # Provenance the coordinator vouches for ("portal": a person's delegated session), written
    # to the disclosure entries; never part of any decision here (the node cannot check it).
    via: str = ""


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("coordinator", frozenset({"credit_assessment", "guarantee", "post_loan_monitoring"}), "bank", False),
    Rule("bank", frozenset({"model_training"}), "self", True),
)  # fmt: skip

# Population aggregates (bin edges): role -> purposes.
DEFAULT_AGGREGATE_RULES: dict[str, frozenset[str]] = {
    "coordinator": frozenset({"model_training"}),
    "bank": frozenset({"model_training"}),
}


@dataclass(frozen=True)
class AccessPolicy:
    rules: Sequence[Rule] = DEFAULT_RULES
    aggregate_rules: dict[str, frozenset[str]] | None = None
    banks: Collection[str] | None = None  # known bank org ids (None: not checked)

    def _purpose(self, purpose: str) -> str:
        if not purpose:
            raise PurposeRequired(f"the request must name a purpose, one of {', '.join(PURPOSES)}")
        if purpose not in PURPOSES:
            raise PurposeRequired(f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}")
        return purpose

    def decide(
        self,
        caller: Identity,
        purpose: str,
        on_behalf_of: str,
        on_behalf_cert: bytes,
        via: str = "",
    ) -> Decision:
        """Allow the request or raise the precise refusal (default deny). ``via``: the
        request's provenance, accepted from the coordinator only (:func:`check_via`)."""
        check_via(caller, via)
        purpose = self._purpose(purpose)
        roles = [r for r in self.rules if r.role == caller.role]
        if not roles:
            allowed = sorted({r.role for r in self.rules})
            raise RoleNotAllowed(
                f"{caller.org_id} has role {caller.role!r}; this node answers only {', '.join(allowed)}",
                role=caller.role,
            )
        rule = next((r for r in roles if purpose in r.purposes), None)
        if rule is None:
            ok = sorted({p for r in roles for p in r.purposes})
            raise PurposeNotAllowed(
                f"role {caller.role!r} may ask this node for {', '.join(ok)}, not for {purpose!r}",
                role=caller.role,
                purpose=purpose,
            )
        if rule.on_behalf == "self":
            if on_behalf_of and on_behalf_of != caller.org_id:
                raise OnBehalfOfMismatch(
                    f"a bank asks only for itself: you are {caller.org_id}, the request names {on_behalf_of}"
                )
            if on_behalf_cert and on_behalf_cert != caller.cert_sha256:
                raise OnBehalfOfMismatch(
                    "a bank asks only for itself: on_behalf_of_cert_sha256 is not your certificate's hash"
                )
            return Decision(caller.org_id, caller.cert_sha256, rule.release)
        if not on_behalf_of:
            raise OnBehalfOfRequired(
                f"role {caller.role!r} must name the bank it acts for in on_behalf_of"
            )
        if len(on_behalf_cert) != 32:
            raise OnBehalfOfRequired(
                "on_behalf_of_cert_sha256 must be the bank certificate's SHA-256 (32 bytes); "
                f"got {len(on_behalf_cert)} bytes"
            )
        if self.banks is not None and on_behalf_of not in self.banks:
            raise UnknownBank(
                f"{on_behalf_of!r} is not a bank of this deployment", bank=on_behalf_of
            )
        return Decision(on_behalf_of, on_behalf_cert, rule.release, via)

    def decide_aggregate(self, caller: Identity, purpose: str) -> None:
        purpose = self._purpose(purpose)
        rules = (
            self.aggregate_rules if self.aggregate_rules is not None else DEFAULT_AGGREGATE_RULES
        )
        if caller.role not in rules:
            raise RoleNotAllowed(
                f"{caller.org_id} has role {caller.role!r}; bin edges go only to "
                + ", ".join(sorted(rules)),
                role=caller.role,
            )
        if purpose not in rules[caller.role]:
            raise PurposeNotAllowed(
                f"bin edges are given for {', '.join(sorted(rules[caller.role]))}, not for {purpose!r}",
                purpose=purpose,
            )
