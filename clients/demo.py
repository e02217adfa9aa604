"""`fedcredit demo`: the whole federation on one machine, playing the story end to end.

Every service runs as its own process on loopback with mTLS and SQLite, and
every step below goes through the same gRPC APIs and CLI commands the
organisations would use. The demo reads the synthetic city's hidden truth
file only to *choose its characters* (a healthy firm and a failing one);
no service ever sees it. A step that fails stops the demo with the step and
any service that died named; every call has a deadline, so nothing hangs.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcredit.common import pki
from fedcredit.common.config import Deployment, load_config
from fedcredit.common.departments import DEPARTMENTS
from fedcredit.common.deploy import write_local_deployment
from fedcredit.common.errors import FedcreditError

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
    supervisor: Any = None

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
        dead = self.supervisor.dead_services() if self.supervisor is not None else []
        if dead:
            # A step can succeed on what it needed while another service has died: the
            # federation is broken all the same, so say so here rather than later.
            logs = ", ".join(str(self.supervisor.logs / f"{d}.log") for d in dead)
            raise DemoFailed(title, f"service(s) {', '.join(dead)} stopped running; logs: {logs}")
        rec.ok = True
        self.console.print(f"[green]✓[/] {title} [dim]({rec.seconds:.1f} s)[/]")

    def _explain(self, exc: BaseException) -> str:
        msg = str(exc) or type(exc).__name__
        dead = self.supervisor.dead_services() if self.supervisor is not None else []
        if dead:
            logs = ", ".join(str(self.supervisor.logs / f"{d}.log") for d in dead)
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

    def enterprise_tls(self, code: str) -> Any:
        assert self.dep is not None
        cert = self.dep.pki_dir / "orgs" / f"{code}.pem"
        if not cert.exists():
            pki.issue(self.dep.pki_dir, code, "enterprise")
        return self.dep.tls(code)


LOAD_WORKERS = 2


def _load_node(database: str, department: str, world: str) -> None:
    from fedcredit.node.store import NodeStore

    store = NodeStore(database, department)
    try:
        store.load(Path(world))
    finally:
        store.close()


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _truth(world: Path) -> list[dict[str, str]]:
    with open(world / "_truth" / "enterprises.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def run_demo(
    *,
    dir: Path,
    enterprises: int,
    banks: int,
    seed: int,
    keep: bool,
    as_json: bool,
    engine: str = "deployment",
    trees: int = DEMO_TREES,
) -> int:
    console = Console(stderr=as_json)
    demo = Demo(dir.resolve(), enterprises, banks, seed, console, engine=engine, trees=trees)
    t_start = time.perf_counter()
    code = 0
    try:
        _play(demo)
    except DemoFailed as exc:
        console.print(f"[bold red]demo failed[/] at step '{exc.step}': {exc.message}")
        code = 1
    except KeyboardInterrupt:
        console.print("[bold red]demo interrupted[/]")
        code = 130
    finally:
        if demo.supervisor is not None and not keep:
            with console.status("stopping every service..."):
                demo.supervisor.stop()
        elif demo.supervisor is not None:
            console.print(
                f"services left running; stop them with `fedcredit down --config {demo.config}`"
            )
    demo.facts["total_seconds"] = round(time.perf_counter() - t_start, 1)
    _summary(demo, as_json, code)
    return code


def _play(demo: Demo) -> None:
    from fedcredit.clients.demo_story import play_story, train_model

    world = start_federation(demo)
    train_model(demo, world)
    play_story(demo, world)


def start_federation(demo: Demo) -> Path:
    """Steps 1-4: deployment and PKI, the city, the nodes' databases, every service running."""
    from fedcredit.clients.supervisor import Supervisor, service_specs

    c = demo.console
    with demo.step("Write a local deployment and its PKI (fedcredit init)"):
        if (demo.dir / "deployment.toml").exists():
            # A previous demo may still run (--keep): stop it before replacing it.
            old = load_config(demo.dir / "deployment.toml")
            Supervisor(old).stop()
            shutil.rmtree(demo.dir)
        path = write_local_deployment(demo.dir, name="weihai-demo", bank_count=demo.banks)
        demo.dep = load_config(path)
        c.print(
            f"{len(demo.dep.organisations)} organisations, certificates under {demo.dep.pki_dir}"
        )

    world = demo.dir / "world"
    with demo.step(
        f"Generate the synthetic city ({demo.enterprises:,} enterprises, {demo.banks} banks, 36 months)"
    ):
        from fedcredit.world.generate import generate

        with _progress(c) as bar:
            manifest = generate(
                world,
                enterprises=demo.enterprises,
                banks=demo.banks,
                months=36,
                seed=demo.seed,
                progress=bar,
            )
        demo.facts["world"] = {
            "enterprises": demo.enterprises,
            "banks": demo.banks,
            "seed": demo.seed,
        }
        c.print(f"world written to {world} ({len(getattr(manifest, 'files', {}) or {})} files)")

    with demo.step("Load each department's raw records into its own node database"):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        assert demo.dep is not None
        # Each department loads its own database, two at a time (one per core here); spawned,
        # not forked, as the caller may already hold gRPC channels.
        with (
            _progress(c) as bar,
            ProcessPoolExecutor(
                max_workers=LOAD_WORKERS, mp_context=multiprocessing.get_context("spawn")
            ) as pool,
        ):
            task = bar.add_task("departments loaded", total=len(DEPARTMENTS))
            jobs = {
                pool.submit(_load_node, demo.dep.node(d.id).database, d.id, str(world)): d.id
                for d in DEPARTMENTS
            }
            for job in as_completed(jobs):
                job.result()
                bar.update(task, advance=1, description=f"loaded {jobs[job]}")

    with demo.step(
        "Start every service as its own process with mTLS (ledger, consent, 12 nodes, coordinator)"
    ):
        assert demo.dep is not None
        demo.supervisor = Supervisor(demo.dep)
        specs = service_specs(demo.dep)
        with _progress(c) as bar:
            task = bar.add_task("services", total=len(specs))
            demo.supervisor.start_all(
                specs, timeout=90, on_started=lambda got: bar.advance(task, len(got))
            )
        c.print(
            f"{len(specs)} services healthy, each its own process; logs under {demo.supervisor.logs}"
        )

    return world


def _summary(demo: Demo, as_json: bool, code: int) -> None:
    if as_json:
        data = {
            "ok": code == 0,
            "steps": [
                {"n": s.number, "title": s.title, "ok": s.ok, "seconds": round(s.seconds, 2)}
                for s in demo.steps
            ],
            "facts": demo.facts,
        }
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    t = Table(title="demo steps")
    t.add_column("#", justify="right")
    t.add_column("step")
    t.add_column("result")
    t.add_column("seconds", justify="right")
    for s in demo.steps:
        t.add_row(
            str(s.number), s.title, "[green]ok[/]" if s.ok else "[red]FAILED[/]", f"{s.seconds:.1f}"
        )
    demo.console.print(t)
    for title, rows in demo.facts.get("tables", {}).items():
        ft = Table(title=title)
        ft.add_column("what")
        ft.add_column("value", justify="right")
        for k, v in rows.items():
            ft.add_row(str(k), str(v))
        demo.console.print(ft)
    demo.console.print(
        f"total {demo.facts.get('total_seconds')} s — {'[green]all steps passed[/]' if code == 0 else '[red]failed[/]'}"
    )


def table_fact(demo: Demo, title: str, rows: dict[str, Any]) -> None:
    demo.facts.setdefault("tables", {})[title] = rows


Callback = Callable[[Demo], None]
