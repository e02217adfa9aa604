"""``fedcredit ledger fsck``: prove the stored log is the log that was signed.

Restart used to check only the stored tree nodes against the latest
checkpoint, so changed entry bytes, a deleted middle entry or a consistent
rollback went unnoticed. This check recomputes, from the stored entry bytes
alone:

- every leaf hash (and compares it with the stored one that proofs are built from),
- the hash chain (each entry names its predecessor's leaf hash and its own index,
  so a missing, moved or inserted entry breaks it),
- the Merkle tree: its root at every signed checkpoint (whose log signature is
  verified), and every stored interior node,

then compares the size with what the witnesses cosigned (stored cosignatures
and, when they answer, the witnesses themselves): a store that holds fewer
entries than any witness cosigned was rolled back. The first failure raises
``StoreCorrupt`` (LEDGER_STORE_CORRUPT, gRPC DATA_LOSS) naming the first bad
index. What a check proved is recorded (``ledger_fsck``, append-only), so the
check every start runs continues from the last verified size and start stays
fast; ``fedcredit ledger fsck`` checks everything from entry 0.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Protocol, runtime_checkable

from fedcredit.ledger.checkpoint import Verifier, open_checkpoint
from fedcredit.ledger.entry import ZERO_HASH
from fedcredit.ledger.errors import StoreCorrupt, VerificationError
from fedcredit.ledger.merkle import CompactRange, fold, perfect_cover, root_from_reader
from fedcredit.ledger.store import FsckRun, LedgerStore, StoredCheckpoint

log = logging.getLogger(__name__)

_sha256 = hashlib.sha256
_CHAIN = b'","chain":"'
_FRAG = '","chain":"{}","index":{},\n'  # a chunk's expected fragments, cut at the newlines
CHUNK_LEVEL = 14
CHUNK = 1 << CHUNK_LEVEL  # entries read and hashed at a time


@dataclass(frozen=True)
class WitnessState:
    """What one witness says it cosigned for this log (``root`` None when unknown)."""

    name: str
    size: int
    root: bytes | None = None


@dataclass
class FsckReport:
    size: int
    checked_from: int
    checkpoints: int
    root: bytes
    latest_checkpoint: int
    full: bool
    seconds: float
    witnesses: dict[str, int] = field(default_factory=dict)

    @property
    def entries(self) -> int:
        return self.size - self.checked_from


def _corrupt(index: int, message: str) -> StoreCorrupt:
    return StoreCorrupt(f"entry {index}: {message}", index=index)


class _Walk:
    """The recomputation over [start, size): leaves, chain, tree, roots at checkpoints."""

    def __init__(
        self,
        store: LedgerStore,
        start: int,
        border: Sequence[bytes],
        prev: bytes,
        roots_wanted: set[int],
    ) -> None:
        self.store = store
        self.cr = CompactRange(start, border)
        self.prev = prev
        self.wanted = roots_wanted
        self.roots: dict[int, bytes] = {}

    def run(self, size: int, progress: Callable[[int], None] | None) -> None:
        # a chunk is ~16,000 row tuples: with the collector on, a young collection every
        # 700 of them promotes the chunk into the old generations and the full collections
        # that follow scan the whole heap (a quarter of fsck's CPU in a service's heap)
        paused = gc.isenabled()
        gc.disable()
        try:
            self._run(size, progress)
        finally:
            if paused:
                gc.enable()

    def _run(self, size: int, progress: Callable[[int], None] | None) -> None:
        if self.cr.size in self.wanted:
            self.roots[self.cr.size] = self.cr.root()
        pos = self.cr.size
        while pos < size:
            # chunks aligned on CHUNK (an incremental check starts anywhere): a whole
            # aligned chunk is one perfect subtree, hashed level by level
            end = min(size, (pos // CHUNK + 1) * CHUNK)
            leaves = self._leaves(self.store.raw_entries(pos, end), pos, end)
            if end - pos == CHUNK:
                self._perfect(leaves, pos)
            else:
                self._one_by_one(leaves)
            pos = end
            if progress is not None:
                progress(pos)

    def _leaves(self, rows: Sequence[Any], pos: int, end: int) -> list[bytes]:
        """Each entry's leaf hash, checked against the stored one and against the next
        entry's chain and index: a chunk at a time with list comprehensions, C-level maps
        and whole-sequence compares; the per-entry loop (``_first_bad``) only runs to name
        what failed."""
        sha, n = _sha256, len(rows)
        if n != end - pos:
            self._first_bad(rows, pos, end)
        idxs, stored, datas = zip(*rows, strict=True) if rows else ((), (), ())
        leaves = [sha(b"\x00" + d).digest() for d in datas]
        # what each entry must hold at its first '","chain":"' (the actor before it never
        # holds a quote): its predecessor's leaf hash and its own index. One format call
        # builds them all and one split cuts them apart; the compare runs in C.
        args: list[object] = [None] * (2 * n)
        args[0::2] = map(bytes.hex, [self.prev, *leaves[:-1]])
        args[1::2] = range(pos, end)
        frags = (_FRAG * n).format(*args).encode().split(b"\n")
        ok = all(map(bytes.startswith, datas, frags, map(bytes.find, datas, repeat(_CHAIN))))
        if not ok or idxs != tuple(range(pos, end)) or tuple(leaves) != stored:
            self._first_bad(rows, pos, end)
        if leaves:
            self.prev = leaves[-1]
        return leaves

    def _first_bad(self, rows: Sequence[Any], pos: int, end: int) -> None:
        """Name the first entry of the chunk that fails (and raise)."""
        prev, expect = self.prev, pos
        for idx, stored_leaf, data in rows:
            if idx != expect:
                raise _corrupt(expect, f"missing from the store (the next stored entry is {idx})")
            leaf = _sha256(b"\x00" + data).digest()
            if leaf != stored_leaf:
                raise _corrupt(
                    idx,
                    f"its bytes hash to {leaf.hex()}, the stored leaf hash is "
                    f"{bytes(stored_leaf).hex()}: the entry or its hash was changed",
                )
            frag = _CHAIN + prev.hex().encode() + b'","index":%d,' % idx
            at = data.find(_CHAIN)
            if data[at : at + len(frag)] != frag:
                raise _corrupt(
                    idx,
                    f"its chain or index is not (chain {prev.hex()}, index {idx}): "
                    "an entry before it was changed, removed or inserted",
                )
            prev = leaf
            expect += 1
        if expect != end:
            raise _corrupt(expect, f"missing from the store (it holds entries up to {end - 1})")
        # the entry-by-entry check is the authority: a bulk difference it does not confirm
        # (a driver's bytes-like type) is no corruption

    def _perfect(self, leaves: list[bytes], pos: int) -> None:
        sha = _sha256
        levels = [leaves]
        for lvl in range(1, CHUNK_LEVEL + 1):
            below = levels[-1]
            level = [
                sha(b"\x01" + a + b).digest() for a, b in zip(below[::2], below[1::2], strict=True)
            ]
            levels.append(level)
            self._compare_level(lvl, pos >> lvl, level)
        border = self.cr.border
        for s in sorted(w for w in self.wanted if pos < w <= pos + CHUNK):
            cover = perfect_cover(pos, s)
            self.roots[s] = fold(border + [levels[lv][i - (pos >> lv)] for lv, i in cover])
        # the chunk's subtree joins the border, completing nodes above it
        merged: list[tuple[int, int, bytes]] = []
        h, lvl, idx = levels[-1][0], CHUNK_LEVEL, pos >> CHUNK_LEVEL
        size = pos
        while size >> lvl & 1:
            h = sha(b"\x01" + border.pop() + h).digest()
            size -= 1 << lvl
            lvl += 1
            idx >>= 1
            merged.append((lvl, idx, h))
        self.cr = CompactRange(pos + CHUNK, [*border, h])
        self._compare_nodes(merged)

    def _one_by_one(self, leaves: list[bytes]) -> None:
        cr, wanted = self.cr, self.wanted
        nodes: list[tuple[int, int, bytes]] = []
        for leaf in leaves:
            cr.append(leaf, nodes)
            if cr.size in wanted:
                self.roots[cr.size] = cr.root()
        self._compare_nodes([n for n in nodes if n[0]])

    def _compare_level(self, lvl: int, lo: int, hashes: list[bytes]) -> None:
        if self.store.node_hashes_joined(lvl, lo, lo + len(hashes)) == b"".join(hashes):
            return
        stored = self.store.raw_nodes(lvl, lo, lo + len(hashes))
        have = {int(i): bytes(h) for i, h in stored}
        for k, h in enumerate(hashes):
            if have.get(lo + k) != h:
                self._bad_node(lvl, lo + k, have.get(lo + k), h)

    def _compare_nodes(self, nodes: list[tuple[int, int, bytes]]) -> None:
        by_level: dict[int, list[tuple[int, bytes]]] = {}
        for lvl, idx, h in nodes:
            by_level.setdefault(lvl, []).append((idx, h))
        for lvl, items in sorted(by_level.items()):
            have = {
                int(i): bytes(h)
                for i, h in self.store.raw_nodes(lvl, items[0][0], items[-1][0] + 1)
            }
            for idx, h in items:
                if have.get(idx) != h:
                    self._bad_node(lvl, idx, have.get(idx), h)

    @staticmethod
    def _bad_node(lvl: int, idx: int, got: bytes | None, want: bytes) -> None:
        raise _corrupt(
            idx << lvl,
            f"the stored tree node ({lvl}, {idx}) over entries [{idx << lvl}, "
            f"{(idx + 1) << lvl}) is {'missing' if got is None else got.hex()}; "
            f"recomputed {want.hex()}",
        )


def _check_checkpoint(cp: StoredCheckpoint, root: bytes, verifier: Verifier) -> None:
    try:
        sc = open_checkpoint(cp.note, verifier)
    except VerificationError as exc:
        raise _corrupt(
            cp.size, f"the stored checkpoint of size {cp.size} does not verify: {exc.message}"
        ) from exc
    if (sc.size, sc.root) != (cp.size, cp.root):
        raise _corrupt(
            cp.size,
            f"the stored checkpoint row (size {cp.size}, root {cp.root.hex()}) differs from "
            f"its signed note (size {sc.size}, root {sc.root.hex()})",
        )
    if root != cp.root:
        raise StoreCorrupt(
            f"the tree of the first {cp.size} stored entries has root {root.hex()}; the "
            f"signed checkpoint of size {cp.size} says {cp.root.hex()} (an entry below "
            f"{cp.size} was changed)",
            index=cp.size - 1,
        )


def _check_witnesses(
    store: LedgerStore, size: int, roots: Mapping[int, bytes], states: Sequence[WitnessState]
) -> dict[str, int]:
    claims = [WitnessState(w, s) for w, s in store.witness_sizes().items()]
    out: dict[str, int] = {}
    for w in [*claims, *states]:
        out[w.name] = max(out.get(w.name, 0), w.size)
        if w.size > size:
            raise _corrupt(
                size,
                f"missing: witness {w.name} cosigned size {w.size} but the store holds only "
                f"{size} entries (the log was rolled back)",
            )
        if w.root is not None and w.size:
            root = roots.get(w.size) or root_from_reader(store, w.size)
            if root != w.root:
                raise StoreCorrupt(
                    f"witness {w.name} cosigned root {w.root.hex()} at size {w.size}; the store's "
                    f"tree there is {root.hex()} (rewritten history)",
                    index=w.size - 1,
                )
    return out


def _start_point(store: LedgerStore, size: int, full: bool) -> FsckRun | None:
    """Where an incremental check continues from; refuses a store behind a recorded check."""
    run = store.latest_fsck_run()
    if run is None:
        return None
    if run.size > size:
        raise _corrupt(
            size,
            f"missing: a check on {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(run.checked_at))} "
            f"UTC verified {run.size} entries; the store holds {size} (the log was rolled back)",
        )
    if full:
        return None
    if store.count() != size:
        raise StoreCorrupt(
            f"the store holds {store.count()} entries under indexes 0..{size - 1}: some were "
            "deleted (`fedcredit ledger fsck` names the first)",
            index=size - 1,
        )
    if run.size:
        last = store.raw_entries(run.size - 1, run.size)
        if not last or bytes(last[0][1]) != run.last_leaf:
            raise _corrupt(run.size - 1, "changed since it was verified")
    return run


def fsck(
    store: LedgerStore,
    verifier: Verifier,
    *,
    full: bool = True,
    witnesses: Sequence[WitnessState] = (),
    record: bool = True,
    progress: Callable[[int], None] | None = None,
) -> FsckReport:
    """Check the store (from entry 0, or from the last recorded check unless ``full``)."""
    t0 = time.perf_counter()
    size = store.size()
    run = _start_point(store, size, full)
    start = run.size if run is not None else 0
    cps = [c for c in store.all_checkpoints() if c.size > 0]
    if cps and cps[-1].size > size:
        raise _corrupt(
            size,
            f"missing: the log signed a checkpoint of size {cps[-1].size} but the store holds "
            f"only {size} entries (the log was rolled back)",
        )
    todo = [c for c in cps if c.size > start]
    wanted = {c.size for c in todo} | {w.size for w in witnesses if w.size > start} | {size}
    walk = _Walk(
        store,
        start,
        run.border if run is not None else [],
        run.last_leaf if run is not None else ZERO_HASH,
        wanted,
    )
    walk.run(size, progress)
    for cp in todo:
        _check_checkpoint(cp, walk.roots[cp.size], verifier)
    if run is not None and cps and cps[-1].size <= start:
        # nothing new was signed: the latest checkpoint still matches the stored nodes
        latest = cps[-1]
        if root_from_reader(store, latest.size) != latest.root:
            raise StoreCorrupt(
                f"the stored tree at size {latest.size} does not have the signed root",
                index=latest.size - 1,
            )
    seen = _check_witnesses(store, size, walk.roots, witnesses)
    root = walk.roots.get(size) or walk.cr.root()
    if record and size > 0:
        store.add_fsck_run(FsckRun(size, root, walk.cr.border, walk.prev, full, time.time()))
    return FsckReport(
        size=size,
        checked_from=start,
        checkpoints=len(todo),
        root=root,
        latest_checkpoint=cps[-1].size if cps else 0,
        full=full,
        seconds=time.perf_counter() - t0,
        witnesses=seen,
    )


class _LogInfo(Protocol):
    origin: str
    size: int
    root: bytes


class _WitnessInfo(Protocol):
    @property
    def logs(self) -> Sequence[_LogInfo]: ...


@runtime_checkable
class WitnessInfoSource(Protocol):
    """A witness that can say what it cosigned (GetWitnessInfo); a push-only endpoint
    (the log's :class:`~fedcredit.ledger.log.WitnessEndpoint`) need not."""

    @property
    def name(self) -> str: ...

    def info(self) -> _WitnessInfo: ...


def witness_states(
    witnesses: Sequence[object], origin: str
) -> tuple[list[WitnessState], dict[str, str]]:
    """Ask every witness that can tell (``info()``, with its own call timeout) what it
    cosigned for ``origin``.

    Returns the answers and, per witness that did not answer, why: a witness that
    is down must not stop the log from starting (the pushes meet it later)."""
    askable = [w for w in witnesses if isinstance(w, WitnessInfoSource)]
    if not askable:
        return [], {}

    def ask(w: WitnessInfoSource) -> WitnessState | str:
        try:
            info = w.info()
        except Exception as exc:  # a down witness is reported, not fatal
            return f"{type(exc).__name__}: {exc}"
        for lg in info.logs:
            if lg.origin == origin:
                return WitnessState(w.name, int(lg.size), bytes(lg.root) if lg.size else None)
        return WitnessState(w.name, 0)

    with ThreadPoolExecutor(max_workers=min(16, len(askable))) as pool:
        answers = list(pool.map(ask, askable))
    states = [a for a in answers if isinstance(a, WitnessState)]
    down = {w.name: a for w, a in zip(askable, answers, strict=True) if isinstance(a, str)}
    return states, down
