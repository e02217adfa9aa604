"""The consent service's settings (``[consent]`` in the deployment file), with defaults.

::

    [consent]
    issuer = "https://consent-service.fedcredit.invalid"  # default: from the service's org id
    leeway_s = 30             # clock skew tolerated by verifiers (max 60)
    jwks_ttl_s = 300          # how long verifiers cache the JWKS
    status_ttl_s = 30         # `ttl` of the signed status list: verifiers refetch after it
    status_lifetime_s = 600   # `exp` of a signed status list: verifiers fail closed after it
    key_publish_lead_s = 600  # a new key is published this long before it signs (>= jwks_ttl_s)
    pending_ttl_days = 14     # an unanswered request expires
    expiring_soon_days = 7    # default window of "expiring soon" listings
    expiry_sweep_s = 5        # how often expired consents are marked and announced
    max_list = 1000           # most consents one list call returns
    max_uses_batch = 1000     # most token uses one RecordUses call counts
    use_lease_s = 300         # a reserved use never committed nor released (its opener
                              # crashed) is released this long after it was reserved,
                              # ledgered as `use_released` (30-900; above any Score)
    evidence = "auto"         # where events go: "ledger", "store", or "auto" (ledger if configured)
    public_address = ""       # host:port of the read-only HTTPS server of the JWKS and status
                              # list (consent.public); set `issuer` to its https:// URL
    [consent.caps.<purpose>]  # fair-use cap overrides, see consent.policy
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedcredit.common.config import Deployment, Section
from fedcredit.common.errors import ConfigError
from fedcredit.consent.policy import (
    DEFAULT_CAPS,
    PurposeCap,
    caps_from_config,
    longest_validity_days,
)

KEYS = frozenset(
    {
        "issuer",
        "leeway_s",
        "jwks_ttl_s",
        "status_ttl_s",
        "status_lifetime_s",
        "key_publish_lead_s",
        "pending_ttl_days",
        "expiring_soon_days",
        "expiry_sweep_s",
        "max_list",
        "max_uses_batch",
        "use_lease_s",
        "evidence",
        "public_address",
        "caps",
    }
)


def default_issuer(org_id: str) -> str:
    # `.invalid` (RFC 6761): an identifier, never a host anybody contacts.
    return f"https://{org_id}.fedcredit.invalid"


@dataclass(frozen=True)
class ConsentSettings:
    issuer: str = default_issuer("consent-service")
    leeway_s: int = 30
    jwks_ttl_s: int = 300
    status_ttl_s: int = 30
    status_lifetime_s: int = 600
    key_publish_lead_s: int = 600
    pending_ttl_days: int = 14
    expiring_soon_days: int = 7
    expiry_sweep_s: float = 5.0
    max_list: int = 1000
    max_uses_batch: int = 1000
    use_lease_s: int = 300
    evidence: str = "auto"
    public_address: str = ""
    caps: Mapping[str, PurposeCap] = field(default_factory=lambda: dict(DEFAULT_CAPS))

    @property
    def status_uri(self) -> str:
        return f"{self.issuer}/statuslists/1"

    @property
    def key_retention_s(self) -> int:
        """A retired key stays published until every token it signed has expired."""
        return longest_validity_days(self.caps) * 86400 + self.leeway_s

    @classmethod
    def from_section(cls, section: Section, *, org_id: str) -> ConsentSettings:
        section.check_keys(KEYS)
        s = cls(
            issuer=section.get_str("issuer", default_issuer(org_id)),
            leeway_s=section.get_int("leeway_s", 30, min=0, max=60),
            jwks_ttl_s=section.get_int("jwks_ttl_s", 300, min=1),
            status_ttl_s=section.get_int("status_ttl_s", 30, min=1),
            status_lifetime_s=section.get_int("status_lifetime_s", 600, min=1),
            key_publish_lead_s=section.get_int("key_publish_lead_s", 600, min=0),
            pending_ttl_days=section.get_int("pending_ttl_days", 14, min=1),
            expiring_soon_days=section.get_int("expiring_soon_days", 7, min=1),
            expiry_sweep_s=section.get_float("expiry_sweep_s", 5.0, min=0.1),
            max_list=section.get_int("max_list", 1000, min=1),
            max_uses_batch=section.get_int("max_uses_batch", 1000, min=1),
            # at most the use window (consent.uses.USE_WINDOW_S): a use id is spent after it
            use_lease_s=section.get_int("use_lease_s", 300, min=30, max=900),
            evidence=section.get_str("evidence", "auto", choices=("auto", "ledger", "store")),
            public_address=section.get_str("public_address", ""),
            caps=caps_from_config(
                section.get_table("caps").values, f"{section.source}: [consent.caps]"
            ),
        )
        if s.status_lifetime_s < s.status_ttl_s:
            raise ConfigError(
                f"{section.source}: [consent] status_lifetime_s ({s.status_lifetime_s}) must be at least "
                f"status_ttl_s ({s.status_ttl_s})"
            )
        return s

    @classmethod
    def from_deployment(cls, deployment: Deployment) -> ConsentSettings:
        svc = deployment.service("consent")
        return cls.from_section(deployment.section("consent"), org_id=svc.org_id)
