"""FEDCREDIT_LOG_FORMAT=json: one JSON object per log line (issue 17)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from fedcredit.common.metrics import JsonFormatter


def test_a_record_is_one_json_line_with_the_exception() -> None:
    log = logging.getLogger("fedcredit.test")
    try:
        raise ValueError("boom")
    except ValueError:
        rec = log.makeRecord(
            "fedcredit.test", logging.WARNING, __file__, 1, "a %s", ("b",), sys.exc_info()
        )
    line = JsonFormatter().format(rec)
    assert "\n" not in line.split('"exception"')[0]
    doc = json.loads(line)
    assert (
        doc["level"] == "WARNING" and doc["logger"] == "fedcredit.test" and doc["message"] == "a b"
    )
    assert doc["time"].endswith("Z") and "ValueError: boom" in doc["exception"]


def test_the_cli_logs_json_when_asked() -> None:
    code = (
        "import logging, os; from fedcredit.common.metrics import configure_logging; "
        "configure_logging('INFO'); logging.getLogger('fedcredit.x').warning('hello %d', 7)"
    )
    env = {"FEDCREDIT_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    lines = [json.loads(x) for x in r.stderr.splitlines() if x.strip()]
    assert [(d["level"], d["message"]) for d in lines] == [("WARNING", "hello 7")]
    plain = {k: v for k, v in os.environ.items() if k != "FEDCREDIT_LOG_FORMAT"}
    text = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=plain, timeout=60
    )
    assert "WARNING fedcredit.x: hello 7" in text.stderr
