"""The ledger as a library: one sequencer, group commit, signed checkpoints.

``Log`` is what a department node embeds as its disclosure log and what the
central LedgerService wraps. It implements ``common.evidence.EvidenceSink``::

    log = Log.open("sqlite:///var/tax/disclosures.sqlite", signing_key, "dept-tax/disclosures")
    receipt = log.append("feature_access", credit_code, {"request": digest})

Appends from any number of threads are queued; a single sequencer thread
takes everything queued (up to ``max_batch`` entries, waiting at most
``max_delay`` to fill a batch), assigns indexes, chains and hashes, writes the
entries and the tree nodes they complete in one transaction, and only then
answers the callers. A checkpoint is signed at most every
``checkpoint_interval`` seconds while the log grows, and on demand; before
signing, the sequencer proves the new tree consistent with the last signed
checkpoint and refuses to sign otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeAlias

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from fedcredit.common.errors import (
    DeadlineExceeded,
    ResourceExhausted,
    StoreUnavailable,
    Unavailable,
)
from fedcredit.common.evidence import Receipt
from fedcredit.ledger import checkpoint as cpmod
from fedcredit.ledger.checkpoint import Checkpoint, Note, NoteSignature, Signer, Verifier
from fedcredit.ledger.entry import (
    ZERO_HASH,
    canonical_payloads,
    check_actor,
    check_kind,
    check_payload,
    check_subject,
)
from fedcredit.ledger.errors import (
    EntryNotFound,
    InconsistentCheckpoint,
    IndexOutOfRange,
    LogClosed,
    NoCheckpoint,
    StoreCorrupt,
    VerificationError,
    WitnessConflict,
)
from fedcredit.ledger.merkle import (
    CompactRange,
    consistency_proof,
    inclusion_proof,
    inclusion_proofs,
    root_from_reader,
)
from fedcredit.ledger.proofs import verify_consistency
from fedcredit.ledger.settings import LogSettings

if TYPE_CHECKING:
    from fedcredit.ledger.fsck import FsckReport
from fedcredit.ledger.store import LedgerStore, StoredCheckpoint, StoredEntry

log = logging.getLogger(__name__)

_sha256 = __import__("hashlib").sha256


# An entry validated and canonicalised for :meth:`Log.submit_many`:
# (kind, actor, subject, canonical payload bytes).
PreparedEntry: TypeAlias = tuple[str, str, str | None, bytes]


class LogFull(ResourceExhausted):
    """Too many appends are queued; the caller should retry shortly."""

    reason = "LEDGER_QUEUE_FULL"


class WitnessEndpoint(Protocol):
    """A witness the log sends its checkpoints to (tlog-witness add-checkpoint)."""

    @property
    def name(self) -> str: ...

    @property
    def verifier(self) -> Verifier: ...

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: str) -> str:
        """Return the cosignature line, or raise WitnessConflict(size=...)."""
        ...


@dataclass
class WitnessStats:
    """One witness as the log's pushes saw it (also recorded in the store for `fedcredit
    status`)."""

    cosigned: int = 0
    refused: int = 0  # the witness answered with an error (conflict, bad proof, ...)
    unreachable: int = 0  # no answer (down, timeout)
    consecutive: int = 0  # failures since its last cosignature
    last_outcome: str = ""
    last_reason: str = ""
    retry_at: float = 0.0  # monotonic
    cosigned_mono: float = 0.0

    def failed(self, exc: BaseException, settings: LogSettings) -> None:
        unreachable = isinstance(exc, (Unavailable, DeadlineExceeded))
        self.unreachable += unreachable
        self.refused += not unreachable
        self.consecutive += 1
        self.last_outcome = "unreachable" if unreachable else "refused"
        self.last_reason = f"{getattr(exc, 'reason', type(exc).__name__)}: {exc}"[:500]
        backoff = settings.witness_retry_min * 2 ** min(self.consecutive - 1, 20)
        self.retry_at = time.monotonic() + min(settings.witness_retry_max, backoff)

    def succeeded(self) -> None:
        self.cosigned += 1
        self.consecutive = 0
        self.last_outcome = "cosigned"
        self.retry_at = 0.0
        self.cosigned_mono = time.monotonic()

    def snapshot(self, size: int) -> dict[str, Any]:
        return {
            "cosigned": self.cosigned,
            "refused": self.refused,
            "unreachable": self.unreachable,
            "consecutive_failures": self.consecutive,
            "last_outcome": self.last_outcome,
            "last_reason": self.last_reason,
            "cosigned_size": size,
        }


@dataclass
class _Append:
    items: list[PreparedEntry]
    future: Future[list[Receipt]]


@dataclass
class _ForceCheckpoint:
    future: Future[StoredCheckpoint]


def _entry_bytes(
    index: int,
    time_s: str,
    kind: str,
    actor: str,
    subject: str | None,
    payload: bytes,
    chain: bytes,
) -> bytes:
    """The RFC 8785 bytes of an entry, assembled directly.

    Valid because actor, kind, subject and time are restricted to characters
    JSON never escapes, the member order is the JCS order, and ``payload`` is
    already canonical (tested against ``Entry.encode`` in tests/ledger).
    """
    subj = b"null" if subject is None else b'"' + subject.encode() + b'"'
    return b"".join(
        (
            b'{"actor":"',
            actor.encode(),
            b'","chain":"',
            chain.hex().encode(),
            b'","index":',
            str(index).encode(),
            b',"kind":"',
            kind.encode(),
            b'","payload":',
            payload,
            b',"subject":',
            subj,
            b',"time":"',
            time_s.encode(),
            b'","v":1}',
        )
    )


def load_signer(key: Signer | Ed25519PrivateKey | bytes | str | Path, origin: str) -> Signer:
    """A note signer named ``origin`` from a Signer, a key object, PEM bytes or a PEM file path."""
    if isinstance(key, Signer):
        if key.name != origin:
            raise ValueError(f"the signing key is named {key.name!r}; the log origin is {origin!r}")
        return key
    if isinstance(key, Ed25519PrivateKey):
        return Signer(origin, key)
    if isinstance(key, (str, Path)):
        key = Path(key).read_bytes()
    return Signer.from_pem(origin, key)


class Log:
    """An append-only Merkle log with a single sequencer thread. Thread-safe."""

    def __init__(
        self,
        store: LedgerStore,
        signer: Signer,
        *,
        actor: str,
        settings: LogSettings | None = None,
        witnesses: Sequence[WitnessEndpoint] = (),
    ) -> None:
        self.store = store
        self.signer = signer
        self.origin = signer.name
        self.actor = check_actor(actor)
        self.settings = settings or LogSettings()
        self.witnesses = list(witnesses)
        self._cv = threading.Condition()
        self._pending: deque[_Append | _ForceCheckpoint] = deque()
        self._pending_entries = 0
        self._closed = False
        self._listeners: list[Callable[[StoredCheckpoint], None]] = []
        self._load_state()
        self.startup_check = self._check_store()
        self._witness_cv = threading.Condition()
        self._witness_due = False
        self.witness_stats: dict[str, WitnessStats] = {}
        self._fresh_cosigs: dict[str, tuple[int, str]] = {}  # witness -> (size, line)
        self._thread = threading.Thread(
            target=self._run, name=f"ledger-sequencer[{self.origin}]", daemon=True
        )
        self._thread.start()
        self._witness_thread: threading.Thread | None = None
        if self.witnesses:
            self._witness_thread = threading.Thread(
                target=self._witness_loop, name=f"ledger-witnessing[{self.origin}]", daemon=True
            )
            self._witness_thread.start()

    @classmethod
    def open(
        cls,
        url: str | Engine,
        signing_key: Signer | Ed25519PrivateKey | bytes | str | Path,
        origin: str,
        *,
        actor: str | None = None,
        settings: LogSettings | None = None,
        witnesses: Sequence[WitnessEndpoint] = (),
    ) -> Log:
        """Open (creating if needed) the log stored at ``url``.

        ``actor`` is the organisation recorded on entries appended through the
        EvidenceSink interface; it defaults to the first path segment of
        ``origin`` (``"dept-tax/disclosures"`` → ``"dept-tax"``).
        """
        signer = load_signer(signing_key, origin)
        store = LedgerStore.open(url)
        return cls(
            store,
            signer,
            actor=actor or origin.split("/", 1)[0],
            settings=settings,
            witnesses=witnesses,
        )

    # --- state ---------------------------------------------------------------------

    def _load_state(self) -> None:
        try:
            size = self.store.size()
            border_ids = CompactRange.border_ids(size)
            nodes = self.store.get_nodes([*border_ids, (0, size - 1)] if size else [])
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"the ledger store does not answer: {exc}") from exc
        missing = [nid for nid in border_ids if nid not in nodes]
        if missing:
            raise StoreCorrupt(f"the stored log of size {size} lacks tree nodes {missing[:5]}")
        self._cr = CompactRange(size, [nodes[nid] for nid in border_ids])
        self._last_leaf = nodes[(0, size - 1)] if size else ZERO_HASH
        self._last_time = ""
        if size:
            last = self.store.get_entries(size - 1, size)[0].data
            # time is the last member before "v"; a stored entry is canonical.
            self._last_time = last[last.rindex(b'"time":"') + 8 : last.rindex(b'","v":')].decode()
        cp = self.store.latest_checkpoint()
        self._last_cp = cp
        if cp is not None:
            if cp.size > size:
                raise StoreCorrupt(
                    f"the latest checkpoint has size {cp.size} but the store holds only {size} entries"
                )
            root = root_from_reader(self.store, cp.size)
            if root != cp.root:
                raise StoreCorrupt(
                    f"the stored tree at size {cp.size} has root {root.hex()}; "
                    f"the signed checkpoint says {cp.root.hex()}"
                )
        self._last_cp_time = time.monotonic() if cp else 0.0

    def _check_store(self) -> FsckReport:
        """Recompute what was appended since the last verified size (leaves, chain, tree,
        signed roots) and compare the size with what the witnesses cosigned; refuse to
        serve a store that does not match (``StoreCorrupt``, see ledger.fsck)."""
        from fedcredit.ledger.fsck import fsck, witness_states

        states, down = witness_states(self.witnesses, self.origin)
        for name, why in down.items():
            log.warning(
                "witness %s did not say what it cosigned (the start check goes on without it): %s",
                name,
                why,
            )
        try:
            report = fsck(
                self.store,
                self.verifier,
                full=self._cr.size <= self.settings.start_full_check_max,
                witnesses=states,
            )
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"the ledger store does not answer: {exc}") from exc
        except StoreCorrupt as exc:
            log.error("the ledger %s refuses to start: %s", self.origin, exc.message)
            self.store.close()
            raise
        log.info(
            "ledger %s: entries [%d, %d) verified at start in %.2f s",
            self.origin,
            report.checked_from,
            report.size,
            report.seconds,
        )
        return report

    @property
    def size(self) -> int:
        """Entries durably appended so far."""
        return self._cr.size

    @property
    def verifier(self) -> Verifier:
        return self.signer.verifier

    # --- appending -----------------------------------------------------------------

    def _submit(self, req: _Append | _ForceCheckpoint, n: int) -> None:
        with self._cv:
            if self._closed:
                raise LogClosed(f"the ledger {self.origin} is closed; no more appends are accepted")
            if n and self._pending_entries + n > self.settings.max_pending:
                raise LogFull(
                    f"{self._pending_entries} entries are already waiting to be written to "
                    f"{self.origin} (limit {self.settings.max_pending}); retry shortly",
                )
            self._pending.append(req)
            self._pending_entries += n
            self._cv.notify()

    def prepare(
        self, kind: str, subject: str | None, payload: Mapping[str, Any], actor: str | None = None
    ) -> PreparedEntry:
        """Validate one entry and canonicalise its payload (done in the caller's thread)."""
        _, data = check_payload(payload, self.settings.max_payload_bytes)
        return (
            check_kind(kind),
            self.actor if actor is None else check_actor(actor),
            check_subject(subject),
            data,
        )

    def prepare_each(
        self,
        kind: str,
        template: Mapping[str, Any],
        key: str,
        rows: Sequence[tuple[str | None, Any]],
    ) -> list[PreparedEntry]:
        """:meth:`prepare` of ``(kind, subject, {**template, key: value})`` for every
        ``(subject, value)`` of ``rows``, with the template canonicalised once (the same
        bytes; see ``ledger.entry.canonical_each``)."""
        kind = check_kind(kind)
        datas = canonical_payloads(
            template, key, [v for _, v in rows], self.settings.max_payload_bytes
        )
        return [
            (kind, self.actor, check_subject(s), d) for (s, _), d in zip(rows, datas, strict=True)
        ]

    def submit_many(self, items: list[PreparedEntry]) -> Future[list[Receipt]]:
        """Queue prepared entries as one atomic group; the future resolves once they are durable."""
        fut: Future[list[Receipt]] = Future()
        if not items:
            fut.set_result([])
            return fut
        self._submit(_Append(items, fut), len(items))
        return fut

    def append(
        self,
        kind: str,
        subject: str | None,
        payload: Mapping[str, Any],
        *,
        actor: str | None = None,
        timeout: float | None = None,
    ) -> Receipt:
        """EvidenceSink: durably append one entry (blocks until its batch is committed)."""
        fut = self.submit_many([self.prepare(kind, subject, payload, actor)])
        return fut.result(timeout)[0]

    def append_many(
        self,
        items: Sequence[tuple[str, str | None, Mapping[str, Any]]],
        *,
        actor: str | None = None,
        timeout: float | None = None,
    ) -> list[Receipt]:
        """Append several (kind, subject, payload) entries atomically and contiguously."""
        prepared = [self.prepare(k, s, p, actor) for k, s, p in items]
        return self.submit_many(prepared).result(timeout)

    def checkpoint(self, timeout: float | None = 30.0) -> StoredCheckpoint:
        """Sign a checkpoint now covering everything appended before this call (on demand)."""
        fut: Future[StoredCheckpoint] = Future()
        self._submit(_ForceCheckpoint(fut), 0)
        return fut.result(timeout)

    def on_checkpoint(self, callback: Callable[[StoredCheckpoint], None]) -> None:
        """Call ``callback`` (in the sequencer thread; keep it short) after each new checkpoint."""
        self._listeners.append(callback)

    # --- the sequencer --------------------------------------------------------------

    def _checkpoint_due_in(self) -> float | None:
        """Seconds until a checkpoint is due, or None when nothing new needs signing."""
        last = self._last_cp
        if self._cr.size == 0 or (last is not None and last.size == self._cr.size):
            return None
        return self._last_cp_time + self.settings.checkpoint_interval - time.monotonic()

    def _take(self) -> list[_Append | _ForceCheckpoint] | None:
        """Wait for work; return the requests of the next batch (None once closed and drained)."""
        s = self.settings
        with self._cv:
            while not self._pending:
                if self._closed:
                    return None
                due = self._checkpoint_due_in()
                if due is not None and due <= 0:
                    return []
                self._cv.wait(due)
            if s.max_delay > 0 and self._pending_entries < s.max_batch and not self._closed:
                deadline = time.monotonic() + s.max_delay
                while self._pending_entries < s.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            out: list[_Append | _ForceCheckpoint] = []
            n = 0
            while self._pending and (n < s.max_batch or not out):
                req = self._pending[0]
                if isinstance(req, _Append):
                    if n and n + len(req.items) > s.max_batch:
                        break
                    n += len(req.items)
                self._pending.popleft()
                out.append(req)
            self._pending_entries -= n
            return out

    def _run(self) -> None:
        while True:
            reqs = self._take()
            if reqs is None:
                break
            appends = [r for r in reqs if isinstance(r, _Append)]
            forced = [r for r in reqs if isinstance(r, _ForceCheckpoint)]
            if appends:
                try:
                    self._commit(appends)
                except Exception as exc:  # a bug must fail these callers, not hang them all
                    log.exception("the ledger sequencer failed to commit a batch")
                    try:
                        self._load_state()  # back to exactly what is durable
                    except Exception:
                        log.exception("could not reload the ledger state")
                    for req in appends:
                        if not req.future.done():
                            req.future.set_exception(exc)
            try:
                due = self._checkpoint_due_in()
                cp = None
                if forced or (due is not None and due <= 0):
                    cp = self._sign_checkpoint()
                for f in forced:
                    if cp is None:
                        cp = self._last_cp
                    if cp is None:
                        f.future.set_exception(
                            NoCheckpoint(f"the ledger {self.origin} is empty; nothing to sign")
                        )
                    else:
                        f.future.set_result(cp)
            except Exception as exc:  # never let the sequencer die
                log.exception("checkpoint signing failed")
                for f in forced:
                    if not f.future.done():
                        f.future.set_exception(exc)
                time.sleep(0.05)

    def _commit(self, reqs: list[_Append]) -> None:
        saved_cr, saved_leaf, saved_time = self._cr.copy(), self._last_leaf, self._last_time
        cr = self._cr
        now = format_time_fast()
        if now < self._last_time:  # entry times never go backwards
            now = self._last_time
        chain = self._last_leaf
        entry_rows: list[tuple[int, bytes, bytes, str, str, str | None]] = []
        new_nodes: list[tuple[int, int, bytes]] = []
        receipts: list[list[Receipt]] = []
        for req in reqs:
            rs: list[Receipt] = []
            for kind, actor, subject, payload in req.items:
                idx = cr.size
                data = _entry_bytes(idx, now, kind, actor, subject, payload, chain)
                leaf = _sha256(b"\x00" + data).digest()
                entry_rows.append((idx, leaf, data, kind, actor, subject))
                cr.append(leaf, new_nodes)
                rs.append(Receipt(idx, leaf))
                chain = leaf
            receipts.append(rs)
        try:
            self.store.append_batch(entry_rows, [n for n in new_nodes if n[0]])
        except Exception as exc:
            self._cr, self._last_leaf, self._last_time = saved_cr, saved_leaf, saved_time
            err = StoreUnavailable(
                f"the ledger {self.origin} could not durably write {len(entry_rows)} entries: {exc}"
            )
            log.error("ledger batch commit failed: %s", exc)
            for req in reqs:
                req.future.set_exception(err)
            return
        self._last_leaf = chain
        self._last_time = now
        for req, rs in zip(reqs, receipts, strict=True):
            req.future.set_result(rs)

    def _sign_checkpoint(self) -> StoredCheckpoint | None:
        size = self._cr.size
        last = self._last_cp
        if size == 0 or (last is not None and last.size == size):
            return last
        root = self._cr.root()
        if last is not None:
            proof = consistency_proof(self.store, last.size, size)
            try:
                verify_consistency(last.size, size, proof, last.root, root)
            except VerificationError as exc:
                raise InconsistentCheckpoint(
                    f"refusing to sign size {size}: the tree is not consistent with the checkpoint "
                    f"of size {last.size} signed before ({exc.message})"
                ) from exc
        note = cpmod.sign_checkpoint(Checkpoint(self.origin, size, root), self.signer)
        cp = StoredCheckpoint(size, root, note, time.time())
        self.store.add_checkpoint(cp)
        self._last_cp = cp
        self._last_cp_time = time.monotonic()
        for cb in self._listeners:
            try:
                cb(cp)
            except Exception:
                log.exception("checkpoint listener failed")
        if self.witnesses:
            with self._witness_cv:
                self._witness_due = True
                self._witness_cv.notify()
        return cp

    # --- witnesses ----------------------------------------------------------------

    def _witness_loop(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(
            max_workers=min(32, len(self.witnesses)), thread_name_prefix="witness"
        )
        try:
            self._witness_rounds(pool)
        finally:
            pool.shutdown(wait=False)

    def _witness_work(self, known: dict[str, int]) -> tuple[list[WitnessEndpoint], float | None]:
        """The witnesses to push to now, and the seconds until the next one is due: a
        witness that has not cosigned the latest checkpoint (retried with back-off) or
        whose cosignature is older than ``witness_refresh`` (a fresh timestamp, so an
        idle log's checkpoint still proves it is current)."""
        cp, now, s = self._last_cp, time.monotonic(), self.settings
        if cp is None:
            return [], None
        due: list[WitnessEndpoint] = []
        wait: float | None = None
        for w in self.witnesses:
            st = self.witness_stats.setdefault(w.name, WitnessStats())
            at = (
                st.retry_at
                if known.get(w.name, 0) < cp.size
                else st.cosigned_mono + s.witness_refresh
            )
            if at <= now:
                due.append(w)
            else:
                wait = at - now if wait is None else min(wait, at - now)
        return due, wait

    def _witness_rounds(self, pool: Any) -> None:
        known: dict[str, int] = {}
        try:
            known = self.store.witness_sizes()
        except SQLAlchemyError:
            log.exception("cannot read witness sizes")
        while True:
            with self._witness_cv:
                while True:
                    if self._closed:
                        return
                    due, wait = self._witness_work(known)
                    if due:
                        break
                    self._witness_due = False  # a new checkpoint notifies: recompute
                    self._witness_cv.wait(wait)
            cp = self._last_cp
            if cp is None:
                continue
            # all witnesses in parallel: a slow one must not delay the others
            list(pool.map(lambda w, cp=cp: self._push_logged(w, cp, known), due))

    def _push_logged(self, w: WitnessEndpoint, cp: StoredCheckpoint, known: dict[str, int]) -> None:
        st = self.witness_stats.setdefault(w.name, WitnessStats())
        try:
            self._push_to_witness(w, cp, known)
        except Exception as exc:
            st.failed(exc, self.settings)
            beyond = (
                isinstance(exc, WitnessConflict) and int(exc.metadata.get("size", 0)) > self.size
            )
            # every refusal at WARNING, with the witness and its reason; the back-off
            # bounds how often (retry_min doubling up to retry_max)
            log.log(
                logging.ERROR if beyond else logging.WARNING,
                "witness %s %s size %d (%s: %s)%s; retry %d in %.1f s",
                w.name,
                "refused" if st.last_outcome == "refused" else "could not be reached to cosign",
                cp.size,
                getattr(exc, "reason", type(exc).__name__),
                getattr(exc, "message", str(exc)),
                " — it cosigned a larger tree than this log holds: was the store rolled back?"
                if beyond
                else "",
                st.consecutive,
                st.retry_at - time.monotonic(),
            )
        else:
            if st.consecutive:
                log.warning(
                    "witness %s cosigns again (size %d) after %d failed pushes",
                    w.name,
                    cp.size,
                    st.consecutive,
                )
            st.succeeded()
        try:
            self.store.record_witness(w.name, st.snapshot(known.get(w.name, 0)))
        except SQLAlchemyError:
            log.exception("cannot record witness %s's status", w.name)

    def _push_to_witness(
        self, w: WitnessEndpoint, cp: StoredCheckpoint, known: dict[str, int]
    ) -> None:
        old = known.get(w.name, 0)
        for _attempt in range(2):
            if old > cp.size:
                raise WitnessConflict(
                    f"witness {w.name} has seen size {old}, beyond {cp.size}", size=old
                )
            proof = consistency_proof(self.store, old, cp.size) if old else []
            try:
                line = w.add_checkpoint(old, proof, cp.note)
            except WitnessConflict as exc:
                old = int(exc.metadata.get("size", "0"))
                continue
            note = Note.parse(cp.note + line if cp.note.endswith("\n") else cp.note)
            sig = next(
                (s for s in note.signatures if s.name == w.name and s.key_id == w.verifier.key_id),
                None,
            )
            if sig is None:
                raise VerificationError(f"witness {w.name} answered without its cosignature")
            cpmod.open_checkpoint(
                Note(note.text, (note.signatures[0], sig)).format(),
                self.verifier,
                witnesses=[w.verifier],
                quorum=1,
            )
            if not self.store.add_cosignature(cp.size, w.name, sig.line(), time.time()):
                # a re-push at the same size: keep its fresher timestamp for the served note
                self._fresh_cosigs[w.name] = (cp.size, sig.line())
            known[w.name] = cp.size
            return

    # --- reading --------------------------------------------------------------------

    def _check_size(self, size: int, what: str = "tree size") -> None:
        if not 0 <= size <= self._cr.size:
            raise IndexOutOfRange(
                f"{what} {size} is beyond the log, which holds {self._cr.size} entries",
                got=size,
                size=self._cr.size,
            )

    def latest_checkpoint(self, min_cosignatures: int = 0) -> str:
        """The latest signed checkpoint note with every cosignature collected for it."""
        cp = (
            self._last_cp
            if min_cosignatures == 0
            else self.store.latest_cosigned_checkpoint(min_cosignatures)
        )
        if cp is None:
            raise NoCheckpoint(
                f"the ledger {self.origin} has no checkpoint"
                + (f" with {min_cosignatures} cosignatures" if min_cosignatures else "")
                + " yet"
            )
        return self.checkpoint_note(cp)

    def checkpoint_note(self, cp: StoredCheckpoint) -> str:
        """The note with every cosignature collected for it; a witness's refreshed
        cosignature (same checkpoint, newer timestamp) replaces its first one."""
        lines = self.store.cosignature_lines(cp.size)
        fresh = {
            line.split(" ", 2)[1]: line
            for size, line in self._fresh_cosigs.values()
            if size == cp.size
        }
        if fresh:
            lines = [fresh.pop(ln.split(" ", 2)[1], ln) for ln in lines] + list(fresh.values())
        return cp.note + "".join(lines)

    def last_checkpoint(self) -> StoredCheckpoint | None:
        return self._last_cp

    def get_entries(self, start: int, end: int) -> list[StoredEntry]:
        """Entries [start, end); a row missing below the size is DATA_LOSS, not a short list."""
        self._check_size(end, "end index")
        if start > end or start < 0:
            raise IndexOutOfRange(f"entry range [{start}, {end}) is empty or negative")
        rows = self.store.get_entries(start, end)
        if len(rows) != end - start:
            have = {r.index for r in rows}
            first = next(i for i in range(start, end) if i not in have)
            raise StoreCorrupt(
                f"entry {first} is missing from the ledger store (it holds {self._cr.size} "
                "entries); run `fedcredit ledger fsck`",
                index=first,
            )
        return rows

    def iter_entries(self, start: int, end: int) -> Iterator[StoredEntry]:
        self._check_size(end, "end index")
        return self.store.iter_entries(start, end)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check_size(size)
        if index >= self._cr.size:
            raise EntryNotFound(
                f"entry {index} does not exist: the log holds {self._cr.size} entries",
                index=index,
                size=self._cr.size,
            )
        if not 0 <= index < size:
            raise IndexOutOfRange(
                f"entry {index} is not in a tree of size {size}", index=index, size=size
            )
        return inclusion_proof(self.store, index, size)

    def inclusion_proofs(self, indices: Sequence[int], size: int) -> list[list[bytes]]:
        """The inclusion proofs of several entries in the tree of ``size`` (each index
        checked as :meth:`inclusion_proof` checks it), their nodes read together."""
        self._check_size(size)
        for index in indices:
            if not 0 <= index < size:
                raise IndexOutOfRange(
                    f"entry {index} is not in a tree of size {size}", index=index, size=size
                )
        return inclusion_proofs(self.store, indices, size)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        self._check_size(new)
        if not 0 <= old <= new:
            raise IndexOutOfRange(f"no consistency proof from size {old} to the smaller size {new}")
        return consistency_proof(self.store, old, new)

    def entries_by_subject(
        self, subject: str, below: int, after: int = -1, limit: int = 1000
    ) -> list[StoredEntry]:
        self._check_size(below)
        return self.store.entries_by_subject(check_subject(subject) or "", below, after, limit)

    def export(self, fp: IO[str], start: int = 0, end: int | None = None) -> int:
        """Write an offline export (entries [start, end) and every checkpoint in range).

        ``end`` defaults to the latest checkpoint's size, so every exported
        entry is covered by a signed checkpoint.
        """
        from fedcredit.ledger.export import write_export

        if end is None:
            end = self._last_cp.size if self._last_cp is not None else 0
        self._check_size(end, "end index")
        cps = [c for c in self.store.checkpoints_between(start, end) if c.size > 0]
        cosigs = self.store.cosignature_lines_between(start, end)
        notes = [c.note + "".join(cosigs.get(c.size, [])) for c in cps]
        return write_export(
            fp,
            origin=self.origin,
            log_key=self.verifier.vkey,
            checkpoints=notes,
            entries=(e.data for e in self.store.iter_entries(start, end)),
            start=start,
        )

    # --- lifecycle ------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued appends, stop the threads, release the database."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)
        with self._witness_cv:
            self._witness_cv.notify_all()
        if self._witness_thread is not None:
            self._witness_thread.join(timeout)
        self.store.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def format_time_fast() -> str:
    """Current UTC time as the entry time string (µs precision), as ``format_time`` writes it.

    The date and time of day are formatted once per second (a tuple swapped whole,
    so sequencers of several logs may call this at once).
    """
    global _second
    sec, us = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{us:06d}Z"


__all__ = ["Log", "LogFull", "NoteSignature", "PreparedEntry", "WitnessEndpoint", "load_signer"]
