"""A world's features computed in one process: the pooled-data baseline.

Reads a world directory (its manifest, the public registry extract and every
department's raw files) and computes the node's feature catalog over all of it, with
no node, no consent and no disclosure log. For tests, benchmarks and the pooled-data
baseline only; a node computes the same features from its own store.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedcredit.common.departments import DEPARTMENTS
from fedcredit.node.catalog import compute
from fedcredit.node.records import Batch, FloatArray, batch_from_columns, convert, read_csv_text
from fedcredit.node.schema import BY_DEPARTMENT, ENTERPRISES, month_ordinal
from fedcredit.world.generate import load_manifest


def read_department(
    world_dir: Path | str, department: str, codes: Sequence[str], as_of: int
) -> Batch:
    """A department's raw files of a world directory as one batch over ``codes``."""
    base = Path(world_dir) / "departments" / department
    tables = {}
    for spec in BY_DEPARTMENT[department]:
        tables[spec.name] = convert(spec, read_csv_text(base / spec.file_name, spec))
    return batch_from_columns(department, codes, as_of, tables)


def compute_all(
    world_dir: Path | str, *, departments: Sequence[str] | None = None
) -> tuple[list[str], list[str], FloatArray]:
    """All 66 features of every enterprise of a world directory, in memory (no node, no
    consent): ``(codes, feature_names, matrix)`` with NaN for missing values. For tests,
    benchmarks and the pooled-data baseline only."""
    world_dir = Path(world_dir)
    manifest = load_manifest(world_dir)
    as_of = month_ordinal(manifest["as_of"])
    reg = read_csv_text(world_dir / "enterprises.csv", ENTERPRISES)
    codes = reg["code"].tolist()
    depts = list(departments) if departments is not None else [d.id for d in DEPARTMENTS]
    blocks: list[FloatArray] = []
    names: list[str] = []
    for d in depts:
        c = compute(read_department(world_dir, d, codes, as_of))
        blocks.append(c.values)
        names.extend(f.name for f in c.features)
    return codes, names, np.hstack(blocks) if blocks else np.zeros((len(codes), 0))
