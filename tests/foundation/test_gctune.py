"""The service processes' garbage-collector settings."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from fedcredit.common.gctune import SERVICE_THRESHOLDS, tune_for_service


def test_tune_for_service_freezes_and_raises_the_thresholds() -> None:
    # In a child interpreter: the test process keeps the interpreter's defaults.
    code = (
        "import gc, json; from common.gctune import tune_for_service\n"
        "before = gc.get_threshold(); tune_for_service()\n"
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, frozen = json.loads(out.stdout)
    assert tuple(before) == gc.get_threshold()  # the child started with the defaults
    assert tuple(after) == SERVICE_THRESHOLDS
    assert SERVICE_THRESHOLDS[0] > before[0]
    assert frozen > 1000  # the imported modules at least


def test_cycles_are_still_collected() -> None:
    saved = gc.get_threshold()
    try:
        tune_for_service()

        class Node:
            other: object = None

        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2  # the cycle was garbage, and is gone
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
