"""Node settings: the ``[node]`` table of the deployment file, with documented defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedcredit.common.config import ConfigError, Deployment, Section

KEYS = frozenset(
    {
        "max_batch",
        "stream_chunk",
        "cache_size",
        "min_bin_count",
        "checkpoint_publish_interval",
        "log_checkpoint_interval",
        "disclosure_database",
        "log_key_dir",
        "max_workers",
        "ledger_verifier_key",
        "log_max_delay",
        "witness",
        "disclosure_synchronous",
        "verify_workers",
        "warm_cache",
    }
)


@dataclass(frozen=True)
class NodeSettings:
    max_batch: int = 1000  # enterprises per GetFeatures request (and per stream message)
    stream_chunk: int = 256  # default enterprises per StreamFeatures message
    cache_size: int = 200_000  # feature vectors kept in memory (LRU); flushed on every load
    min_bin_count: int = 20  # every GetBinEdges bin holds at least this many enterprises
    checkpoint_publish_interval: float = 10.0  # s between publications to the central ledger
    log_checkpoint_interval: float = 1.0  # s: the disclosure log signs at most this often
    # Disclosure log database; empty: next to the node's SQLite file
    # (``<name>-disclosures.sqlite``), or the same PostgreSQL database.
    disclosure_database: str = ""
    # Where the disclosure log's Ed25519 signing key lives (created on first start);
    # empty: ``<deployment dir>/data``.
    log_key_dir: str = ""
    max_workers: int = 16
    # The central ledger's checkpoint verifier key (C2SP vkey "name+id+key") the witness
    # trusts; empty: the key the ledger published in the deployment (keys/ledger.vkey).
    ledger_verifier_key: str = ""
    # Mount the ledger's WitnessService on the node's server (cosign the ledger's checkpoints).
    witness: bool = True
    # s the disclosure log's sequencer waits to fill a group commit. 0: commit at once
    # (concurrent requests still share a commit while the previous one is being written).
    log_max_delay: float = 0.0
    # SQLite disclosure log: "full" fsyncs every commit (survives power loss); "normal"
    # (WAL) survives a crash of the node process but may lose the last commits on power loss.
    disclosure_synchronous: str = "full"
    # Worker processes that verify a batch's consent signatures next to the serving
    # thread (node.sigpool). -1: one per core besides one (at most 8); 0: none.
    verify_workers: int = -1
    # Compute every enterprise's features ahead (at start and after each load) when the
    # population fits in cache_size, so first-time requests read no raw records.
    warm_cache: bool = True

    def __post_init__(self) -> None:
        checks = (
            ("max_batch", 1 <= self.max_batch <= 100_000, "between 1 and 100000"),
            ("stream_chunk", 1 <= self.stream_chunk <= self.max_batch, "between 1 and max_batch"),
            ("cache_size", self.cache_size >= 0, ">= 0"),
            ("min_bin_count", self.min_bin_count >= 1, ">= 1"),
            ("checkpoint_publish_interval", 0.1 <= self.checkpoint_publish_interval <= 86400, "between 0.1 and 86400 s"),
            ("log_checkpoint_interval", 0 <= self.log_checkpoint_interval <= 3600, "between 0 and 3600 s"),
            ("max_workers", 1 <= self.max_workers <= 256, "between 1 and 256"),
            ("log_max_delay", 0 <= self.log_max_delay <= 1, "between 0 and 1 s"),
            ("disclosure_synchronous", self.disclosure_synchronous in ("full", "normal"), "full or normal"),
            ("verify_workers", -1 <= self.verify_workers <= 64, "between -1 and 64"),
        )  # fmt: skip
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"[node] {key} must be {what}, got {getattr(self, key)!r}")

    @classmethod
    def from_section(cls, s: Section) -> NodeSettings:
        s.check_keys(KEYS)
        d = cls()
        return cls(
            max_batch=s.get_int("max_batch", d.max_batch, min=1, max=100_000),
            stream_chunk=s.get_int("stream_chunk", d.stream_chunk, min=1),
            cache_size=s.get_int("cache_size", d.cache_size, min=0),
            min_bin_count=s.get_int("min_bin_count", d.min_bin_count, min=1),
            checkpoint_publish_interval=s.get_float(
                "checkpoint_publish_interval", d.checkpoint_publish_interval, min=0.1
            ),
            log_checkpoint_interval=s.get_float(
                "log_checkpoint_interval", d.log_checkpoint_interval, min=0
            ),
            disclosure_database=s.get_str("disclosure_database", d.disclosure_database),
            log_key_dir=s.get_str("log_key_dir", d.log_key_dir),
            max_workers=s.get_int("max_workers", d.max_workers, min=1),
            ledger_verifier_key=s.get_str("ledger_verifier_key", d.ledger_verifier_key),
            witness=s.get_bool("witness", d.witness),
            warm_cache=s.get_bool("warm_cache", d.warm_cache),
            log_max_delay=s.get_float("log_max_delay", d.log_max_delay, min=0, max=1),
            disclosure_synchronous=s.get_str(
                "disclosure_synchronous", d.disclosure_synchronous, choices=("full", "normal")
            ),
            verify_workers=s.get_int("verify_workers", d.verify_workers, min=-1, max=64),
        )

    def signature_workers(self) -> int:
        """How many signature worker processes to run (``verify_workers`` resolved)."""
        from fedcredit.node.sigpool import default_workers

        return default_workers() if self.verify_workers < 0 else self.verify_workers

    @classmethod
    def from_deployment(cls, dep: Deployment) -> NodeSettings:
        return cls.from_section(dep.section("node"))


def disclosure_url(node_database: str, settings: NodeSettings) -> str:
    """The disclosure log's database URL (see ``NodeSettings.disclosure_database``)."""
    if settings.disclosure_database:
        return settings.disclosure_database
    if node_database.startswith("sqlite:///"):
        path = Path(node_database[len("sqlite:///") :])
        return (
            f"sqlite:///{path.with_name(path.stem + '-disclosures' + (path.suffix or '.sqlite'))}"
        )
    return node_database
