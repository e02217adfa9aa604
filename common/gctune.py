"""Garbage-collector settings for the long-running service processes.

A service's heap is mostly long-lived: imported modules, caches of verified tokens,
feature vectors and credit codes. Its hot paths allocate many short-lived objects per
enterprise (protobuf wrappers, claim dicts, log payloads). With CPython's default
thresholds (a young collection every 700 net allocations) a department node spent
about a tenth of its CPU in the collector during a ScoreBatch (``perf record`` on a
node, 2026-12-03: ``gc_collect_main`` and its visitors), and a 10,000-enterprise batch
ran about 10 % faster with the thresholds below (212 s -> 191 s extrapolated to 120,000,
back to back on the same machine).

:func:`tune_for_service` is called once by each ``serve`` command when its service is
up: it freezes what start-up built (``gc.freeze``: those objects are never scanned
again) and makes young collections rarer. Reference cycles are still collected, in
fewer, larger passes. Library code and tests keep the interpreter's defaults.
"""

from __future__ import annotations

import gc

# (young, middle, old): a young collection every 50,000 net allocations (default 700);
# the other two are the interpreter's defaults scaled so that full collections stay rare.
SERVICE_THRESHOLDS = (50_000, 20, 100)


def tune_for_service(thresholds: tuple[int, int, int] = SERVICE_THRESHOLDS) -> None:
    """Collect once, freeze the survivors, then use ``thresholds`` from now on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
