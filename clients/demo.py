"""`fedcredit demo`: the whole federation on one machine, playing the story end to end.

Every service runs as its own process on loopback with mTLS and SQLite, and
every step below goes through the same gRPC APIs and CLI commands the
organisations would use. The demo reads the synthetic city's hidden truth
file only to *choose its characters* (a healthy firm and a failing one);
no service ever sees it. A step that fails stops the demo with the step and
any service that died named; every call has a deadline, so nothing hangs.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedcredit.clients.demo_stage import DEMO_TREES, Demo, DemoFailed, progress_bar
from fedcredit.clients.supervisor import Supervisor, service_specs
from fedcredit.common.config import load_config
from fedcredit.common.departments import DEPARTMENTS
from fedcredit.common.deploy import write_local_deployment

LOAD_WORKERS = 2


def _load_node(database: str, department: str, world: str) -> None:
    from fedcredit.node.store import NodeStore

    store = NodeStore(database, department)
    try:
        store.load(Path(world))
    finally:
        store.close()


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
    # Imported here: the node loaders' spawned processes import this module, not the story.
    from fedcredit.clients.demo_story import play_story, train_model

    world = start_federation(demo)
    train_model(demo, world)
    play_story(demo, world)


def start_federation(demo: Demo) -> Path:
    """Steps 1-4: deployment and PKI, the city, the nodes' databases, every service running."""
    _write_deployment(demo)
    world = _generate_city(demo)
    _load_nodes(demo, world)
    _start_services(demo)
    return world


def _write_deployment(demo: Demo) -> None:
    with demo.step("Write a local deployment and its PKI (fedcredit init)"):
        if (demo.dir / "deployment.toml").exists():
            # A previous demo may still run (--keep): stop it before replacing it.
            old = load_config(demo.dir / "deployment.toml")
            Supervisor(old).stop()
            shutil.rmtree(demo.dir)
        path = write_local_deployment(demo.dir, name="weihai-demo", bank_count=demo.banks)
        demo.dep = load_config(path)
        demo.console.print(
            f"{len(demo.dep.organisations)} organisations, certificates under {demo.dep.pki_dir}"
        )


def _generate_city(demo: Demo) -> Path:
    world = demo.dir / "world"
    with demo.step(
        f"Generate the synthetic city ({demo.enterprises:,} enterprises, {demo.banks} banks, 36 months)"
    ):
        from fedcredit.world.generate import generate

        with progress_bar(demo.console) as bar:
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
        demo.console.print(f"world written to {world} ({len(manifest.files)} files)")
    return world


def _load_nodes(demo: Demo, world: Path) -> None:
    with demo.step("Load each department's raw records into its own node database"):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        assert demo.dep is not None
        # Each department loads its own database, two at a time (one per core here); spawned,
        # not forked, as the caller may already hold gRPC channels.
        with (
            progress_bar(demo.console) as bar,
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


def _start_services(demo: Demo) -> None:
    with demo.step(
        "Start every service as its own process with mTLS (ledger, consent, 12 nodes, coordinator, portal)"
    ):
        assert demo.dep is not None
        demo.supervisor = Supervisor(demo.dep)
        specs = service_specs(demo.dep)
        with progress_bar(demo.console) as bar:
            task = bar.add_task("services", total=len(specs))
            demo.supervisor.start_all(
                specs, timeout=90, on_started=lambda got: bar.advance(task, len(got))
            )
        demo.console.print(
            f"{len(specs)} services healthy, each its own process; logs under {demo.supervisor.logs}"
        )
        portal = demo.dep.raw.get("portal")
        if isinstance(portal, dict) and "address" in portal:
            port = str(portal["address"]).rpartition(":")[2]
            demo.console.print(
                f"web portal: http://localhost:{port}/ (first passkey: `fedcredit operator enrol "
                f"--config {demo.dep.path} --org <credit code>`)"
            )


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
