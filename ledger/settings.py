"""Ledger settings as data: batching, checkpoints, payload limits, and who may append what.

Parsed from the ``[ledger]`` section of a deployment file; every key is
optional and defaults to the value documented here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fedcredit.common.config import Section
from fedcredit.common.errors import ConfigError

# Which certificate roles may append each entry kind to the central ledger.
# A kind missing here cannot be appended through the service at all.
DEFAULT_APPEND_RIGHTS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "score_access": frozenset({"coordinator"}),
        "guarantee_decision": frozenset({"coordinator"}),
        "guarantee_outcome": frozenset({"coordinator"}),
        "model_published": frozenset({"coordinator"}),
        "model_activated": frozenset({"coordinator"}),
        "training_round": frozenset({"coordinator"}),
        "consent_event": frozenset({"consent"}),
        "consent_key": frozenset({"consent"}),
        "node_checkpoint": frozenset({"department"}),
        "feature_catalog": frozenset({"department"}),
        "operator_note": frozenset({"operator"}),
        "market_product": frozenset({"market"}),
        "market_need": frozenset({"market"}),
        "market_reveal": frozenset({"market"}),
        "market_loan": frozenset({"market"}),
        "market_rating_run": frozenset({"market"}),
        "market_push": frozenset({"market"}),
        "market_warning": frozenset({"market"}),
        "market_fund": frozenset({"market"}),
        # the policy-fund service (policies/): its own kinds, nothing else
        "policy_published": frozenset({"policy"}),
        "policy_screening_run": frozenset({"policy"}),
        "policy_screening": frozenset({"policy"}),
        "policy_award_notified": frozenset({"policy"}),
        "policy_award_declined": frozenset({"policy"}),
        "policy_payment": frozenset({"policy"}),
        "policy_application": frozenset({"policy"}),
        "policy_tracking": frozenset({"policy"}),
        "policy_self_evaluation": frozenset({"policy"}),
        "policy_tracking_aggregate": frozenset({"policy"}),
    }
)

# Roles that may read any entry: GetEntries, Export, ListBySubject for any enterprise,
# whole entries in inclusion proofs, and the tlog-tiles entry bundles (LedgerSettings.
# may_read_all is the one check all of them use).
DEFAULT_AUDIT_ROLES: frozenset[str] = frozenset({"auditor", "operator", "coordinator"})


@dataclass(frozen=True)
class LogSettings:
    """How the sequencer batches and signs (used by the library and the service)."""

    max_batch: int = 2000  # entries per group commit
    # Seconds the sequencer waits to fill a batch. 0 = take what is queued: while
    # one batch is being made durable (an fsync), the next one accumulates, which
    # batches concurrent callers without adding latency to a lone one.
    max_delay: float = 0.0
    checkpoint_interval: float = 1.0  # at most one checkpoint per this many seconds
    max_payload_bytes: int = 16 * 1024  # canonical JSON bytes of one payload
    max_pending: int = 200_000  # queued entries before appends are refused
    witness_timeout: float = 5.0  # seconds per witness call
    # Start re-checks the whole store (ledger.fsck) up to this many entries (about
    # a second at the measured rate); above it, only what was appended since the
    # last verified size (run `fedcredit ledger fsck` for the rest).
    start_full_check_max: int = 250_000
    # Pushes to a witness that failed are retried with exponential back-off
    # (from witness_retry_min up to witness_retry_max seconds) until it cosigns.
    witness_retry_min: float = 0.5
    witness_retry_max: float = 30.0
    # A witness's cosignature of the latest checkpoint is renewed this often while the
    # log is idle: its timestamp is what `audit checkpoint --max-age` checks.
    witness_refresh: float = 10.0

    def __post_init__(self) -> None:
        checks = (
            ("max_batch", self.max_batch >= 1, ">= 1"),
            ("max_delay", 0 <= self.max_delay <= 1, "between 0 and 1 seconds"),
            (
                "checkpoint_interval",
                0 <= self.checkpoint_interval <= 3600,
                "between 0 and 3600 seconds",
            ),
            ("max_payload_bytes", 64 <= self.max_payload_bytes <= 1 << 20, "between 64 and 1 MiB"),
            ("max_pending", self.max_pending >= self.max_batch, ">= max_batch"),
            ("witness_timeout", self.witness_timeout > 0, "> 0"),
            ("start_full_check_max", self.start_full_check_max >= 0, ">= 0"),
            ("witness_refresh", self.witness_refresh > 0, "> 0"),
            (
                "witness_retry_max",
                0 < self.witness_retry_min <= self.witness_retry_max,
                ">= witness_retry_min > 0",
            ),
        )
        for key, ok, want in checks:
            if not ok:
                raise ConfigError(f"ledger.{key} must be {want}; got {getattr(self, key)!r}")


@dataclass(frozen=True)
class LedgerSettings:
    """The central ledger service."""

    origin: str = "fedcredit/ledger"
    log: LogSettings = field(default_factory=LogSettings)
    append_rights: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: DEFAULT_APPEND_RIGHTS
    )
    audit_roles: frozenset[str] = DEFAULT_AUDIT_ROLES
    witness_quorum: int = 0  # cosignatures GetCheckpoint waits for when asked for "witnessed"
    max_entries_per_call: int = 10_000  # GetEntries / Export page limit per message
    max_append_batch: int = 1000  # entries in one Append call
    # host:port of the read-only C2SP tlog-tiles HTTPS interface; "" = not served. The
    # checkpoint and hash tiles are public; entry bundles go only to a client certificate
    # whose role may_read_all admits (ledger.tiles_http)
    tiles_address: str = ""

    def may_append(self, role: str, kind: str) -> bool:
        return role in self.append_rights.get(kind, frozenset())

    def may_read_all(self, role: str) -> bool:
        """Whether a caller of ``role`` reads every entry (gRPC reads and tiles alike)."""
        return role in self.audit_roles


def load_settings(section: Section) -> LedgerSettings:
    """Build settings from the deployment's ``[ledger]`` table (unknown keys are refused)."""
    section.check_keys(
        {
            "origin",
            "max_batch",
            "max_delay",
            "checkpoint_interval",
            "max_payload_bytes",
            "max_pending",
            "witness_timeout",
            "start_full_check_max",
            "witness_retry_min",
            "witness_retry_max",
            "witness_refresh",
            "witness_quorum",
            "max_entries_per_call",
            "max_append_batch",
            "append_rights",
            "signing_key",
            "witnesses",
            "tiles_address",
        }
    )
    d = LogSettings()
    log = LogSettings(
        max_batch=section.get_int("max_batch", d.max_batch, min=1),
        max_delay=section.get_float("max_delay", d.max_delay, min=0, max=1),
        checkpoint_interval=section.get_float("checkpoint_interval", d.checkpoint_interval, min=0),
        max_payload_bytes=section.get_int("max_payload_bytes", d.max_payload_bytes, min=64),
        max_pending=section.get_int("max_pending", d.max_pending, min=1),
        witness_timeout=section.get_float("witness_timeout", d.witness_timeout, min=0.001),
        start_full_check_max=section.get_int("start_full_check_max", d.start_full_check_max, min=0),
        witness_retry_min=section.get_float("witness_retry_min", d.witness_retry_min, min=0.001),
        witness_retry_max=section.get_float("witness_retry_max", d.witness_retry_max, min=0.001),
        witness_refresh=section.get_float("witness_refresh", d.witness_refresh, min=0.001),
    )
    base = LedgerSettings()
    tiles = section.get_str("tiles_address", base.tiles_address)
    host, sep, port = tiles.rpartition(":")
    if tiles and (not sep or not host or not port.isdigit() or int(port) > 65535):
        raise ConfigError(f"[ledger] tiles_address must be host:port or empty; got {tiles!r}")
    rights = dict(base.append_rights)
    # [ledger.append_rights] KIND = ["role", ...] overrides (or adds) one kind.
    table = section.get_table("append_rights")
    for kind in table.values:
        roles = table.get_list(kind)
        if not all(isinstance(r, str) for r in roles):
            raise ConfigError(
                f"[ledger.append_rights] {kind} must be a list of role names; got {roles!r}"
            )
        rights[kind] = frozenset(roles)
    return LedgerSettings(
        origin=section.get_str("origin", base.origin),
        log=log,
        append_rights=MappingProxyType(rights),
        witness_quorum=section.get_int("witness_quorum", base.witness_quorum, min=0),
        max_entries_per_call=section.get_int(
            "max_entries_per_call", base.max_entries_per_call, min=1
        ),
        max_append_batch=section.get_int("max_append_batch", base.max_append_batch, min=1),
        tiles_address=tiles,
    )
