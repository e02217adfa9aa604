"""The fedcredit ledger: an append-only Merkle log with signed checkpoints.

Layout (rules first, then storage, service and commands):

* ``merkle``, ``proofs`` — RFC 9162 hashing, proof generation and verification;
* ``entry`` — the RFC 8785 entry envelope with its hash chain;
* ``checkpoint`` — C2SP signed-note checkpoints and tlog-cosignatures (Ed25519);
* ``witness`` — cosigning rules, the witness's persistent state, WitnessService;
* ``audit``, ``export`` — offline verification of exports, bundles and checkpoints;
* ``settings`` — batching, checkpoint interval and append rights, as data;
* ``store`` — the append-only SQLAlchemy store; ``log`` — the sequencer (``Log``,
  an ``EvidenceSink``); ``service`` — the gRPC LedgerService; ``cli`` — commands;
* ``client`` — the typed gRPC clients (``LedgerClient``, ``AsyncLedgerClient``,
  ``WitnessClient``), the SDK side: no store, no SQLAlchemy.
"""
