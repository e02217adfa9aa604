"""The stage the demo plays on: its deployment, console, facts and numbered steps.

A step that fails stops the demo (:class:`DemoFailed`) with the step and any service
that died named. ``clients/demo.py`` starts the federation and runs the demo;
``clients/demo_story.py`` is the story the steps tell.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedcredit.clients.supervisor import Supervisor
from fedcredit.common import pki
from fedcredit.common.config import Deployment
from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import TlsFiles

AUDITOR = "auditor-pboc-weihai"


class DemoFailed(Exception):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step '{step}' failed: {message}")
        self.step = step
        self.message = message


# Trees of the demo's credit model, otherwise FATE's settings (`fedcredit demo --help`).
DEMO_TREES = 20


@dataclass
class StepRecord:
    number: int
    title: str
    seconds: float = 0.0
    ok: bool = False
    detail: str = ""


@dataclass
class Demo:
    dir: Path
    enterprises: int
    banks: int
    seed: int
    console: Console
    # Flower engine for the training step: the Deployment Engine (a SuperLink and one
    # SuperNode per bank as processes), as a real federation runs; "simulation" is quicker.
    engine: str = "deployment"
    trees: int = DEMO_TREES
    steps: list[StepRecord] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    dep: Deployment | None = None
    supervisor: Supervisor | None = None

    @property
    def config(self) -> Path:
        assert self.dep is not None
        return self.dep.path

    @contextmanager
    def step(self, title: str) -> Iterator[StepRecord]:
        rec = StepRecord(len(self.steps) + 1, title)
        self.steps.append(rec)
        self.console.rule(f"[bold]{rec.number}. {title}")
        t0 = time.perf_counter()
        try:
            yield rec
        except DemoFailed:
            raise
        except (
            FedcreditError,
            OSError,
            subprocess.SubprocessError,
            AssertionError,
            ValueError,
            KeyError,
        ) as exc:
            rec.seconds = time.perf_counter() - t0
            raise DemoFailed(title, self._explain(exc)) from exc
        rec.seconds = time.perf_counter() - t0
        dead, logs = self._dead()
        if dead:
            # A step can succeed on what it needed while another service has died: the
            # federation is broken all the same, so say so here rather than later.
            raise DemoFailed(title, f"service(s) {', '.join(dead)} stopped running; logs: {logs}")
        rec.ok = True
        self.console.print(f"[green]✓[/] {title} [dim]({rec.seconds:.1f} s)[/]")

    def _dead(self) -> tuple[list[str], str]:
        """The services that stopped running, and their log files (none before they start)."""
        sup = self.supervisor
        if sup is None:
            return [], ""
        dead = sup.dead_services()
        return dead, ", ".join(str(sup.logs / f"{d}.log") for d in dead)

    def _explain(self, exc: BaseException) -> str:
        msg = str(exc) or type(exc).__name__
        dead, logs = self._dead()
        if dead:
            return f"service(s) {', '.join(dead)} stopped running ({msg}); logs: {logs}"
        return msg

    # --- helpers -----------------------------------------------------------------

    def fedcredit(self, *args: str, timeout: float = 60.0) -> Any:
        """Run a `fedcredit` command as the organisations would, with --json; return its JSON."""
        cmd = [sys.executable, "-m", "fedcredit.clients.cli", *args, "--json"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        except subprocess.TimeoutExpired as exc:
            raise DemoFailed(
                " ".join(args[:2]),
                f"`fedcredit {' '.join(args)}` did not finish in {timeout:.0f} s",
            ) from exc
        if res.returncode != 0:
            detail = (res.stdout.strip() or res.stderr.strip()).splitlines()[-8:]
            raise DemoFailed(
                " ".join(args[:2]),
                f"`fedcredit {' '.join(args)}` exited {res.returncode}: " + " / ".join(detail),
            )
        return json.loads(res.stdout)

    def enterprise_tls(self, code: str) -> TlsFiles:
        assert self.dep is not None
        cert = self.dep.pki_dir / "orgs" / f"{code}.pem"
        if not cert.exists():
            pki.issue(self.dep.pki_dir, code, "enterprise")
        return self.dep.tls(code)


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def read_truth(world: Path) -> list[dict[str, str]]:
    with open(world / "_truth" / "enterprises.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def table_fact(demo: Demo, title: str, rows: dict[str, Any]) -> None:
    demo.facts.setdefault("tables", {})[title] = rows
