"""The banks' Flower ClientApp (Message API).

Message types it answers (the server's side is training/server/strategies.py):

- ``query.setup``  — feature names, row count, finite min/max per feature.
- ``query.sketch`` — fine-grid value counts and row totals (summable) for the
  shared binning; ``train`` with op "sketch" is the same through SecAgg+.
- ``train.hist``   — one `hist` round: apply the last splits / finished tree,
  return integer histograms of the asked leaves (and validation-loss sums).
  ``train`` (default action) with op "hist" is the same through SecAgg+:
  the values go out as limbs, masked by ``secaggplus_mod``.
- ``train.dpsketch`` — private mode without secure sums: the bank's DP sketch (rows per
  cell of the public fine grid) with the full noise, once per training; ``train.totals``
  — its noisy [rows, positives].
- ``train.masked`` — the same sums (op "totals", "sketch", "dpsketch" or "hist") in one round,
  masked with pairwise keys agreed at setup (training/flower/masking.py).
- ``train.bagging`` / ``train.cyclic`` — the LightGBM baselines: boost a few
  trees on the bank's rows from the given global model.

Rows never leave the bank; only sums over its rows do. They go back as ``.npy`` bytes
in one ConfigRecord ``sums`` (training/flower/sums.py): three Flower objects a reply
instead of seven, each object being a request to push and one to pull.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from fedcredit.common.errors import FailedPrecondition
from fedcredit.training.bank.data import BankData
from fedcredit.training.bank.source import DataSource, NodeConfigSource
from fedcredit.training.flower import masking, secure, sums
from fedcredit.training.gbdt.binning import BinSpec, local_range, local_sketch
from fedcredit.training.gbdt.booster import Request
from fedcredit.training.gbdt.errors import ProtocolError
from fedcredit.training.gbdt.params import GBDTParams
from fedcredit.training.gbdt.party import Party
from fedcredit.training.gbdt.privacy import (
    DEFAULT_EPSILON,
    BankNoise,
    CoordinatorDeviates,
    InvalidPrivacySettings,
    NoisePlan,
    PrivacyBudgetExceeded,
    PublicRange,
    RequestGuard,
    account_plans,
    load_ranges,
    opendp_sampler,
    public_spec,
    quantile_spec,
    seeded_sampler,
    sketch_counts,
    sketch_grid,
)

PARTY_STATE = "fedcredit.party"
SPEC_STATE = "fedcredit.spec"
MASK_STATE = "fedcredit.masking"
GUARD_STATE = "fedcredit.guard"
SEEN_STATE = "fedcredit.trainings"
# Private trainings whose DP sketch this bank released: {training id: digest of the
# settings and noise plan it priced}.
SKETCHED_STATE = "fedcredit.sketched"
# Private trainings charged to the bank's lifetime budget in this run (no ledger file).
SPENT_STATE = "fedcredit.spent"


class PrivacyLedgerUnreadable(FailedPrecondition):
    reason = "PRIVACY_LEDGER_UNREADABLE"


# (data key, spec digest, validation fraction) -> Party with binned rows; per process.
_PARTIES: dict[tuple[str, str, float], Party] = {}


def _arrays(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord(
        {k: Array.from_numpy_ndarray(np.ascontiguousarray(v)) for k, v in arrays.items()}
    )


def _node_config(context: Context) -> dict[str, Any]:
    # The run id lets a data source keep what it fetched for one run (city mode's cache).
    return dict(context.node_config) | {"run-id": int(context.run_id)}


def _sketched(context: Context) -> dict[str, str]:
    rec = context.state.config_records.get(SKETCHED_STATE)
    return dict(json.loads(cast(str, rec["sketched"]))) if rec is not None else {}


def _plan_digest(blob: dict[str, Any]) -> str:
    """What a DP sketch was released under: the run's settings and noise plan."""
    text = json.dumps({"params": blob["params"], "plan": blob["plan"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_spent(context: Context, path: str) -> list[dict[str, Any]]:
    """The private trainings this bank released anything for: from its ledger file when
    it keeps one (across runs), else from this run's context."""
    if path:
        try:
            text = Path(path).read_text() if Path(path).exists() else ""
            return list(json.loads(text)["trainings"]) if text else []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PrivacyLedgerUnreadable(f"cannot read privacy-ledger {path}: {exc}") from None
    rec = context.state.config_records.get(SPENT_STATE)
    return list(json.loads(cast(str, rec["trainings"]))) if rec is not None else []


def _write_spent(context: Context, path: str, spent: list[dict[str, Any]]) -> None:
    text = json.dumps({"trainings": spent})
    if not path:
        context.state.config_records[SPENT_STATE] = ConfigRecord({"trainings": json.dumps(spent)})
        return
    tmp = Path(f"{path}.tmp")
    with tmp.open("w") as fh:  # written and synced before the release it pays for
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _reply(msg: Message, content: RecordDict) -> Message:
    return Message(content, reply_to=msg)


def _truthy(v: Any) -> bool:
    return v is True or str(v).strip().lower() in ("1", "true", "yes")


class _Bank:
    def __init__(self, source: DataSource) -> None:
        self.source = source

    def require_private(self, context: Context, what: str) -> None:
        """A bank with node config ``private-only`` answers the private protocol only: a
        coordinator that asks as if the run were not private (a downgrade) is refused
        before anything is read or kept."""
        nc = self.source.privacy_config(_node_config(context))
        if _truthy(nc.get("private-only", False)):
            raise CoordinatorDeviates(
                f"this bank answers private training only (node config private-only); "
                f"refused {what} without a noise plan"
            )

    def data(self, context: Context) -> BankData:
        return self.source.load(_node_config(context))

    def setup(self, context: Context, cfg: dict[str, Any]) -> RecordDict:
        if not cfg.get("private"):
            self.require_private(context, "a set-up with row counts and value ranges")
        d = self.data(context)
        # A fresh key pair per run for the one-round secure sums; the private key stays
        # in this bank's own context.
        private = masking.new_private_key()
        context.state.config_records[MASK_STATE] = ConfigRecord(
            {"private": private, "digest": "", "seq": 0}
        )
        info: dict[str, Any] = {
            "feature_names": list(d.feature_names),
            # How the server names this bank in its messages (never a Flower node id).
            "bank": self.source.bank_id(_node_config(context)),
            "public_key": masking.public_key(private),
        }
        info |= self.signed_key(context, masking.public_key(private))
        if cfg.get("private"):
            # Private mode: no count, no value range; nothing about this bank's rows.
            return RecordDict({"info": ConfigRecord(info)})
        lo, hi = local_range(d.x)
        # Its rows and count of defaults: the baselines refuse a bank with one class.
        info |= {"rows": d.rows, "positives": d.positives}
        # City mode: the nodes' global bin edges (population quantiles), the same for
        # every bank, so no binning round over the banks' own rows is needed.
        if "max_bins" in cfg:
            edges = self.source.bin_edges(_node_config(context), int(cfg["max_bins"]))
            if edges is not None:
                info["edges"] = json.dumps([e.tolist() for e in edges])
        return RecordDict({"info": ConfigRecord(info), "range": _arrays(lo=lo, hi=hi)})

    def signed_key(self, context: Context, key: bytes) -> dict[str, Any]:
        """A bank with an identity in the deployment's PKI signs its secure-sum key for this
        run and node (training/flower/masking.py), so no coordinator can swap it."""
        tls = self.source.identity(_node_config(context))
        if tls is None:
            return {}
        _ca, cert, sk = tls.read()
        org = tls.identity().org_id
        sig = masking.sign_key(sk, int(context.run_id), int(context.node_id), org, key)
        return {"key_bank": org, "key_certificate": cert.decode(), "key_signature": sig}

    def check_roster(self, context: Context, roster_text: str) -> None:
        """Before masking under a roster for the first time: with an identity, every other
        bank's key must be signed by that bank for this run (a substituted key is refused
        with SECURE_KEY_NOT_SIGNED or SECURE_KEY_SIGNATURE_INVALID)."""
        tls = self.source.identity(_node_config(context))
        if tls is None:
            return
        ca = tls.read()[0]
        entries = masking.parse_entries(roster_text)
        masking.verify_roster(ca, int(context.run_id), int(context.node_id), entries)

    def sketch(self, context: Context, cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        self.require_private(context, "an exact sketch with label totals")
        d = self.data(context)
        lo = np.asarray(cfg["lo"], dtype=np.float64)
        hi = np.asarray(cfg["hi"], dtype=np.float64)
        counts = local_sketch(d.x, lo, hi, int(cfg["cells"]))
        from fedcredit.training.gbdt.party import validation_mask

        vmask = validation_mask(d.ids, float(cfg["validation_fraction"]))
        totals = np.array(
            [int((~vmask).sum()), int(d.y[~vmask].sum()), int(vmask.sum()), int(d.y[vmask].sum())],
            dtype=np.int64,
        )
        return counts, totals

    def party(self, context: Context, cfg: dict[str, Any]) -> Party:
        if "spec" in cfg:
            # A new training: what the last one left in this context is not this one's.
            self.new_training(context, cfg)
            context.state.config_records[SPEC_STATE] = ConfigRecord(
                {
                    "spec": cfg["spec"],
                    "validation_fraction": float(cfg["validation_fraction"]),
                    "privacy": str(cfg.get("privacy", "")),
                }
            )
        if SPEC_STATE not in context.state.config_records:
            raise ProtocolError("a training round came before the one carrying the bin spec")
        saved = context.state.config_records[SPEC_STATE]
        spec_json = cast(str, saved["spec"])
        vf = cast(float, saved["validation_fraction"])
        privacy = cast(str, saved.get("privacy", ""))
        key = (
            self.source.key(_node_config(context)),
            hashlib.sha256((spec_json + privacy).encode()).hexdigest()
            + (f"/{json.loads(privacy)['training']}" if privacy else ""),
            vf,
        )
        party = _PARTIES.get(key)
        if party is None:
            d = self.data(context)
            spec = BinSpec.from_dict(json.loads(spec_json))
            if privacy:
                noise, guard = self.private(context, spec, json.loads(privacy))
                party = Party(spec, d.x, d.y, d.ids, vf, noise=noise, guard=guard)
            else:
                party = Party(spec, d.x, d.y, d.ids, vf)
            _PARTIES[key] = party
        if "spec" in cfg and party.noise is not None:
            # A private training starts here (its first release follows): charged once,
            # whether this process built the party or kept it from an earlier run.
            self.charge(context, json.loads(privacy), party.noise.plan, "start")
        if PARTY_STATE in context.state.array_records:
            rec = context.state.array_records[PARTY_STATE]
            party.import_state({k: rec[k].numpy() for k in rec})
        if party.guard is not None and GUARD_STATE in context.state.config_records:
            party.guard.restore(cast(str, context.state.config_records[GUARD_STATE]["state"]))
        return party

    def new_training(self, context: Context, cfg: dict[str, Any]) -> None:
        """Forget the last training's state; a private training's id is used once only
        (a coordinator that restarts a training to reset the banks' checks is refused)."""
        for rec in (PARTY_STATE,):
            if rec in context.state.array_records:
                del context.state.array_records[rec]
        if GUARD_STATE in context.state.config_records:
            del context.state.config_records[GUARD_STATE]
        if not cfg.get("privacy"):
            return
        training = str(json.loads(cast(str, cfg["privacy"])).get("training", ""))
        seen = context.state.config_records.get(SEEN_STATE)
        ids = list(cast(list[str], seen["ids"])) if seen is not None else []
        if not training or training in ids:
            raise CoordinatorDeviates(
                f"private training id {training!r} is missing or was used before"
            )
        context.state.config_records[SEEN_STATE] = ConfigRecord({"ids": [*ids, training]})

    def check_share(self, context: Context, cfg: dict[str, Any], parties: int | None) -> None:
        """Before a private release: the noise plan's share (1/sqrt(plan.banks) of the
        noise) must be covered by the sum it goes into. ``parties`` is what this bank sees
        itself: 1 in clear (the coordinator sees its vector: it adds all the noise), the
        roster's size in a masked sum (which stops on any drop, so the survivors' shares
        are all of them), None on the SecAgg+ path (it unmasks the sum of whichever banks
        survive, with fewer shares than priced): refused for private runs."""
        text = str(cfg.get("privacy", ""))
        # A request with a spec starts a new training: only its own plan counts.
        if not text and "spec" not in cfg and SPEC_STATE in context.state.config_records:
            text = str(context.state.config_records[SPEC_STATE].get("privacy", ""))
        if not text:
            self.require_private(context, "exact histograms or totals")
            return  # not a private run: nothing is noised
        try:
            banks = NoisePlan.from_dict(json.loads(text)["plan"]).banks
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidPrivacySettings(f"private training without a noise plan: {exc}") from None
        if parties is None:
            raise CoordinatorDeviates(
                "a private training's sums go through the masked protocol only; SecAgg+ "
                "sums the survivors' noise shares, fewer than the plan's"
            )
        if not banks <= parties:
            raise CoordinatorDeviates(
                f"noise plan splits the noise over {banks} banks but this sum has {parties} "
                f"(each bank would add 1/sqrt({banks}) of it; expected at most {parties})"
            )

    def charge(self, context: Context, blob: dict[str, Any], plan: NoisePlan, stage: str) -> None:
        """Before a private training's ``stage`` ("sketch" or "start") is released: with
        node config ``max-epsilon-total``, every training this bank released anything for
        (its ``privacy-ledger`` file, else this run) composed with this one (OpenDP) must
        stay within it, or PRIVACY_BUDGET_EXCEEDED; the training and stage are recorded
        before the release, and a stage already in the ledger is refused (a new run's
        empty context does not reset it). A training refused later still counts."""
        nc = self.source.privacy_config(_node_config(context))
        cap = nc.get("max-epsilon-total")
        path = str(nc.get("privacy-ledger", ""))
        if cap is None and not path:
            return
        training = str(blob.get("training", ""))
        spent = _read_spent(context, path)
        for t in spent:
            if t.get("training") == training:
                if stage in t.get("stages", []):
                    raise CoordinatorDeviates(
                        f"private training {training!r}: its {stage} was already released "
                        "(privacy-ledger)"
                    )
                t["stages"] = [*t.get("stages", []), stage]
                _write_spent(context, path, spent)
                return  # its budget was charged at its first release
        plans = [NoisePlan.from_dict(t["plan"]) for t in spent] + [plan]
        eps = account_plans(plans, max(p.delta for p in plans) * len(plans))
        if cap is not None and not eps <= float(cap) * (1 + 1e-9):
            raise PrivacyBudgetExceeded(
                f"{len(plans)} private trainings on this bank's rows would spend epsilon "
                f"{eps:.3f} together; it allows at most {float(cap):g} in all "
                "(node config max-epsilon-total)"
            )
        entry = {"training": training, "plan": plan.to_dict(), "stages": [stage]}
        _write_spent(context, path, [*spent, entry])

    def checked_plan(
        self, context: Context, blob: dict[str, Any]
    ) -> tuple[dict[str, PublicRange], GBDTParams, BankNoise]:
        """The public ranges this bank holds itself and the run's settings and noise plan,
        checked against its own budget, before it releases anything."""
        nc = self.source.privacy_config(_node_config(context))
        path = nc.get("public-ranges")
        if not path:
            raise CoordinatorDeviates(
                "asked for private training but this bank has no public range file "
                "(node config public-ranges)"
            )
        ranges = load_ranges(str(path))
        params = GBDTParams.from_dict(blob["params"])
        plan = NoisePlan.from_dict(blob["plan"])
        plan.check(float(nc.get("max-epsilon", DEFAULT_EPSILON)), params, plan.n_features)
        seed = nc.get("noise-seed")
        sampler = seeded_sampler(int(seed)) if seed is not None else opendp_sampler
        return ranges, params, BankNoise(plan, sampler)

    def dp_sketch(self, context: Context, cfg: dict[str, Any], parties: int = 1) -> np.ndarray:
        """Private mode's first release: this bank's rows per cell of the fine public
        grid, with its share of the sketch's noise (the noise plan prices it), once per
        training id and before the training starts; ``parties`` as in ``check_share``."""
        self.check_share(context, cfg, parties)
        blob = json.loads(cast(str, cfg["privacy"]))
        d = self.data(context)
        ranges, _params, noise = self.checked_plan(context, blob)
        plan = noise.plan
        if plan.n_features != len(d.feature_names):
            raise CoordinatorDeviates(
                f"noise plan covers {plan.n_features} features; this bank has "
                f"{len(d.feature_names)}"
            )
        training = str(blob.get("training", ""))
        seen = context.state.config_records.get(SEEN_STATE)
        done = _sketched(context)
        if (
            not training
            or training in done
            or (seen is not None and training in cast(list[str], seen["ids"]))
        ):
            raise CoordinatorDeviates(
                f"DP sketch for private training id {training!r}: missing, already released "
                "or asked after the training started"
            )
        self.charge(context, blob, plan, "sketch")
        counts = noise.noisy_sketch(sketch_counts(sketch_grid(d.feature_names, ranges), d.x))
        done[training] = _plan_digest(blob)
        context.state.config_records[SKETCHED_STATE] = ConfigRecord({"sketched": json.dumps(done)})
        return counts.ravel().astype(np.int64)

    def private(
        self, context: Context, spec: BinSpec, blob: dict[str, Any]
    ) -> tuple[BankNoise, RequestGuard]:
        """This bank's own checks of a private run before it answers anything: the bin spec
        against the one it computes itself (the public grid from its own ranges, or the
        public quantile rule on the DP sketch it contributed to, under the same plan),
        the noise plan against its own budget."""
        ranges, params, noise = self.checked_plan(context, blob)
        if noise.plan.n_features != spec.num_features:
            raise CoordinatorDeviates(
                f"noise plan covers {noise.plan.n_features} features; the spec has "
                f"{spec.num_features}"
            )
        if noise.plan.sketch_rounds > 0.0:
            training = str(blob.get("training", ""))
            if _sketched(context).get(training) != _plan_digest(blob):
                raise CoordinatorDeviates(
                    "bins from a DP sketch this bank did not release under this training's "
                    "settings and noise plan"
                )
            try:
                counts = np.asarray(blob["sketch"], dtype=np.int64)
            except (KeyError, TypeError, ValueError, OverflowError):
                raise CoordinatorDeviates("quantile bins without the sketch's counts") from None
            expected = quantile_spec(spec.feature_names, ranges, counts, params.max_bins)
        else:
            expected = public_spec(spec.feature_names, ranges, params.max_bins)
        return noise, RequestGuard(params, spec, expected)

    def totals(self, context: Context, cfg: dict[str, Any], parties: int = 1) -> np.ndarray:
        """Private mode: [training rows, positives, 0, 0] with this bank's noise share."""
        self.check_share(context, cfg, parties)
        party = self.party(context, cfg)
        out = party.totals().to_array()
        self.save(context, party)
        return out

    def save(self, context: Context, party: Party) -> None:
        context.state.array_records[PARTY_STATE] = _arrays(**party.export_state())
        if party.guard is not None:
            context.state.config_records[GUARD_STATE] = ConfigRecord(
                {"state": party.guard.export()}
            )

    def secure_vector(self, context: Context, cfg: dict[str, Any]) -> np.ndarray:
        """The int64 vector of a masked operation (before masking): its noise shares
        summed over the roster's banks."""
        payload = json.loads(cast(str, cfg["payload"]))
        op = cfg["op"]
        parties = len(masking.parse_roster(cast(str, cfg["roster"])))
        if op == "sketch":
            counts, totals = self.sketch(context, payload)
            return np.concatenate([counts.ravel(), totals]).astype(np.int64)
        if op == "totals":
            return self.totals(context, payload, parties).astype(np.int64)
        if op == "dpsketch":
            return self.dp_sketch(context, payload, parties)
        if op == "hist":
            hists, valid = self.hist(context, payload, parties)
            parts = [hists.ravel()] + ([valid] if valid is not None else [])
            return np.concatenate(parts).astype(np.int64)
        raise ValueError(
            f"unknown secure operation {op!r}; expected sketch, dpsketch, totals or hist"
        )

    def masked(self, context: Context, cfg: dict[str, Any], flat: np.ndarray) -> np.ndarray:
        """Mask ``flat`` for this request's round, after checking roster and round."""
        if MASK_STATE not in context.state.config_records:
            raise masking.RosterRefused("a secure round came before this run's key set-up")
        st = context.state.config_records[MASK_STATE]
        roster_text = cast(str, cfg["roster"])
        digest = masking.roster_digest(roster_text)
        if st["digest"] and st["digest"] != digest:
            raise masking.RosterRefused("the secure roster changed during the run")
        if not st["digest"]:
            self.check_roster(context, roster_text)
        seq = int(cast(int, cfg["seq"]))
        last = int(cast(int, st["seq"]))
        if seq <= last:
            raise masking.MaskReuseRefused(
                f"secure round {seq} is not after round {last}, which this bank already masked"
            )
        roster = masking.parse_roster(roster_text)
        m = masking.Masker(int(context.node_id), cast(bytes, st["private"]), int(context.run_id))
        out = m.mask(flat, roster, seq)
        context.state.config_records[MASK_STATE] = ConfigRecord(
            {"private": st["private"], "digest": digest, "seq": seq}
        )
        return out

    def hist(
        self, context: Context, cfg: dict[str, Any], parties: int | None = 1
    ) -> tuple[np.ndarray, np.ndarray | None]:
        self.check_share(context, cfg, parties)
        party = self.party(context, cfg)
        req = Request.from_config(json.loads(cast(str, cfg["request"])))
        hists, valid = party.respond(req)
        self.save(context, party)
        return hists, valid

    def boost(self, context: Context, cfg: dict[str, Any]) -> RecordDict:
        """LightGBM baselines: boost ``rounds`` trees on this bank's rows from the given model.

        With ``total_rows`` (bagging) the learning rate is scaled by this bank's share of
        all the banks' rows, so that the trees every bank adds in a round sum to one step.
        """
        # Imported here: the Deployment Engine starts a fresh ClientApp process for every
        # message, and LightGBM (with scikit-learn and SciPy) takes seconds to import.
        self.require_private(context, "a LightGBM model boosted on its rows")
        import lightgbm as lgb

        d = self.data(context)
        params = json.loads(cast(str, cfg["lgb_params"]))
        if "total_rows" in cfg:
            total = int(cast(int, cfg["total_rows"]))
            if not 0 < d.rows <= total:
                raise ValueError(
                    f"this bank has {d.rows} rows but the server counts {total} rows in all"
                )
            params["learning_rate"] = float(params["learning_rate"]) * d.rows / total
        model = cast(str, cfg.get("model", ""))
        init = lgb.Booster(model_str=model) if model else None
        ds = lgb.Dataset(d.x, d.y, feature_name=list(d.feature_names), free_raw_data=False)
        booster = lgb.train(params, ds, num_boost_round=int(cfg["rounds"]), init_model=init)
        return RecordDict(
            {"model": ConfigRecord({"model": booster.model_to_string(), "rows": d.rows})}
        )


def make_client_app(source: DataSource | None = None, mods: Sequence[Mod] = ()) -> ClientApp:
    """The ClientApp; ``mods`` are extra Flower mods (e.g. a bank's own logging)."""
    bank = _Bank(source if source is not None else NodeConfigSource())
    app = ClientApp(mods=list(mods))

    @app.query("ping")
    def ping(msg: Message, context: Context) -> Message:
        # An empty round trip: the engine's own latency floor, measured by benchmarks.
        return _reply(msg, RecordDict())

    @app.query("setup")
    def setup(msg: Message, context: Context) -> Message:
        rec = msg.content.config_records.get("config")
        return _reply(msg, bank.setup(context, dict(rec) if rec is not None else {}))

    @app.query("sketch")
    def sketch(msg: Message, context: Context) -> Message:
        cfg = dict(msg.content.config_records["config"])
        counts, totals = bank.sketch(context, cfg)
        return _reply(msg, sums.pack(counts=counts, totals=totals))

    @app.train("hist")
    def hist(msg: Message, context: Context) -> Message:
        cfg = dict(msg.content.config_records["config"])
        hists, valid = bank.hist(context, cfg)
        arrays = {"hist": hists}
        if valid is not None:
            arrays["valid"] = valid
        return _reply(msg, sums.pack(**arrays))

    @app.train(mods=[secaggplus_mod])
    def secure_train(msg: Message, context: Context) -> Message:
        # Reached through SecAgg+ (its last-but-one stage): legacy FitIns in, FitRes out,
        # and the mod masks the returned vector before it leaves the bank.
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        cfg = {k: v for k, v in fitins.config.items()}
        payload = json.loads(cast(str, cfg["payload"]))
        if cfg["op"] == "sketch":
            counts, totals = bank.sketch(context, payload)
            flat = np.concatenate([counts.ravel(), totals])
        elif cfg["op"] == "hist":
            hists, valid = bank.hist(context, payload, parties=None)
            parts = [hists.ravel()] + ([valid] if valid is not None else [])
            flat = np.concatenate(parts)
        else:
            raise ValueError(f"unknown secure operation {cfg['op']!r}; expected sketch or hist")
        res = FitRes(
            status=Status(Code.OK, ""),
            parameters=ndarrays_to_parameters([secure.encode(flat)]),
            num_examples=1,
            metrics={},
        )
        return _reply(msg, compat.fitres_to_recorddict(res, keep_input=False))

    @app.train("totals")
    def totals(msg: Message, context: Context) -> Message:
        # Private mode without secure sums: the noisy totals in clear (full noise each).
        cfg = dict(msg.content.config_records["config"])
        return _reply(msg, sums.pack(totals=bank.totals(context, cfg)))

    @app.train("dpsketch")
    def dpsketch(msg: Message, context: Context) -> Message:
        cfg = dict(msg.content.config_records["config"])
        return _reply(msg, sums.pack(sketch=bank.dp_sketch(context, cfg)))

    @app.train("masked")
    def masked(msg: Message, context: Context) -> Message:
        cfg = dict(msg.content.config_records["config"])
        out = bank.masked(context, cfg, bank.secure_vector(context, cfg))
        return _reply(msg, sums.pack(masked=out))

    @app.train("bagging")
    def bagging(msg: Message, context: Context) -> Message:
        return _reply(msg, bank.boost(context, dict(msg.content.config_records["config"])))

    @app.train("cyclic")
    def cyclic(msg: Message, context: Context) -> Message:
        return _reply(msg, bank.boost(context, dict(msg.content.config_records["config"])))

    return app


# For `flwr run` / the Deployment Engine: data from each SuperNode's node config.
app = make_client_app()
