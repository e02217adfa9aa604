"""Private-mode settings against AUC, quickly (issue 15's tuning; not part of `make bench`).

``python -m bench.tune_training_privacy '[{}, {"max_bins": 6}]' '[4]' 4 '{"shares": [0.9, 0.05, 0.05], "sketch_rounds": 1}'``
trains the `private` preset with each override (GBDTParams fields) at each ε (``null``:
no noise) on the FATE homo split, ``repeats`` times with *seeded* noise (NumPy's rounded
normal, the same seeds for every variant, so variants differ by their settings and not by
their draws; NOT OpenDP's sampler, for speed), bins from the DP sketch (``sketch_rounds``,
default 1; 0: the public grid), and prints the mean, min and max AUC.
``SEED0=7`` in the environment picks another set of seeds; ``CITY=40000`` runs on the
synthetic city of that many enterprises (bench_training_privacy's ``City``) instead of
FATE; ``VARY_FEATURE_SEED=1`` gives run r the feature seed ``feature_seed + r`` (default 0;
with ``features_per_tree`` each run gets another draw of subsets, as a real run whose
coordinator draws the seed, so the mean is over the subsets' luck as well as the noise's). The README's tuning figures
come from this script; the published curve is bench/bench_training_privacy.py's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_training_privacy import DELTA, City, Fate
from fedcredit.training.gbdt.central import train_parties
from fedcredit.training.gbdt.errors import NoSplitPossible
from fedcredit.training.gbdt.params import GBDTParams
from fedcredit.training.gbdt.party import Party
from fedcredit.training.gbdt.privacy import (
    DEFAULT_SHARES,
    DEFAULT_SKETCH_ROUNDS,
    BankNoise,
    NoisePlan,
    public_spec,
    seeded_sampler,
    sketch_round,
)
from fedcredit.training.run.city import PRESETS


def run(
    d: Fate,
    params: GBDTParams,
    eps: float | None,
    repeats: int,
    shares: Any,
    seed0: int,
    sketch_rounds: float = DEFAULT_SKETCH_ROUNDS,
) -> list[float]:
    vary = os.environ.get("VARY_FEATURE_SEED") == "1"
    out = []
    for r in range(repeats if eps is not None or vary else 1):
        # Reproducible subsets: seed 0 (or the given one), plus r with VARY_FEATURE_SEED.
        p = replace(params, feature_seed=(params.feature_seed or 0) + (r if vary else 0))
        if eps is None:
            spec = (
                d.exact_quantile_spec(p.max_bins)
                if sketch_rounds > 0.0
                else public_spec(d.names, d.ranges, p.max_bins)
            )
            parties = [Party(spec, b.x, b.y) for b in d.banks]
        else:
            plan = NoisePlan.calibrate(
                p, len(d.names), len(d.banks), eps, DELTA, shares, sketch_rounds
            )
            noises = [
                BankNoise(plan, seeded_sampler(1000 * seed0 + 10 * r + i))
                for i in range(len(d.banks))
            ]
            if sketch_rounds > 0.0:
                xs = [b.x for b in d.banks]
                spec, _ = sketch_round(d.names, d.ranges, p.max_bins, xs, noises)
            else:
                spec = public_spec(d.names, d.ranges, p.max_bins)
            parties = [Party(spec, b.x, b.y, noise=n) for b, n in zip(d.banks, noises, strict=True)]
        try:
            out.append(d.score(train_parties(p, spec, parties))[0])
        except NoSplitPossible:  # no model: ranks no better than chance (as the bench)
            out.append(0.5)
    return out


def main(argv: list[str]) -> None:
    variants = json.loads(argv[0])
    epsilons = json.loads(argv[1])
    repeats = int(argv[2]) if len(argv) > 2 else 4
    plan_kw = json.loads(argv[3]) if len(argv) > 3 else {}
    shares = tuple(plan_kw.get("shares", DEFAULT_SHARES))
    sketch_rounds = float(plan_kw.get("sketch_rounds", DEFAULT_SKETCH_ROUNDS))
    seed0 = int(os.environ.get("SEED0", "0"))
    city = int(os.environ.get("CITY", "0"))
    with tempfile.TemporaryDirectory(prefix="fedcredit-tune-privacy-") as work:
        d = City(Path(work), city) if city > 0 else Fate()
    print(d.name, flush=True)
    for v in variants:
        params = replace(PRESETS["private"], **v)
        for eps in epsilons:
            t0 = time.perf_counter()
            a = run(d, params, eps, repeats, shares, seed0, sketch_rounds)
            print(
                f"{json.dumps(v)} shares={list(shares)} sketch_rounds={sketch_rounds:g} eps={eps} AUC mean {np.mean(a):.4f} "
                f"min {min(a):.4f} max {max(a):.4f} ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
