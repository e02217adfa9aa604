"""`make compose-test`: ``python -m fedcredit.clients.containers_story`` (the steps are
described in clients/containers.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedcredit.clients.containers import (
    PLATFORM,
    Cluster,
    demo_for,
    generate_world,
    image_sizes,
    kill_hard,
    load_nodes,
    prepare,
    start_floor,
    start_supernodes,
    up,
)
from fedcredit.clients.containers_services import (
    check_after_restart,
    check_market,
    check_policies,
    check_portal,
)
from fedcredit.clients.demo_stage import AUDITOR, Demo, DemoFailed
from fedcredit.common.departments import DEFAULT_BANKS
from fedcredit.common.errors import DeadlineExceeded, PermissionDenied, Unavailable

VICTIM = "tax"  # the node the failure steps kill: every score needs it
NAMED = ("NODE_UNAVAILABLE", "NODE_DEADLINE_EXCEEDED")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("var/compose-test"))
    ap.add_argument("--enterprises", type=int, default=1500)
    ap.add_argument("--banks", type=int, default=3)
    ap.add_argument("--trees", type=int, default=5)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--bench", type=Path, default=Path("bench/results/containers.json"))
    ap.add_argument("--keep", action="store_true", help="leave the federation running")
    args = ap.parse_args(argv)
    console = Console()
    cluster = Cluster(args.dir.resolve(), list(DEFAULT_BANKS[: args.banks]), console)
    t0 = time.perf_counter()
    code = 0
    try:
        run(cluster, args, console)
    except DemoFailed as exc:
        console.print(f"[bold red]compose-test failed[/] at '{exc.step}': {exc.message}")
        cluster.logs_tail()
        code = 1
    finally:
        if not args.keep:
            cluster.down()
    console.print(
        f"compose-test {'passed' if code == 0 else 'FAILED'} in {time.perf_counter() - t0:.0f} s"
    )
    return code


def run(cluster: Cluster, args: argparse.Namespace, console: Console) -> None:
    from fedcredit.clients.demo_story import play_story, train_model

    config = prepare(cluster)
    demo = demo_for(cluster, config, args, console)
    with demo.step(f"Generate a city of {args.enterprises:,} enterprises; each node loads its own"):
        world = generate_world(cluster, args.enterprises, args.seed)
        load_nodes(cluster, world)
    with demo.step("Bring the federation up in containers, each service health-gated"):
        t0 = time.monotonic()
        up(cluster)
        cluster.load_when_up = os.getloadavg()
        console.print(
            f"{len(cluster.healthy_after)} containers healthy in {time.monotonic() - t0:.0f} s"
        )
    with demo.step("Register the banks' SuperNode keys at the SuperLink; start the SuperNodes"):
        start_supernodes(cluster)
    train_model(demo, world)
    play_story(demo, world)
    with demo.step(
        "The portal answers the host over HTTP; policies screened via the nodes; the market"
    ):
        check_portal(demo, cluster)
        first_run = check_policies(demo, cluster)
        check_market(demo)
    _node_failure(demo, cluster)
    _platform_restart(demo, cluster, first_run)
    _bench(cluster, args.bench, console)


def _fresh_score(demo: Demo) -> Any:
    """A new consent from a healthy enterprise and one score with it."""
    from fedcredit.clients.demo_story import _consent, _coordinator

    assert demo.dep is not None
    bank = demo.dep.banks[0]
    ent = demo.facts["score"]["enterprise"]
    token = _consent(demo, ent, bank, "credit_assessment", uses=5)  # the purpose cap
    return token, _coordinator(demo, bank)


def _node_failure(demo: Demo, cluster: Cluster) -> None:
    from fedcredit.clients.compose import node_service

    name = node_service(VICTIM)
    assert demo.dep is not None
    ent = demo.facts["score"]["enterprise"]
    with demo.step(f"Kill the {VICTIM} node's container: the score names it; start it again"):
        token, coord = _fresh_score(demo)
        with coord:
            coord.score(ent, token)
            cluster.compose("kill", name)
            exc = _refusal_while_down(coord, ent, token, name)
            org = demo.dep.node(VICTIM).org_id
            if exc.reason not in NAMED or org not in exc.message:
                raise DemoFailed("node failure", f"expected NODE_UNAVAILABLE naming {org}, "
                                 f"got {exc.reason}: {exc.message}") from exc  # fmt: skip
            demo.console.print(f"refused while down: {exc.reason}: {exc.message}")
            cluster.compose("start", name)
            cluster.wait_healthy([name], 120, "node restart")
            res = _score_until_ok(coord, ent, token, 60)
            demo.console.print(f"after `start`: rating {res.rating} again")
    with demo.step(f"Crash the {VICTIM} node (SIGKILL): the restart policy brings it back"):
        before = kill_hard(cluster, name)
        deadline = time.monotonic() + 120
        while int(cluster.inspect(name).get("RestartCount", 0)) <= before:
            if time.monotonic() > deadline:
                raise DemoFailed("crash", f"{name} was not restarted within 120 s")
            time.sleep(0.5)
        cluster.wait_healthy([name], 120, "crash recovery")
        token, coord = _fresh_score(demo)
        with coord:
            res = _score_until_ok(coord, ent, token, 60)
        demo.console.print(f"restarted by Docker ({cluster.health(name)}); rating {res.rating}")


# A platform service that did not answer in its deadline (the consent service under a load
# average of 60 on 2 cores, once): nothing was scored and no use counted, so the bank asks
# again; only the node's own refusal is the answer this step checks.
TRANSIENT = ("CONSENT_SERVICE_UNAVAILABLE", "LEDGER_UNAVAILABLE")


def _refusal_while_down(coord: Any, ent: str, token: str, name: str) -> Any:
    """The coordinator's refusal of a score while ``name`` is down (not a transient one)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            coord.score(ent, token)
        except (Unavailable, DeadlineExceeded) as exc:
            if exc.reason not in TRANSIENT or time.monotonic() > deadline:
                return exc
            time.sleep(1.0)
            continue
        raise DemoFailed("node failure", f"a score was answered with {name} killed")


def _score_until_ok(coord: Any, ent: str, token: str, timeout: float) -> Any:
    """The coordinator reconnects to a restarted node on its own; give it that time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return coord.score(ent, token)
        except (Unavailable, DeadlineExceeded):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _platform_restart(demo: Demo, cluster: Cluster, first_run: dict[str, Any]) -> None:
    from fedcredit.clients.demo_story import _coordinator

    assert demo.dep is not None
    bank = demo.dep.banks[0]
    with demo.step("Restart the platform's containers: nothing is lost"):
        ent, revoked = _revoked_consent(demo)
        before = demo.dir / "audit" / "before-restart.note"
        cp0 = _checkpoint(demo, ["--save", str(before)])
        with _coordinator(demo, "operator") as coord:
            fund0 = coord.fund_status()
            model0 = coord.get_model("").version
        cluster.compose("restart", "-t", "20", *PLATFORM, timeout=300)
        cluster.wait_healthy(PLATFORM, 180, "platform restart")
        cp1 = _checkpoint(demo, ["--previous", str(before)])
        with _coordinator(demo, "operator") as coord:
            fund1 = coord.fund_status()
            model1 = coord.get_model("").version
        if cp1["size"] < cp0["size"]:
            raise DemoFailed("restart", f"ledger shrank: {cp0['size']} -> {cp1['size']}")
        if (fund1.approved, fund1.refused, fund1.exposure_yuan) != (
            fund0.approved, fund0.refused, fund0.exposure_yuan,
        ):  # fmt: skip
            raise DemoFailed("restart", f"guarantee fund changed: {fund0} -> {fund1}")
        if model1 != model0:
            raise DemoFailed("restart", f"active model changed: {model0} -> {model1}")
        with _coordinator(demo, bank) as coord:
            try:
                coord.score(ent, revoked)
                raise DemoFailed("restart", "a revoked consent was honoured after the restart")
            except PermissionDenied as exc:
                demo.console.print(f"the consent revoked before the restart: {exc.reason}")
        demo.console.print(
            f"ledger {cp0['size']} -> {cp1['size']} entries, consistent with the checkpoint "
            f"before; fund {fund1.approved} approved / {fund1.refused} refused; model {model1}"
        )
        check_after_restart(demo, cluster, first_run)


def _revoked_consent(demo: Demo) -> tuple[str, str]:
    """A consent granted, used once and revoked: (enterprise, its token)."""
    from fedcredit.consent.client import ConsentClient

    assert demo.dep is not None
    ent = demo.facts["score"]["enterprise"]
    token, coord = _fresh_score(demo)
    with coord:
        coord.score(ent, token)
        consent_id = demo.facts["consents"][f"{ent}:credit_assessment"]
        with ConsentClient(demo.dep.service("consent").address, demo.enterprise_tls(ent)) as c:
            c.revoke(consent_id, reason="compose-test: revoked before the platform restarts")
        deadline = time.monotonic() + 5
        while True:
            try:
                coord.score(ent, token)
            except PermissionDenied:
                return ent, token
            if time.monotonic() > deadline:
                raise DemoFailed("restart", "a revoked consent was still honoured after 5 s")
            time.sleep(0.05)


def _checkpoint(demo: Demo, extra: list[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        try:
            return dict(demo.fedcredit("audit", "checkpoint", "--config", str(demo.config),
                                       "--org", AUDITOR, *extra, timeout=60))  # fmt: skip
        except DemoFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _bench(cluster: Cluster, path: Path, console: Console) -> None:

    sizes = image_sizes()
    floor = start_floor()
    t = Table(title="containers: image size and start-to-healthy")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("floor: `docker run` of the image importing the CLI, to exit", f"{floor:.1f} s")
    t.add_row("load average (1, 5, 15 min) when the federation was healthy",
              ", ".join(f"{x:.1f}" for x in cluster.load_when_up))  # fmt: skip
    for image, size in sizes.items():
        t.add_row(f"image {image}", f"{size / 1e6:,.0f} MB")
    for svc, secs in sorted(cluster.healthy_after.items()):
        t.add_row(f"{svc} start-to-healthy", f"{secs:.1f} s")
    console.print(t)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "benchmark": "containers",
        "note": "first `compose up` of the loopback test federation on this machine; "
                "start-to-healthy = container StartedAt to the first time Docker reports it "
                "healthy (health probes every 10 s in the test layout, so a 10 s resolution); "
                "the SuperNodes start after the rest is healthy; the machine has 2 cores, "
                "shared with other sessions: its load average when the federation was "
                "healthy is recorded beside",
        "load_average_when_up": [round(x, 1) for x in cluster.load_when_up],
        "image_bytes": sizes,
        "floor_run_import_seconds": floor,
        "start_to_healthy_seconds": cluster.healthy_after,
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
