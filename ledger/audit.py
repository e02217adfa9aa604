"""Offline verification: only exports, bundles, checkpoints and public keys are trusted.

Every failure is a typed ``VerificationError`` naming the first bad entry or
checkpoint and what was expected versus found.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import itertools
import operator
import os
import pickle
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from fedcredit.ledger.checkpoint import (
    SignedCheckpoint,
    Verifier,
    check_not_rollback,
    open_checkpoint,
)
from fedcredit.ledger.entry import ACTOR_RE, KIND_RE, PREFIX_RE, ZERO_HASH, Entry
from fedcredit.ledger.errors import (
    ChainBroken,
    CheckpointRollback,
    CheckpointStale,
    CosignatureFromFuture,
    CosignatureQuorum,
    EntriesNotCovered,
    EntryMalformed,
    EntryOutOfSequence,
    ExportIncomplete,
    ExportMalformed,
    OriginMismatch,
    RootMismatch,
    SubjectMismatch,
    VerificationError,
)
from fedcredit.ledger.export import Bundle, Export
from fedcredit.ledger.merkle import EMPTY_ROOT, fold, perfect_cover
from fedcredit.ledger.proofs import verify_consistency, verify_inclusion

_sha256 = hashlib.sha256


@dataclass
class Trust:
    """What an auditor trusts: the log key, witness keys and how many cosignatures it demands."""

    log_key: Verifier
    witnesses: Sequence[Verifier] = ()
    quorum: int = 0

    def open(self, note: str, *, quorum: int | None = None) -> SignedCheckpoint:
        return open_checkpoint(
            note,
            self.log_key,
            origin=self.log_key.name,
            witnesses=self.witnesses,
            quorum=self.quorum if quorum is None else quorum,
        )


CLOCK_SKEW = 300.0  # seconds a cosignature timestamp may be ahead of this clock


def check_current(
    sc: SignedCheckpoint,
    *,
    quorum: int,
    max_age: float,
    newer: Mapping[str, int] | None = None,
    now: float | None = None,
) -> float | None:
    """Refuse a quorum-cosigned checkpoint that is not current.

    ``newer`` maps who (the ledger, each witness) to the largest size it reports: a
    larger one means a newer checkpoint exists that the quorum has not cosigned.
    With ``quorum`` cosignatures demanded, the quorum-th freshest cosignature
    timestamp must be at most ``max_age`` seconds old (witnesses renew theirs while
    the log is idle), and none may be from the future. Returns that age (None
    without a quorum)."""
    now = time.time() if now is None else now
    for who, size in sorted((newer or {}).items()):
        if size > sc.size:
            raise CheckpointStale(
                f"the newest checkpoint with {quorum} cosignatures has size {sc.size}, but "
                f"{who} reports size {size}: the witnesses are not cosigning what the log signs",
                size=sc.size,
                newer=size,
                reported_by=who,
            )
    if quorum <= 0:
        return None
    for name, ts in zip(sc.cosigned_by, sc.cosigned_at, strict=True):
        if ts > now + CLOCK_SKEW:
            raise CosignatureFromFuture(
                f"witness {name}'s cosignature of size {sc.size} is dated {ts}, "
                f"{ts - now:.0f} s in the future (allowed skew {CLOCK_SKEW:.0f} s)",
                witness=name,
            )
    times = sorted(sc.cosigned_at, reverse=True)
    if len(times) < quorum:
        raise CosignatureQuorum(f"{len(times)} cosignatures; {quorum} required")
    age = now - times[quorum - 1]
    if age > max_age:
        raise CheckpointStale(
            f"the newest checkpoint with {quorum} cosignatures (size {sc.size}) was last "
            f"cosigned by a quorum {age:.0f} s ago; expected at most {max_age:.0f} s "
            "(--max-age): the witnesses stopped cosigning",
            size=sc.size,
            age=round(age),
        )
    return age


@dataclass
class ReplayReport:
    origin: str
    entries: int
    checkpoints: int
    root: bytes
    latest_size: int
    cosigned_by: tuple[str, ...]
    strict: bool
    kinds: dict[str, int] = field(default_factory=dict)


def _tree_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """All perfect-subtree hashes, level by level (pairwise hashing, the fast path)."""
    levels = [leaves]
    cur = leaves
    sha = _sha256
    while len(cur) > 1:
        cur = [sha(b"\x01" + a + b).digest() for a, b in zip(cur[::2], cur[1::2], strict=False)]
        levels.append(cur)
    return levels


# Replay works in aligned chunks of 2^CHUNK_BITS entries: every perfect subtree of
# the RFC 9162 tree is either inside one chunk or made of whole chunks, so chunks
# (and runs of chunks in worker processes) are hashed independently and the
# parent combines the chunk roots.
CHUNK_BITS = 12
# Below this many entries, forking workers costs more than it saves.
PARALLEL_MIN = 1 << 16
MAX_WORKERS = 8

_groups = operator.methodcaller("groups")
_first = operator.itemgetter(0)
# PREFIX_RE with the actor and kind classes widened to "no quote" and chain and index
# to any 64 characters and any digits: about twice as fast. A match whose actor and
# kind then fullmatch the strict classes, whose chain is the expected hex and whose
# index is the expected decimal is exactly a PREFIX_RE match (no member can straddle:
# neither form admits a quote inside a member).
_LOOSE_PREFIX = re.compile(
    rb'\{"actor":"([^"]*)","chain":"(.{64})","index":([0-9]+),"kind":"([^"]*)","payload":\{'
)
_ACTOR_B = re.compile(ACTOR_RE.pattern.encode())
_KIND_B = re.compile(KIND_RE.pattern.encode())


@dataclass
class _RangeResult:
    """What a run of entries [lo, hi) contributes (``lo`` is chunk-aligned)."""

    first_chain: bytes  # the chain member (hex) of entry lo, checked by the caller
    last_leaf: bytes
    kinds: Counter[bytes]
    roots: list[bytes]  # roots of the full chunks in [lo, hi), in order
    covers: dict[int, list[bytes]]  # size -> hashes of perfect_cover(chunk start, size)
    # the first chunk (its start) with a malformed prefix, a wrong index or a broken
    # chain; the run stops there. Every entry before it passed those checks.
    bad: int | None = None
    # strict: the first chunk with an entry that is not canonical (the chain checks go on,
    # as a chain error anywhere is reported before a strict-parse error)
    strict_bad: int | None = None


def _verify_range(
    entries: Sequence[bytes],
    lo: int,
    hi: int,
    sizes: Sequence[int],
    cache: dict[bytes, bytes] | None,
    strict: bool,
    progress: Callable[[int], None] | None = None,
) -> _RangeResult:
    """Leaves, positions and the chain inside [lo, hi), kinds, optionally the strict parse,
    and the subtree hashes the roots at ``sizes`` need, a chunk at a time; a bad chunk is
    reported by position (the caller walks it entry by entry to name the first bad entry)."""
    chunk = 1 << CHUNK_BITS
    sha = _sha256
    match = _LOOSE_PREFIX.match
    valid_actors: set[bytes] = set()  # actor and kind values already checked
    valid_kinds: set[bytes] = set()
    out = _RangeResult(b"", b"", Counter(), [], {})
    prev = b""
    for a in range(lo, hi, chunk):
        b = min(hi, a + chunk)
        part = entries[a:b]
        ms = list(map(match, part))
        if None in ms:
            out.bad = a
            return out
        gs = list(map(_groups, ms))
        chains = [g[1] for g in gs]
        idxs = [g[2] for g in gs]
        kind_names = [g[3] for g in gs]
        # the loose pattern plus these checks accept exactly what PREFIX_RE accepts
        # (chain and index are compared with their expected values below)
        new_actors = set(map(_first, gs)) - valid_actors
        new_kinds = set(kind_names) - valid_kinds
        if any(_ACTOR_B.fullmatch(x) is None for x in new_actors) or any(
            _KIND_B.fullmatch(x) is None for x in new_kinds
        ):
            out.bad = a
            return out
        valid_actors |= new_actors
        valid_kinds |= new_kinds
        if cache:
            leaves = [cache.get(d) or sha(b"\x00" + d).digest() for d in part]
        else:
            leaves = [sha(b"\x00" + d).digest() for d in part]
        # the index and chain members are digits / exactly 64 bytes (the loose pattern),
        # so the joined texts are equal exactly when every entry's member is as expected
        if (
            b",".join(idxs) != ",".join(map(str, range(a, b))).encode()
            or b"".join(chains[1:]) != b"".join(leaves[:-1]).hex().encode()
            or (a != lo and chains[0] != prev.hex().encode())
        ):
            out.bad = a
            return out
        if a == lo:
            out.first_chain = chains[0]
        if strict and out.strict_bad is None:
            try:
                for d in part:
                    Entry.parse(d)
            except EntryMalformed:
                out.strict_bad = a
        out.kinds.update(kind_names)
        prev = leaves[-1]
        levels = _tree_levels(leaves)
        if b - a == chunk:
            out.roots.append(levels[-1][0])
        for c in sizes:
            if a < c <= b and c % chunk:
                out.covers[c] = [levels[lvl][i - (a >> lvl)] for lvl, i in perfect_cover(a, c)]
        if progress is not None:
            progress(b)
    out.last_leaf = prev
    return out


def _fork(fn: Callable[[], object]) -> tuple[int, int]:
    """Run ``fn`` in a forked child that sends back its pickled result; (pid, read fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller's code
        code = 1
        try:
            os.close(r)
            gc.disable()  # a collection would touch (and copy) every inherited object
            data = pickle.dumps(fn(), protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(w, "wb") as f:
                f.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _collect(pid: int, fd: int) -> tuple[bool, object]:
    """(True, result) from a child started by _fork, or (False, None) if it failed."""
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        return False, None
    return True, pickle.loads(data)


def _worker_count(n: int, workers: int | None) -> int:
    if workers is None:
        if n < PARALLEL_MIN or not hasattr(os, "fork"):
            return 1
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        workers = min(cpus, MAX_WORKERS)
    chunks = -(-n >> CHUNK_BITS) if n else 0
    return max(1, min(workers, chunks))


def _run_starts(n: int, workers: int) -> list[int]:
    """Where each worker's run of entries starts: chunk-aligned, about equal shares."""
    nchunks = -(-n >> CHUNK_BITS)
    return [min(n, (nchunks * j // workers) << CHUNK_BITS) for j in range(workers)]


def _verify_entries(
    entries: Sequence[bytes],
    sizes: Sequence[int],
    cache: dict[bytes, bytes] | None,
    strict: bool,
    workers: int,
    progress: Callable[[int], None] | None,
) -> list[_RangeResult]:
    """Verify all entries in ``workers`` contiguous chunk-aligned runs, the first in this
    process and the others in forked children."""
    n = len(entries)
    bounds = [*_run_starts(n, workers), n]
    children: list[tuple[int, int, int, int]] = []  # (lo, hi, pid, fd)
    # Nothing made here forms a cycle; collections during the many small
    # allocations would scan every object of the process, again and again.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for lo, hi in itertools.pairwise(bounds[1:]):
            job = functools.partial(_verify_range, entries, lo, hi, sizes, cache, strict)
            pid, fd = _fork(job)
            children.append((lo, hi, pid, fd))
        results = [_verify_range(entries, 0, bounds[1], sizes, cache, strict, progress)]
        while children:
            lo, hi, pid, fd = children.pop(0)
            ok, res = _collect(pid, fd)
            if not ok:  # the child died: do its share here
                res = _verify_range(entries, lo, hi, sizes, cache, strict)
            results.append(cast(_RangeResult, res))
    finally:
        if gc_was_enabled:
            gc.enable()
        for _lo, _hi, pid, fd in children:  # only after an error in this process
            os.close(fd)
            os.waitpid(pid, 0)
    if progress is not None:
        progress(n)
    return results


def _first_bad(results: list[_RangeResult], bounds_lo: list[int]) -> tuple[int | None, int | None]:
    """(first chunk with a chain-type failure, first chunk failing the strict parse)."""
    expected = ZERO_HASH.hex().encode()
    strict_bad = None
    for r, lo in zip(results, bounds_lo, strict=True):
        if r.first_chain != expected and r.bad != lo:
            return lo, None  # the chain breaks where this run starts
        if r.bad is not None:
            return r.bad, None
        if strict_bad is None:
            strict_bad = r.strict_bad
        expected = r.last_leaf.hex().encode()
    return None, strict_bad


def _roots(results: list[_RangeResult], sizes: Sequence[int]) -> dict[int, bytes]:
    """The tree root at each size, from the chunk roots and the partial chunks' covers."""
    chunk = 1 << CHUNK_BITS
    chunk_roots = [h for r in results for h in r.roots]
    covers = {c: h for r in results for c, h in r.covers.items()}
    levels = _tree_levels(chunk_roots) if chunk_roots else [[]]
    out: dict[int, bytes] = {}
    for c in sizes:
        if c == 0:
            out[c] = EMPTY_ROOT
            continue
        whole = c // chunk
        hashes = [levels[lvl][idx] for lvl, idx in perfect_cover(0, whole)]
        hashes.extend(covers.get(c, ()))
        out[c] = fold(hashes)
    return out


def _name_first_bad(part: Sequence[bytes], lo: int, prev: bytes) -> None:
    """Walk a chunk entry by entry and raise the precise error for its first bad entry."""
    for i, data in enumerate(part, lo):
        m = PREFIX_RE.match(data)
        if m is None:
            raise EntryMalformed(
                f"entry {i} does not start with the canonical members actor, chain, index, kind, payload",
                position=i,
            )
        idx = int(m.group(3))
        if idx != i:
            raise EntryOutOfSequence(
                f"position {i} of the export holds entry index {idx}; expected {i} "
                "(an entry was deleted, inserted, duplicated or moved)",
                position=i,
                expected=i,
                got=idx,
            )
        if m.group(2) != prev.hex().encode():
            raise ChainBroken(
                f"entry {i} says the previous entry hashes to {m.group(2).decode()}, but entry {i - 1} "
                f"hashes to {prev.hex()}: entry {i - 1} was altered (or replaced)",
                position=i,
                expected=prev.hex(),
                got=m.group(2).decode(),
            )
        prev = _sha256(b"\x00" + data).digest()


def _name_first_bad_entry(
    entries: Sequence[bytes], bad: int | None, strict_bad: int | None
) -> None:
    """Raise the error naming the first bad entry: walk entry by entry from the chunk
    start ``bad`` (for a malformed prefix, a wrong index or a broken chain; every entry
    before it passed those checks), or strictly parse from ``strict_bad``."""
    if bad is not None:
        step = 1 << CHUNK_BITS
        prev = ZERO_HASH if bad == 0 else _sha256(b"\x00" + entries[bad - 1]).digest()
        _name_first_bad(entries[bad : bad + step], bad, prev)
        raise ChainBroken(f"entries {bad}..{bad + step - 1} do not verify")  # unreachable
    if strict_bad is not None:
        for i in range(strict_bad, len(entries)):
            try:
                Entry.parse(entries[i])
            except EntryMalformed as exc:
                exc.message = f"entry {i}: {exc.message}"
                exc.metadata["position"] = str(i)
                raise


def _check_export_start(export: Export, origin: str) -> None:
    """The export is of the trusted log and starts at entry 0."""
    if export.origin != origin:
        raise OriginMismatch(
            f"the export is of log {export.origin!r}; the trusted log key is for {origin!r}",
            expected=origin,
            got=export.origin,
        )
    if export.start != 0:
        raise ExportMalformed(
            f"a replay needs an export from entry 0; this one starts at {export.start}"
        )


def _export_checkpoints(export: Export, trust: Trust) -> list[SignedCheckpoint]:
    """The export's checkpoints, each carrying a valid log signature, listed in strictly
    increasing size."""
    checkpoints: list[SignedCheckpoint] = []
    for pos, note in enumerate(export.checkpoints):
        try:
            sc = trust.open(note, quorum=0)
        except VerificationError as exc:
            exc.message = f"checkpoint {pos} of the export: {exc.message}"
            exc.metadata["checkpoint_position"] = str(pos)
            raise
        if checkpoints and sc.size <= checkpoints[-1].size:
            raise ExportMalformed(
                f"checkpoint {pos} of the export has size {sc.size}, not larger than the size "
                f"{checkpoints[-1].size} of the checkpoint before it (exports list each once, in order)",
                checkpoint_position=pos,
            )
        checkpoints.append(sc)
    return checkpoints


def _by_size(checkpoints: Sequence[SignedCheckpoint]) -> dict[int, SignedCheckpoint]:
    """One checkpoint per size; two of one size with different roots are a split view."""
    by_size: dict[int, SignedCheckpoint] = {}
    for c in checkpoints:
        seen = by_size.get(c.size)
        if seen is not None and seen.root != c.root:
            raise CheckpointRollback(
                f"two signed checkpoints of size {c.size} have different roots "
                f"{seen.root.hex()} and {c.root.hex()} (split view)",
                size=c.size,
            )
        by_size[c.size] = c
    return by_size


def _replay_entries(
    entries: Sequence[bytes],
    sizes: Sequence[int],
    leaf_cache: dict[bytes, bytes] | None,
    strict: bool,
    workers: int | None,
    progress: Callable[[int], None] | None,
) -> list[_RangeResult]:
    """Leaves, positions, the hash chain (and, strict, each entry's canonical form) in
    chunk-aligned runs, several processes for a big export; only when something is
    wrong, an entry-by-entry pass names the first bad entry."""
    n = len(entries)
    if not n:
        return []
    workers_used = _worker_count(n, workers)
    results = _verify_entries(entries, sizes, leaf_cache, strict, workers_used, progress)
    bad, strict_bad = _first_bad(results, _run_starts(n, workers_used))
    if bad is not None or strict_bad is not None:
        _name_first_bad_entry(entries, bad, strict_bad)
        raise ChainBroken(f"entries 0..{n - 1} do not verify")  # unreachable
    return results


def _check_coverage(
    export_latest: SignedCheckpoint | None,
    checkpoints: Sequence[SignedCheckpoint],
    n: int,
    trust: Trust,
) -> SignedCheckpoint:
    """The export's own latest checkpoint covers exactly its ``n`` entries, and the latest
    checkpoint of all (the export's or a trusted one), returned, has the quorum and covers
    them too."""
    if export_latest is None:
        raise ExportIncomplete(
            "the export carries no signed checkpoint; nothing vouches for its entries"
        )
    latest = checkpoints[-1]
    if export_latest.size != n:
        raise ExportIncomplete(
            f"the export holds {n} entries but its latest signed checkpoint is of "
            f"size {export_latest.size}",
            expected=export_latest.size,
            got=n,
        )
    if trust.quorum and len(latest.cosigned_by) < trust.quorum:
        raise CosignatureQuorum(
            f"the latest checkpoint (size {latest.size}) has {len(latest.cosigned_by)} valid cosignatures; "
            f"{trust.quorum} required",
            expected=trust.quorum,
            got=len(latest.cosigned_by),
        )
    if latest.size > n:
        raise ExportIncomplete(
            f"the signed checkpoint of size {latest.size} covers entries 0..{latest.size - 1}, "
            f"but the export holds only {n} entries (the first missing is {n})",
            expected=latest.size,
            got=n,
        )
    if n > latest.size:
        raise EntriesNotCovered(
            f"entries {latest.size}..{n - 1} of the export are not covered by any signed checkpoint "
            f"(the largest is of size {latest.size})",
            first=latest.size,
        )
    return latest


def _check_roots(
    results: list[_RangeResult], sizes: Sequence[int], checkpoints: Sequence[SignedCheckpoint]
) -> None:
    """The tree root at every checkpoint size is the signed one."""
    roots = _roots(results, sizes)
    last_good = 0
    for c in checkpoints:
        root = roots[c.size]
        if root != c.root:
            raise RootMismatch(
                f"entries 0..{c.size - 1} give root {root.hex()}, but the signed checkpoint of size "
                f"{c.size} says {c.root.hex()}; the first altered entry is at or after {last_good} "
                f"(the largest size that matched) and before {c.size}",
                expected=c.root.hex(),
                got=root.hex(),
                size=c.size,
            )
        last_good = c.size


def replay(
    export: Export,
    trust: Trust,
    *,
    trusted_checkpoints: Iterable[str] = (),
    strict: bool = True,
    progress: Callable[[int], None] | None = None,
    leaf_cache: dict[bytes, bytes] | None = None,
    workers: int | None = 1,
) -> ReplayReport:
    """Recompute every leaf, the chain and the tree from an export and check every signed checkpoint.

    ``trusted_checkpoints`` are checkpoints the auditor obtained independently
    (e.g. witnessed ones); the export must contain and agree with them, which
    is what detects a truncated or rewritten export that still carries
    self-consistent signatures. ``leaf_cache`` maps entry bytes to leaf hashes
    already computed (an auditor re-checking a grown export); it is keyed by
    the bytes themselves, so a changed entry is always hashed afresh.
    ``workers`` processes share the export: 1 (the default) verifies in this
    process; ``None`` forks one worker per CPU for an export of at least
    ``PARALLEL_MIN`` entries (POSIX only), which is what ``fedcredit audit replay``
    does. Forking copies only the calling thread, so a process whose other
    threads may hold locks the workers need (OpenSSL's, inside hashlib) should
    keep the default.
    """
    origin = trust.log_key.name
    _check_export_start(export, origin)
    # 1. every checkpoint must carry a valid log signature; the export lists them
    # in strictly increasing size, and its own largest one covers all its entries
    checkpoints = _export_checkpoints(export, trust)
    export_latest = checkpoints[-1] if checkpoints else None
    for note in trusted_checkpoints:
        checkpoints.append(trust.open(note))
    checkpoints.sort(key=lambda c: c.size)
    by_size = _by_size(checkpoints)
    # 2. leaves, positions, the hash chain (and, strict, each entry's canonical form)
    n = len(export.entries)
    sizes = sorted({c.size for c in checkpoints if c.size <= n})
    results = _replay_entries(export.entries, sizes, leaf_cache, strict, workers, progress)
    kinds: Counter[bytes] = Counter()
    for r in results:
        kinds.update(r.kinds)
    latest = _check_coverage(export_latest, checkpoints, n, trust)
    # 3. the tree root at every checkpoint size
    _check_roots(results, sizes, checkpoints)
    if progress is not None:
        progress(n)
    return ReplayReport(
        origin=origin,
        entries=n,
        checkpoints=len(by_size),
        root=latest.root,
        latest_size=latest.size,
        cosigned_by=latest.cosigned_by,
        strict=strict,
        kinds={k.decode(): v for k, v in kinds.items()},
    )


def verify_bundle(bundle: Bundle, trust: Trust) -> tuple[Entry, SignedCheckpoint]:
    """Check an offline proof bundle: checkpoint signatures, inclusion, and the entry itself."""
    sc = trust.open(bundle.checkpoint)
    if bundle.tree_size != sc.size:
        raise RootMismatch(
            f"the bundle claims a tree of size {bundle.tree_size}; its checkpoint is of size {sc.size}",
            expected=sc.size,
            got=bundle.tree_size,
        )
    entry = Entry.parse(bundle.entry)
    if entry.index != bundle.index:
        raise EntryOutOfSequence(
            f"the bundle's entry has index {entry.index}; the bundle proves index {bundle.index}",
            expected=bundle.index,
            got=entry.index,
        )
    verify_inclusion(
        bundle.index,
        sc.size,
        _sha256(b"\x00" + bundle.entry).digest(),
        bundle.inclusion_proof,
        sc.root,
    )
    return entry, sc


def verify_checkpoints(
    old_note: str, new_note: str, proof: Sequence[bytes], trust: Trust
) -> tuple[SignedCheckpoint, SignedCheckpoint]:
    """Both checkpoints are signed, the new one is not a rollback, and it extends the old one."""
    old = trust.open(old_note, quorum=0)
    new = trust.open(new_note)
    check_not_rollback(old.checkpoint, new.checkpoint)
    verify_consistency(old.size, new.size, proof, old.root, new.root)
    return old, new


def verify_subject_entries(
    subject: str,
    checkpoint_note: str,
    tree_size: int,
    proven: Iterable[tuple[int, bytes, Sequence[bytes]]],
    trust: Trust,
) -> tuple[SignedCheckpoint, list[Entry]]:
    """Every (index, entry bytes, inclusion proof) is about ``subject`` and in the signed tree."""
    sc = trust.open(checkpoint_note)
    if sc.size != tree_size:
        raise RootMismatch(
            f"the page claims tree size {tree_size}; its checkpoint is of size {sc.size}"
        )
    out = []
    for index, data, proof in proven:
        e = Entry.parse(data)
        if e.index != index:
            raise EntryOutOfSequence(f"entry listed at index {index} says it is entry {e.index}")
        if e.subject != subject:
            raise SubjectMismatch(
                f"entry {index} is about {e.subject or 'no enterprise'}, not {subject}",
                position=index,
                expected=subject,
                got=str(e.subject),
            )
        try:
            verify_inclusion(index, sc.size, _sha256(b"\x00" + data).digest(), proof, sc.root)
        except VerificationError as exc:
            exc.message = f"entry {index}: {exc.message}"
            raise
        out.append(e)
    return sc, out
