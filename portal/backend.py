"""What the portal asks of the services, through their published clients only, under the
portal's own certificate (role ``portal``): PasskeyService at the consent service for
every ceremony and decision, the ledger for the entries about a signed-in enterprise
with their inclusion proofs and for the auditor's witnessed checkpoint (all verified
again in the browser)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcredit.common.config import Deployment
from fedcredit.common.errors import ConfigError
from fedcredit.consent.passkey_client import PasskeyClient
from fedcredit.coordinator.client import CoordinatorClient
from fedcredit.ledger.client import LedgerClient
from fedcredit.ledger.errors import NoCheckpoint, NoteMalformed
from fedcredit.ledger.keys import keys_dir, read_vkey
from fedcredit.market.client import FundMarketClient
from fedcredit.policies.client import PolicyClient


@dataclass(frozen=True)
class ProvenEntries:
    """Entries about one enterprise, each with its inclusion proof, against one checkpoint."""

    checkpoint: str  # the signed note
    tree_size: int
    log_key: str  # the log's signed-note verifier key (vkey)
    entries: list[dict[str, Any]]  # index, data (text), proof (base64 hashes)


@dataclass(frozen=True)
class WitnessedCheckpoint:
    """A signed checkpoint with its cosignatures, and the keys to check them with."""

    note: str  # the signed note: the log's signature, then each witness's cosignature
    log_key: str  # the log's verifier key (vkey)
    witness_keys: tuple[str, ...]  # the witnesses' published vkeys (type 0x04)
    quorum: int  # cosignatures the deployment requires (the ledger's witness_quorum)
    newest: str = ""  # the newest signed checkpoint (the same note when it is the witnessed one)


class Backend:
    """``audiences``: each service's organisation id (the ``aud`` of the delegation
    tickets the portal asks the consent service for, consent/delegation.py)."""

    def __init__(
        self,
        passkeys: PasskeyClient,
        ledger: LedgerClient | None,
        market: FundMarketClient | None = None,
        coordinator: CoordinatorClient | None = None,
        audiences: dict[str, str] | None = None,
    ) -> None:
        self.passkeys = passkeys
        self.ledger = ledger
        self.market = market  # the marketplace's pages (portal/market_pages.py)
        self.coordinator = coordinator  # the bank's scores and guarantees (portal/bank_pages.py)
        self.policies: PolicyClient | None = None  # the policy-fund pages (portal/policy_pages.py)
        self.audiences = {"ledger": "ledger", "market": "market", "coordinator": "coordinator"}
        self.audiences.update(audiences or {})
        self._log_key: str | None = None
        self._quorum: int | None = None
        # The witnesses' cosigning keys the deployment publishes (signed-note vkeys,
        # ``<deployment dir>/keys/*.witness.vkey``, re-read for each auditor's page: a
        # witness publishes its key when it first starts): the page verifies each
        # cosignature against them in the browser.
        self.witness_keys: tuple[str, ...] = ()
        self.keys_dir: Path | None = None

    @classmethod
    def from_deployment(cls, dep: Deployment, org: str) -> Backend:
        ledger = LedgerClient.from_deployment(dep, org) if "ledger" in dep.services else None
        market = coordinator = None
        aud: dict[str, str] = {n: dep.service(n).org_id for n in ("ledger", "market", "coordinator") if n in dep.services}  # fmt: skip
        if "market" in dep.services:
            svc = dep.service("market")
            market = FundMarketClient(svc.address, dep.tls(org), server_org=svc.org_id)
        if "coordinator" in dep.services:
            svc = dep.service("coordinator")
            coordinator = CoordinatorClient(svc.address, dep.tls(org), server_org=svc.org_id, timeout=60)  # fmt: skip
        backend = cls(PasskeyClient.from_deployment(dep, org), ledger, market, coordinator, aud)
        backend.keys_dir = keys_dir(dep)
        if "policies" in dep.services:
            svc = dep.service("policies")
            backend.policies = PolicyClient(svc.address, dep.tls(org), server_org=svc.org_id)
            backend.audiences["policies"] = svc.org_id
        return backend

    def published_witnesses(self) -> tuple[str, ...]:
        """The witness keys the deployment publishes now, in name order; each parsed: a
        malformed file is CONFIG_INVALID naming it, never a key silently left out."""
        if self.keys_dir is not None:
            keys = []
            for path in sorted(self.keys_dir.glob("*.witness.vkey")):
                try:
                    keys.append(read_vkey(path).vkey)
                except NoteMalformed as exc:
                    raise ConfigError(f"the published witness key {path} is not valid: {exc.message}") from None  # fmt: skip
            self.witness_keys = tuple(keys)
        return self.witness_keys

    def close(self) -> None:
        self.passkeys.close()
        for c in (self.ledger, self.market, self.coordinator, self.policies):
            if c is not None:
                c.close()

    def log_key(self) -> str:
        if self._log_key is None and self.ledger is not None:
            self._log_key = str(self.ledger.log_info().log_key)
        return self._log_key or ""

    def checkpoint(self) -> tuple[str, str]:
        """The ledger's latest signed checkpoint and the log's verifier key."""
        if self.ledger is None:
            return "", ""
        return self.ledger.checkpoint(), self.log_key()

    def witnessed_checkpoint(self) -> WitnessedCheckpoint:
        """The newest checkpoint with the deployment's witness quorum of cosignatures (at
        least one when witnesses are published), else the newest signed one; with every
        cosignature collected for it (the ledger adds them to the note)."""
        witnesses = self.published_witnesses()
        if self.ledger is None:
            return WitnessedCheckpoint("", "", witnesses, 0)
        if self._quorum is None:  # the ledger's setting: read once
            self._quorum = int(self.ledger.log_info().witness_quorum)
        want = max(self._quorum, 1) if witnesses else 0
        newest = self.ledger.checkpoint()
        try:
            note = self.ledger.checkpoint(min_cosignatures=want) if want else newest
        except NoCheckpoint:  # nothing cosigned yet (witnesses down, or a new log)
            note = newest
        return WitnessedCheckpoint(note, self.log_key(), witnesses, self._quorum, newest)

    def consistency(self, old_size: int, new_size: int) -> list[str]:
        """RFC 9162 consistency proof between two tree sizes (base64 hashes)."""
        if self.ledger is None:
            return []
        return [base64.b64encode(h).decode() for h in self.ledger.consistency_proof(old_size, new_size)]  # fmt: skip

    def entries_about(self, enterprise: str, ticket: str, limit: int = 5000) -> ProvenEntries:
        """``ticket``: the enterprise's delegation ticket for the ledger (the portal's
        certificate alone reads no enterprise's entries)."""
        if self.ledger is None:
            return ProvenEntries("", 0, "", [])
        note, size, out = "", 0, []
        for page in self.ledger.delegated(ticket).list_by_subject(enterprise):
            note, size = page.checkpoint, int(page.tree_size)
            for pe in page.entries:
                out.append(
                    {
                        "index": int(pe.entry.index),
                        "data": bytes(pe.entry.data).decode(),
                        "proof": [base64.b64encode(bytes(h)).decode() for h in pe.inclusion_proof],
                    }
                )
            if len(out) >= limit:
                break
        return ProvenEntries(note, size, self.log_key(), out[-limit:])
