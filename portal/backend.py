"""What the portal asks of the services, through their published clients only, under the
portal's own certificate (role ``portal``): PasskeyService at the consent service for
every ceremony and decision, and the ledger for the entries about a signed-in enterprise
with their inclusion proofs (verified again in the browser)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from fedcredit.common.config import Deployment
from fedcredit.consent.passkey_client import PasskeyClient
from fedcredit.ledger.client import LedgerClient
from fedcredit.market.client import FundMarketClient


@dataclass(frozen=True)
class ProvenEntries:
    """Entries about one enterprise, each with its inclusion proof, against one checkpoint."""

    checkpoint: str  # the signed note
    tree_size: int
    log_key: str  # the log's signed-note verifier key (vkey)
    entries: list[dict[str, Any]]  # index, data (text), proof (base64 hashes)


class Backend:
    def __init__(
        self,
        passkeys: PasskeyClient,
        ledger: LedgerClient | None,
        market: FundMarketClient | None = None,
    ) -> None:
        self.passkeys = passkeys
        self.ledger = ledger
        self.market = market  # the marketplace's pages (portal/market_pages.py)
        self._log_key: str | None = None

    @classmethod
    def from_deployment(cls, dep: Deployment, org: str) -> Backend:
        ledger = LedgerClient.from_deployment(dep, org) if "ledger" in dep.services else None
        market = None
        if "market" in dep.services:
            svc = dep.service("market")
            market = FundMarketClient(svc.address, dep.tls(org), server_org=svc.org_id)
        return cls(PasskeyClient.from_deployment(dep, org), ledger, market)

    def close(self) -> None:
        self.passkeys.close()
        if self.ledger is not None:
            self.ledger.close()
        if self.market is not None:
            self.market.close()

    def log_key(self) -> str:
        if self._log_key is None and self.ledger is not None:
            self._log_key = str(self.ledger.log_info().log_key)
        return self._log_key or ""

    def checkpoint(self) -> tuple[str, str]:
        """The ledger's latest signed checkpoint and the log's verifier key."""
        if self.ledger is None:
            return "", ""
        return self.ledger.checkpoint(), self.log_key()

    def consistency(self, old_size: int, new_size: int) -> list[str]:
        """RFC 9162 consistency proof between two tree sizes (base64 hashes)."""
        if self.ledger is None:
            return []
        return [base64.b64encode(h).decode() for h in self.ledger.consistency_proof(old_size, new_size)]  # fmt: skip

    def entries_about(self, enterprise: str, limit: int = 5000) -> ProvenEntries:
        if self.ledger is None:
            return ProvenEntries("", 0, "", [])
        note, size, out = "", 0, []
        for page in self.ledger.list_by_subject(enterprise):
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
