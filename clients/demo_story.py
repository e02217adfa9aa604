"""The story the demo plays once the federation runs (see clients/demo.py), step by step."""

from __future__ import annotations

import csv
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcredit.clients.demo_stage import (
    AUDITOR,
    Demo,
    DemoFailed,
    progress_bar,
    read_truth,
    table_fact,
)
from fedcredit.common.errors import PermissionDenied
from fedcredit.consent.client import ConsentClient
from fedcredit.consent.terms import ConsentTerms
from fedcredit.coordinator.client import CoordinatorClient
from fedcredit.training.gbdt.metrics import format_auc
from fedcredit.training.gbdt.params import GBDTParams

if TYPE_CHECKING:
    from fedcredit.training.run.city import CityTrainReport


def _consent(demo: Demo, enterprise: str, bank: str, purpose: str, *, uses: int = 5) -> str:
    """The enterprise grants (over its own mTLS identity); the bank fetches the token."""
    assert demo.dep is not None
    addr = demo.dep.service("consent").address
    with ConsentClient(addr, demo.enterprise_tls(enterprise)) as ent:
        view = ent.grant(
            ConsentTerms(
                enterprise=enterprise,
                bank=bank,
                purpose=purpose,
                scope=["score_only"],
                validity_days=30,
                max_uses=uses,
            )
        )
    with ConsentClient(addr, demo.dep.tls(bank)) as b:
        got = b.token(view.consent_id)
    assert got.token, f"the consent service issued no token for consent {view.consent_id}"
    demo.facts.setdefault("consents", {})[f"{enterprise}:{purpose}"] = view.consent_id
    return got.token


def _coordinator(demo: Demo, org: str) -> CoordinatorClient:
    assert demo.dep is not None
    return CoordinatorClient(
        demo.dep.service("coordinator").address, demo.dep.tls(org), timeout=15.0
    )


@dataclass(frozen=True)
class Cast:
    """The story's characters, chosen from the city's hidden truth (only the demo reads it)."""

    bank: str
    healthy: str  # the healthiest enterprise
    failing: list[str]  # the twelve least healthy


def play_story(demo: Demo, world: Path) -> None:
    assert demo.dep is not None
    by_health = sorted(read_truth(world), key=lambda r: float(r["health_as_of"]))
    cast = Cast(
        bank=demo.dep.banks[0],
        healthy=by_health[-1]["code"],
        failing=[r["code"] for r in by_health[:12]],
    )
    token = _grant(demo, cast)
    _score(demo, cast, token)
    _guarantee(demo, cast)
    _refuse_d_rated(demo, cast)
    _revoke(demo, cast, token)
    _subject_listing(demo, cast)
    _audit(demo)
    _services_summary(demo)


def _grant(demo: Demo, cast: Cast) -> str:
    """The healthy enterprise grants the bank a credit_assessment consent; its token."""
    bank, healthy, c = cast.bank, cast.healthy, demo.console
    with demo.step(f"Enterprise {healthy} grants {bank} consent for credit assessment"):
        token = _consent(demo, healthy, bank, "credit_assessment")
        c.print(
            f"consent token issued to {bank} ({len(token)} bytes, EdDSA, bound to the bank's certificate)"
        )
    return token


def _score(demo: Demo, cast: Cast, token: str) -> None:
    """The bank gets the healthy enterprise's score with the token."""
    bank, healthy, c = cast.bank, cast.healthy, demo.console
    with demo.step(f"{bank} asks the coordinator for the score"), _coordinator(demo, bank) as coord:
        res = coord.score(healthy, token)
        c.print(
            f"rating [bold]{res.rating}[/], probability of default {res.probability_of_default:.4f}, model {res.model_version}, "
            f"ledger entry #{res.ledger_index}"
        )
        for r in res.reasons:
            c.print(f"  reason: {r.description} ({r.feature}, +{r.contribution:.3f} log-odds)")
        demo.facts["score"] = {
            "enterprise": healthy,
            "rating": res.rating,
            "pd": res.probability_of_default,
            "ledger_index": res.ledger_index,
        }


def _guarantee(demo: Demo, cast: Cast) -> None:
    """The bank applies for a guarantee (with collateral if the fund asks for it)."""
    bank, healthy, c = cast.bank, cast.healthy, demo.console
    with (
        demo.step(f"{bank} applies for a guarantee on a 3,000,000 yuan loan"),
        _coordinator(demo, bank) as coord,
    ):
        gtoken = _consent(demo, healthy, bank, "guarantee")
        d = coord.apply(
            application_id=f"demo-{healthy}-{uuid.uuid4().hex[:8]}",
            enterprise=healthy,
            token=gtoken,
            amount_yuan=3_000_000,
            term_months=12,
        )
        if not d.approved and d.reason == "COLLATERAL_REQUIRED":
            c.print(f"refused ({d.reason}): {d.explanation}")
            c.print(
                f"{bank} offers {d.collateral_required_yuan:,} yuan of collateral and applies again"
            )
            d = coord.apply(
                application_id=f"demo-{healthy}-{uuid.uuid4().hex[:8]}",
                enterprise=healthy,
                token=gtoken,
                amount_yuan=3_000_000,
                term_months=12,
                collateral_yuan=d.collateral_required_yuan,
            )
        if not d.approved:
            raise DemoFailed(
                "guarantee",
                f"{healthy} (rating {d.rating}) was refused: {d.reason}: {d.explanation}",
            )
        c.print(
            f"approved: rating {d.rating}, fund share {d.fund_share_bp / 100:.0f} %, "
            f"bank share {d.bank_share_bp / 100:.0f} %, fund exposure {d.fund_amount_yuan:,} yuan, ledger entry #{d.ledger_index}"
        )
        c.print(f"  {d.explanation}")
        demo.facts["guarantee"] = {
            "approved": d.approved,
            "reason": d.reason,
            "rating": d.rating,
            "fund_share_pct": d.fund_share_bp / 100,
        }


def _refuse_d_rated(demo: Demo, cast: Cast) -> None:
    """One of the least healthy enterprises, rated D, applies and is refused."""
    bank, failing, c = cast.bank, cast.failing, demo.console
    with (
        demo.step("A D-rated enterprise applies and is refused"),
        _coordinator(demo, bank) as coord,
    ):
        refused = None
        for code in failing:
            t = _consent(demo, code, bank, "credit_assessment", uses=2)
            if coord.score(code, t).rating == "D":
                gt = _consent(demo, code, bank, "guarantee")
                refused = coord.apply(
                    application_id=f"demo-{code}-{uuid.uuid4().hex[:8]}",
                    enterprise=code,
                    token=gt,
                    amount_yuan=1_000_000,
                    term_months=12,
                )
                break
        if refused is None:
            raise DemoFailed(
                "D-rated enterprise",
                f"none of the {len(failing)} least healthy enterprises was rated D",
            )
        if refused.approved:
            raise DemoFailed("D-rated enterprise", f"a D-rated enterprise was approved: {refused}")
        c.print(
            f"{refused.enterprise}: rating {refused.rating} → refused ({refused.reason}): {refused.explanation}"
        )
        demo.facts["refused"] = {
            "enterprise": refused.enterprise,
            "rating": refused.rating,
            "reason": refused.reason,
        }


def _revoke(demo: Demo, cast: Cast, token: str) -> None:
    """The enterprise revokes; the bank's next score request is refused within 1 s."""
    assert demo.dep is not None
    bank, healthy, c = cast.bank, cast.healthy, demo.console
    with (
        demo.step(f"{healthy} revokes its consent; {bank}'s next request is refused"),
        _coordinator(demo, bank) as coord,
    ):
        addr = demo.dep.service("consent").address
        consent_id = demo.facts["consents"][f"{healthy}:credit_assessment"]
        with ConsentClient(addr, demo.enterprise_tls(healthy)) as ent:
            t0 = time.perf_counter()
            ent.revoke(consent_id, reason="demo: the enterprise changes its mind")
        refused_after = None
        while time.perf_counter() - t0 < 5.0:
            try:
                coord.score(healthy, token)
            except PermissionDenied as exc:
                refused_after = time.perf_counter() - t0
                c.print(f"refused after {refused_after * 1000:.0f} ms: {exc.reason}: {exc.message}")
                break
            time.sleep(0.02)
        if refused_after is None:
            raise DemoFailed("revocation", "the bank was still answered 5 s after the revocation")
        if refused_after > 1.0:
            raise DemoFailed(
                "revocation",
                f"the revocation took {refused_after:.2f} s to be enforced (limit 1 s)",
            )
        demo.facts["revocation_ms"] = round(refused_after * 1000, 1)


def _subject_listing(demo: Demo, cast: Cast) -> None:
    """The enterprise lists every access to its data, each entry proved."""
    healthy, c = cast.healthy, demo.console
    with demo.step(f"{healthy} lists every access to its data, each with an inclusion proof"):
        # Only entries under a signed checkpoint come with a proof, and the ledger signs one
        # within a second of new entries: the story's last entries may need that second.
        deadline = time.monotonic() + 5.0
        while True:
            listing = demo.fedcredit(
                "audit", "subject", "--config", str(demo.config), "--enterprise", healthy
            )
            rows = listing["entries"]
            kinds = sorted({e["kind"] for e in rows})
            if {"score_access", "guarantee_decision"} <= set(kinds):
                break
            if time.monotonic() > deadline:
                raise DemoFailed(
                    "subject listing",
                    f"no score_access and guarantee_decision entries proved for {healthy} 5 s after "
                    f"the story wrote them; kinds found: {kinds}",
                )
            time.sleep(0.3)
        for e in rows:
            c.print(f"  #{e['index']} {e['kind']:<20} by {e['actor']}")
        demo.facts["subject_entries"] = len(rows)


def _audit(demo: Demo) -> None:
    """The auditor checks the checkpoint, its cosignatures and consistency, and replays the log."""
    assert demo.dep is not None
    c = demo.console
    with demo.step(
        "An auditor verifies the latest checkpoint, its cosignatures, consistency and the whole log"
    ):
        quorum = max(1, len(demo.dep.nodes) // 2 + 1)
        first = demo.dir / "audit" / "first-checkpoint.note"
        cp = demo.fedcredit(
            "audit", "checkpoint", "--config", str(demo.config), "--org", AUDITOR, "--quorum", str(quorum), "--previous", str(first),
            timeout=60,
        )  # fmt: skip
        c.print(
            f"checkpoint size {cp['size']} root {cp['root'][:16]}… cosigned by {len(cp['cosigned_by'])} witnesses, consistent with the first"
        )
        export = demo.dir / "audit" / "export.jsonl"
        demo.fedcredit(
            "ledger",
            "export",
            "--config",
            str(demo.config),
            "--org",
            AUDITOR,
            "--out",
            str(export),
            timeout=120,
        )
        rep = demo.fedcredit(
            "audit", "replay", "--export", str(export), "--config", str(demo.config), timeout=300
        )
        c.print(
            f"replayed {rep.get('entries')} entries: every leaf, the chain and the root match the signed checkpoint"
        )
        demo.facts["ledger"] = {
            "size": cp["size"],
            "cosignatures": len(cp["cosigned_by"]),
            "replayed": rep.get("entries"),
            "verified": True,
        }


def _services_summary(demo: Demo) -> None:
    """The fund, the active model and the ledger, as the services report them."""
    with demo.step("Summary from the services"), _coordinator(demo, "operator") as coord:
        fund = coord.fund_status()
        model = coord.get_model("")
        table_fact(
            demo,
            "ratings of the calibration population (active model)",
            {g: f"{n:,}" for g, n in sorted(model.grade_counts.items())},
        )
        metrics: dict[str, Any] = {}
        if model.metrics_json:
            import json

            metrics = json.loads(model.metrics_json)
        table_fact(
            demo,
            "model",
            {"version": model.version, "sha256": model.sha256[:16] + "…", **_flat(metrics)},
        )
        table_fact(
            demo,
            "guarantee fund",
            {
                "size (yuan)": f"{fund.fund_size_yuan:,}", "exposure (yuan)": f"{fund.exposure_yuan:,}",
                "capacity (yuan)": f"{fund.capacity_yuan:,}", "approved": fund.approved, "refused": fund.refused,
            },
        )  # fmt: skip
        table_fact(
            demo,
            "ledger",
            {"entries": demo.facts["ledger"]["size"], "witness cosignatures": demo.facts["ledger"]["cosignatures"],
             "replay": "verified", "revocation enforced after (ms)": demo.facts["revocation_ms"]},
        )  # fmt: skip


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, float):
            out[f"{prefix}{k}"] = f"{v:.4f}"
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def demo_params(demo: Demo) -> GBDTParams:
    """The demo model's settings: FATE's (depth 3, 32 bins, learning rate 0.3), ``--trees``."""
    from dataclasses import replace

    from fedcredit.training.run.city import PRESETS

    return replace(PRESETS["fate"], num_trees=demo.trees)


def train_model(demo: Demo, world: Path) -> None:
    """Consents for training, then the hist model with SecAgg+ in the demo's Flower engine."""
    assert demo.dep is not None
    _training_consents(demo, world)
    rep = _train(demo)
    _check_on_whole_city(demo, world, rep)
    _first_checkpoint(demo)


def _training_consents(demo: Demo, world: Path) -> None:
    from fedcredit.training.bank.consents import collect_training_consents

    assert demo.dep is not None
    c = demo.console
    with demo.step("Each bank's borrowers grant it a model_training consent"):
        with progress_bar(c) as bar:
            counts = collect_training_consents(demo.dep, world, progress=bar)
        for bank, n in counts.items():
            c.print(f"  {bank}: {n:,} borrowers consented")
        demo.facts["training_consents"] = counts


def _train(demo: Demo) -> CityTrainReport:
    """Federated training in the demo's engine, publication and activation; the report."""
    from fedcredit.training.run.city import train_city
    from fedcredit.training.server.settings import TrainSettings

    assert demo.dep is not None
    c = demo.console
    where = "Deployment Engine" if demo.engine == "deployment" else "Simulation Engine"
    with demo.step(
        f"Train the credit model: hist GBDT in Flower's {where} with SecAgg+, publish, activate"
    ):
        with progress_bar(c) as bar:
            rep = train_city(
                demo.dep,
                engine=demo.engine,
                secagg=True,
                progress=bar,
                settings=TrainSettings(params=demo_params(demo)),
            )
        # The banks' held-out borrowers are a few hundred: their AUC is printed with its
        # interval, and the figure that means something (the whole city's hidden
        # outcomes) comes in the next step and leads the summary.
        c.print(
            f"model {rep.model_version}: {rep.trees} trees in {rep.seconds:.1f} s "
            f"({rep.seconds_per_tree:.2f} s/tree, {rep.message_rounds_per_tree:g} message round "
            f"trips/tree) by {len(rep.banks)} banks; published and active"
            + (f", ledger entry #{rep.ledger_index}" if rep.ledger_index is not None else "")
            + f"; on the banks' {rep.test_rows} held-out borrowers AUC "
            f"{format_auc(rep.auc, _ci(rep.auc_ci95))} (pooled LightGBM "
            f"{format_auc(rep.pooled_auc, _ci(rep.pooled_auc_ci95))}), too few to judge the "
            "model by: the whole city's check follows"
        )
        demo.facts["model"] = {
            "engine": demo.engine,
            "version": rep.model_version,
            "auc": round(rep.auc, 4),
            "auc_ci95": [round(v, 4) for v in rep.auc_ci95],
            "pooled_auc": round(rep.pooled_auc, 4),
            "pooled_auc_ci95": [round(v, 4) for v in rep.pooled_auc_ci95],
            "test_rows": rep.test_rows,
            "ks": round(rep.ks, 4),
            "trees": rep.trees,
            "seconds_per_tree": round(rep.seconds_per_tree, 3),
            "message_rounds_per_tree": rep.message_rounds_per_tree,
            "banks": len(rep.banks),
        }
        table_fact(
            demo,
            "credit model",
            {
                "version": rep.model_version,
                f"AUC on {rep.test_rows} held-out borrowers (federated hist, SecAgg+)": format_auc(
                    rep.auc, _ci(rep.auc_ci95)
                ),
                "same, pooled LightGBM": format_auc(rep.pooled_auc, _ci(rep.pooled_auc_ci95)),
                "KS": f"{rep.ks:.3f}",
                "trees": rep.trees,
                "seconds per tree": f"{rep.seconds_per_tree:.2f}",
                "message round trips per tree": f"{rep.message_rounds_per_tree:g}",
                "banks": len(rep.banks),
                "training rows": sum(rep.rows_per_bank.values()),
            },
        )
    return rep


def _check_on_whole_city(demo: Demo, world: Path, rep: CityTrainReport) -> None:
    c = demo.console
    with demo.step(
        "Check the model against the whole city's hidden outcomes (the demo's own check)"
    ):
        city = _whole_city_auc(demo, world, rep.model_version)
        fed_text = format_auc(city.auc, city.auc_ci95)
        pooled_text = format_auc(city.pooled_auc, city.pooled_auc_ci95)
        c.print(
            f"{city.rows:,} enterprises no bank lent to, {city.positives} of them defaulting "
            f"within 12 months: AUC federated {fed_text}, pooled LightGBM on the same "
            f"borrowers {pooled_text}"
        )
        demo.facts["model"].update(
            {
                "city_auc": round(city.auc, 4),
                "city_auc_ci95": [round(v, 4) for v in city.auc_ci95],
                "city_pooled_auc": round(city.pooled_auc, 4),
                "city_pooled_auc_ci95": [round(v, 4) for v in city.pooled_auc_ci95],
                "city_rows": city.rows,
            }
        )
        # The whole city's figure leads the summary's table: it is the one with a narrow
        # interval (tens of thousands of outcomes, not a few hundred held-out borrowers).
        table = demo.facts["tables"]["credit model"]
        demo.facts["tables"]["credit model"] = {
            "version": table.pop("version"),
            f"AUC on {city.rows:,} non-borrowers' hidden outcomes (federated)": fed_text,
            "same, pooled LightGBM on the same borrowers": pooled_text,
        } | table


def _first_checkpoint(demo: Demo) -> None:
    c = demo.console
    with demo.step(
        "The auditor saves the first checkpoint it will later check consistency against"
    ):
        first = demo.dir / "audit" / "first-checkpoint.note"
        first.parent.mkdir(exist_ok=True)
        # The ledger signs a checkpoint within a second of new entries; wait for it.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                demo.fedcredit(
                    "audit",
                    "checkpoint",
                    "--config",
                    str(demo.config),
                    "--org",
                    AUDITOR,
                    "--save",
                    str(first),
                )
                break
            except DemoFailed:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        c.print(f"checkpoint saved to {first}")


@dataclass(frozen=True)
class CityCheck:
    auc: float
    auc_ci95: tuple[float, float]
    pooled_auc: float
    pooled_auc_ci95: tuple[float, float]
    rows: int
    positives: int


def _ci(v: list[float]) -> tuple[float, float] | None:
    return (v[0], v[1]) if len(v) == 2 else None


def _whole_city_auc(demo: Demo, world: Path, version: str) -> CityCheck:
    """AUC of the active model on every enterprise no bank lent to, against the city's hidden
    12-month outcomes, next to LightGBM trained on all banks' borrowers pooled (same settings).

    Only the demo may do this: it reads the truth file and computes features straight from the
    departments' raw records, which no service ever does."""
    import lightgbm as lgb
    import numpy as np

    from fedcredit.training.gbdt.metrics import auc, auc_interval
    from fedcredit.training.server.strategies import lgb_params
    from fedcredit.world.pooled import compute_all

    with _coordinator(demo, "operator") as coord:
        text = coord.get_model(version, include_model_text=True).model_text
    booster = lgb.Booster(model_str=text)
    names = list(booster.feature_name())
    codes, all_names, matrix = compute_all(world)
    x = matrix[:, [all_names.index(f) for f in names]]
    truth = {r["code"]: int(r["defaulted_12m"]) for r in read_truth(world)}
    labels: dict[str, int] = {}
    for loans in sorted((world / "banks").glob("*/loans.csv")):
        with open(loans, newline="") as fh:
            for row in csv.DictReader(fh):
                labels[row["code"]] = max(labels.get(row["code"], 0), int(row["defaulted"]))
    index = {c: i for i, c in enumerate(codes)}
    borrowers = np.array([index[c] for c in labels if c in index])
    others = np.array([i for i, c in enumerate(codes) if c not in labels])
    y_others = np.array([truth[codes[i]] for i in others], dtype=np.float64)
    fate = demo_params(demo)
    pooled = lgb.train(
        lgb_params(fate, boost_from_average=True),
        lgb.Dataset(
            x[borrowers], np.array([labels[codes[i]] for i in borrowers]), feature_name=names
        ),
        num_boost_round=fate.num_trees,
    )
    fed_scores, pooled_scores = booster.predict(x[others]), pooled.predict(x[others])
    return CityCheck(
        auc(y_others, fed_scores),
        auc_interval(y_others, fed_scores),
        auc(y_others, pooled_scores),
        auc_interval(y_others, pooled_scores),
        len(others),
        int(y_others.sum()),
    )
