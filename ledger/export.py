"""Offline files: exports (entries + checkpoints) and proof bundles.

Export (``fedcredit-ledger-export/v1``), a JSON object::

    {"format": ..., "origin": ..., "log_key": VKEY, "start": 0,
     "checkpoints": [signed note, ...], "entries": [canonical entry JSON as a string, ...]}

Bundle (``fedcredit-ledger-bundle/v1``): one entry, its index, its RFC 9162
inclusion path (base64) and the signed checkpoint it is proved against.
Nothing here is trusted: ``ledger.audit`` verifies everything.

Files are written atomically (a temporary file in the same folder, flushed to
disk, then renamed): a failure — the ledger unreachable mid-stream, a stored
entry that is not UTF-8 (DATA_LOSS), a full disk — leaves no partial file.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from fedcredit.ledger.errors import (
    BundleMalformed,
    ExportMalformed,
    OutputNotWritable,
    StoreCorrupt,
)

T = TypeVar("T")


def entry_text(data: bytes, index: int) -> str:
    """An entry's JSON text; stored entries are canonical JSON, so bytes that are not
    UTF-8 mean the store lost data (DATA_LOSS naming the entry), not a crash."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreCorrupt(
            f"entry {index} is not valid UTF-8 (byte {exc.start} of {len(data)}): the ledger "
            "store holds corrupt bytes; run `fedcredit ledger fsck`",
            index=index,
        ) from None


def write_atomically(path: Path | str, write: Callable[[IO[str]], T]) -> T:
    """Call ``write`` on a temporary file next to ``path``; rename it over ``path`` only
    if ``write`` returns. Whatever fails, no partial file is left at ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputNotWritable(f"cannot write {path}: {exc.strerror}", path=str(path)) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fp:
            result = write(fp)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputNotWritable(f"cannot write {path}: {exc.strerror}", path=str(path)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


EXPORT_FORMAT = "fedcredit-ledger-export/v1"
BUNDLE_FORMAT = "fedcredit-ledger-bundle/v1"


@dataclass
class Export:
    origin: str
    log_key: str
    checkpoints: list[str]
    entries: list[bytes]
    start: int = 0


def write_export(
    fp: IO[str],
    *,
    origin: str,
    log_key: str,
    checkpoints: Sequence[str],
    entries: Iterable[bytes],
    start: int = 0,
) -> int:
    """Stream an export to ``fp``; returns the number of entries written."""
    head = {"format": EXPORT_FORMAT, "origin": origin, "log_key": log_key, "start": start}
    fp.write(json.dumps(head, ensure_ascii=False)[:-1])
    fp.write(', "checkpoints": ' + json.dumps(list(checkpoints), ensure_ascii=False))
    fp.write(', "entries": [\n')
    n = 0
    for data in entries:
        text = entry_text(data, start + n)
        if n:
            fp.write(",\n")
        fp.write(json.dumps(text, ensure_ascii=False))
        n += 1
    fp.write("\n]}\n")
    return n


def export_chunks(pages: Iterable[Any], start: int = 0) -> Iterator[str]:
    """An export as text while the ledger's Export pages arrive (``ExportPage`` messages:
    origin and log key on the first, entries in order, checkpoints on the last), for a
    download that never holds the whole log in memory. The checkpoints come last here
    (JSON member order is free: :func:`parse_export` reads either). An entry the ledger
    skipped is DATA_LOSS, raised mid-stream like any failure: what was sent is then not
    valid JSON, so a cut download never passes for a shorter export."""
    n, head, checkpoints = 0, False, []
    for page in pages:
        if not head:
            meta = {"format": EXPORT_FORMAT, "origin": page.origin, "log_key": page.log_key, "start": start}  # fmt: skip
            yield json.dumps(meta, ensure_ascii=False)[:-1] + ', "entries": [\n'
            head = True
        chunk = []
        for e in page.entries:
            if e.index != start + n:  # the ledger skipped one: it lost it
                raise StoreCorrupt(
                    f"the ledger's export skipped entry {start + n} (sent {e.index} next)",
                    index=start + n,
                )
            chunk.append(("" if n == 0 else ",\n") + json.dumps(entry_text(bytes(e.data), e.index), ensure_ascii=False))  # fmt: skip
            n += 1
        checkpoints.extend(page.checkpoints)
        if chunk:
            yield "".join(chunk)
    if not head:
        raise ExportMalformed("the ledger's export sent nothing (not even its origin and key)")
    yield '\n], "checkpoints": ' + json.dumps(list(checkpoints), ensure_ascii=False) + "}\n"


def parse_export(raw: str | bytes) -> Export:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportMalformed(f"the export is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != EXPORT_FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ExportMalformed(f"the file is not a {EXPORT_FORMAT} export; format is {got!r}")
    for key, typ in (
        ("origin", str),
        ("log_key", str),
        ("checkpoints", list),
        ("entries", list),
        ("start", int),
    ):
        if not isinstance(obj.get(key), typ):
            raise ExportMalformed(
                f"export member {key!r} must be a {typ.__name__}; got {obj.get(key)!r:.60}"
            )
    for i, e in enumerate(obj["entries"]):
        if not isinstance(e, str):
            raise ExportMalformed(
                f"export entry at position {i} must be a JSON string; got {type(e).__name__}"
            )
    for i, c in enumerate(obj["checkpoints"]):
        if not isinstance(c, str):
            raise ExportMalformed(f"export checkpoint {i} must be a string; got {type(c).__name__}")
    try:
        entries = [e.encode("utf-8") for e in obj["entries"]]
    except UnicodeEncodeError as exc:
        raise ExportMalformed(f"an export entry is not valid Unicode: {exc}") from exc
    return Export(obj["origin"], obj["log_key"], list(obj["checkpoints"]), entries, obj["start"])


def read_export(path: Path | str) -> Export:
    return parse_export(Path(path).read_bytes())


@dataclass
class Bundle:
    index: int
    tree_size: int
    entry: bytes
    inclusion_proof: list[bytes]
    checkpoint: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": BUNDLE_FORMAT,
                "index": self.index,
                "tree_size": self.tree_size,
                "entry": entry_text(self.entry, self.index),
                "inclusion_proof": [base64.b64encode(h).decode() for h in self.inclusion_proof],
                "checkpoint": self.checkpoint,
            },
            ensure_ascii=False,
            indent=1,
        )

    @staticmethod
    def parse(raw: str | bytes) -> Bundle:
        try:
            obj: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleMalformed(f"the bundle is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("format") != BUNDLE_FORMAT:
            raise BundleMalformed(f"the file is not a {BUNDLE_FORMAT} proof bundle")
        for key, typ in (
            ("index", int),
            ("tree_size", int),
            ("entry", str),
            ("inclusion_proof", list),
            ("checkpoint", str),
        ):
            if not isinstance(obj.get(key), typ) or isinstance(obj.get(key), bool):
                raise BundleMalformed(f"bundle member {key!r} must be a {typ.__name__}")
        try:
            proof = [base64.b64decode(h, validate=True) for h in obj["inclusion_proof"]]
        except (binascii.Error, TypeError, ValueError) as exc:
            raise BundleMalformed(
                f"the bundle's inclusion proof is not a list of base64 hashes: {exc}"
            ) from exc
        return Bundle(
            obj["index"], obj["tree_size"], obj["entry"].encode("utf-8"), proof, obj["checkpoint"]
        )
