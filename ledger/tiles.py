"""The log as C2SP tlog-tiles: the read interface any transparency-log client understands.

c2sp.org/tlog-tiles fixes tile height 8 (256 hashes per tile). A hash tile at
level L, index N and width W holds the stored hashes of Merkle level 8·L at
indexes [256·N, 256·N + W); each is a perfect subtree the store already keeps
(ledger.merkle: level-0 nodes are the entries' leaf hashes, higher ones
ledger_nodes), so a tile is one range read and never changes once full. An
entry bundle holds the same 256-entry range of leaf inputs, each as a
big-endian uint16 length then the bytes; a leaf input is the entry's RFC 8785
bytes, so SHA-256(0x00 ‖ data) of each bundle entry is its leaf hash.

This module only maps a path to bytes (and says whether they may be cached
forever); ledger.tiles_http serves them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select

from fedcredit.ledger.errors import NoCheckpoint
from fedcredit.ledger.store import LedgerStore, entries, nodes

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256
MAX_LEVEL = 63
MAX_ENTRY_BYTES = 0xFFFF  # a bundle entry's length is a uint16

# tile/<L>/<N>[.p/<W>] and tile/entries/<N>[.p/<W>]; N is written in 3-digit groups,
# all but the last prefixed with "x" (c2sp.org/tlog-tiles, "Merkle Tree").
_TILE_PATH = re.compile(r"tile/(entries|\d{1,2})/((?:x\d{3}/)*\d{3})(?:\.p/(\d{1,3}))?")


class TileError(Exception):
    """A tile request that cannot be answered; ``status`` is the HTTP status to give."""

    status = 400
    reason = "TILE_PATH_INVALID"


class TileNotFound(TileError):
    """The tile is well formed but the log does not hold it (yet)."""

    status = 404
    reason = "TILE_NOT_FOUND"


class EntryTooLarge(TileError):
    """An entry longer than 65535 bytes cannot be written in an entry bundle."""

    status = 500
    reason = "TILE_ENTRY_TOO_LARGE"


@dataclass(frozen=True)
class TileRef:
    """One tile: ``level`` is None for an entry bundle; ``width`` 256 means full."""

    level: int | None
    index: int
    width: int

    @property
    def full(self) -> bool:
        return self.width == TILE_WIDTH

    def path(self) -> str:
        return tile_path(self.level, self.index, None if self.full else self.width)


def encode_index(n: int) -> str:
    """N as c2sp.org/tlog-tiles writes it: 1234067 -> x001/x234/067."""
    if n < 0:
        raise ValueError(f"a tile index is >= 0; got {n}")
    groups = []
    while True:
        groups.append(f"{n % 1000:03d}")
        n //= 1000
        if n == 0:
            break
    groups.reverse()
    return "/".join("x" + g for g in groups[:-1]) + ("/" if len(groups) > 1 else "") + groups[-1]


def tile_path(level: int | None, index: int, width: int | None = None) -> str:
    lvl = "entries" if level is None else str(level)
    tail = "" if width is None or width == TILE_WIDTH else f".p/{width}"
    return f"tile/{lvl}/{encode_index(index)}{tail}"


def parse_tile_path(path: str) -> TileRef:
    """A request path (without the leading slash) to a tile; TileError when malformed."""
    m = _TILE_PATH.fullmatch(path)
    if m is None:
        raise TileError(f"expected tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>]; got {path!r}")
    lvl_s, n_s, w_s = m.groups()
    level = None if lvl_s == "entries" else int(lvl_s)
    if level is not None and (level > MAX_LEVEL or (lvl_s != "0" and lvl_s.startswith("0"))):
        raise TileError(f"expected a tile level 0..{MAX_LEVEL} without leading zeros; got {lvl_s}")
    index = int(n_s.replace("x", "").replace("/", ""))
    if encode_index(index) != n_s:  # x000/001 is not a canonical spelling of 1
        raise TileError(f"expected the canonical tile index {encode_index(index)}; got {n_s}")
    width = TILE_WIDTH
    if w_s is not None:
        width = int(w_s)
        if not 1 <= width < TILE_WIDTH or w_s.startswith("0"):
            raise TileError(f"expected a partial tile width 1..255; got {w_s}")
    return TileRef(level, index, width)


class TileSource(Protocol):
    """What tiles are read from: a ``Log`` (its size, store and latest checkpoint)."""

    store: LedgerStore

    @property
    def size(self) -> int: ...

    def latest_checkpoint(self, min_cosignatures: int = 0) -> str: ...


def _available(size: int, level: int) -> int:
    """How many hashes of Merkle level 8·level a tree of ``size`` leaves holds."""
    return size >> (TILE_HEIGHT * level)


def read_tile(source: TileSource, ref: TileRef) -> bytes:
    """The bytes of one hash tile or entry bundle; TileNotFound beyond the log."""
    level = 0 if ref.level is None else ref.level
    lo = ref.index * TILE_WIDTH
    hi = lo + ref.width
    have = _available(source.size, level)
    if hi > have:
        raise TileNotFound(
            f"{ref.path()} needs {hi} hashes at level {TILE_HEIGHT * level}; "
            f"the log holds {have} (size {source.size})"
        )
    if ref.level is None:
        return _bundle(source.store, lo, hi)
    return _hashes(source.store, TILE_HEIGHT * level, lo, hi)


def _hashes(store: LedgerStore, merkle_level: int, lo: int, hi: int) -> bytes:
    if merkle_level == 0:
        q = (
            select(entries.c.leaf_hash)
            .where(entries.c.idx >= lo, entries.c.idx < hi)
            .order_by(entries.c.idx)
        )
    else:
        q = (
            select(nodes.c.hash)
            .where(nodes.c.level == merkle_level, nodes.c.idx >= lo, nodes.c.idx < hi)
            .order_by(nodes.c.idx)
        )
    with store.engine.connect() as conn:
        rows = conn.execute(q).scalars().all()
    if len(rows) != hi - lo:  # the size says they exist: a gap is store damage, not absence
        raise TileError(
            f"the store holds {len(rows)} of the {hi - lo} hashes of level {merkle_level} "
            f"in [{lo}, {hi})"
        )
    return b"".join(bytes(r) for r in rows)


def _bundle(store: LedgerStore, lo: int, hi: int) -> bytes:
    q = select(entries.c.idx, entries.c.data).where(entries.c.idx >= lo, entries.c.idx < hi)
    with store.engine.connect() as conn:
        rows = conn.execute(q.order_by(entries.c.idx)).all()
    if len(rows) != hi - lo:
        raise TileError(f"the store holds {len(rows)} of the {hi - lo} entries in [{lo}, {hi})")
    out = bytearray()
    pack = struct.Struct(">H").pack
    for idx, data in rows:
        if len(data) > MAX_ENTRY_BYTES:
            raise EntryTooLarge(
                f"entry {idx} is {len(data)} bytes; an entry bundle holds at most {MAX_ENTRY_BYTES}"
            )
        out += pack(len(data))
        out += data
    return bytes(out)


def parse_bundle(data: bytes) -> list[bytes]:
    """Split an entry bundle into its entries (auditors, tests)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise TileError(f"the bundle ends inside a length prefix at byte {pos}")
        (n,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if pos + n > len(data):
            raise TileError(f"an entry at byte {pos} declares {n} bytes; {len(data) - pos} remain")
        out.append(data[pos : pos + n])
        pos += n
    return out


def read_checkpoint(source: TileSource) -> bytes:
    try:
        return source.latest_checkpoint().encode("utf-8")
    except NoCheckpoint as exc:
        raise TileNotFound(str(exc)) from exc
