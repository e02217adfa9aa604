"""The feature warm-up ([node] warm_cache): the same vectors as on demand, never stale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcredit.node import catalog
from fedcredit.node import engine as engine_mod
from fedcredit.node.client import build_request
from fedcredit.node.engine import FeatureEngine
from fedcredit.node.schema import month_ordinal
from fedcredit.node.store import NodeStore
from tests.node.conftest import Consents, NodeFactory, world_codes
from tests.node.test_store import append_january_filing


def _store(url: str, small_world: Path) -> NodeStore:
    store = NodeStore(url, "tax")
    store.create_schema()
    store.load(small_world)
    return store


@pytest.mark.parametrize("chunk", [7, 2_000])
def test_warm_vectors_equal_the_on_demand_ones(
    small_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(engine_mod, "WARM_CHUNK", chunk)
    url = f"sqlite:///{tmp_path / 'n.sqlite'}"
    store = _store(url, small_world)
    warm = FeatureEngine(store, warm=True)
    assert warm.warm() > 0
    cold = FeatureEngine(store)
    codes = world_codes(small_world)
    st = cold.state()
    assert warm.cached() == len(store.codes()) == len(store.fetch_population(st.as_of or 0)[0])
    v_cold, r_cold = cold.vectors(codes, st)
    v_warm, r_warm = warm.vectors(codes, warm.state())
    np.testing.assert_array_equal(r_warm, r_cold)
    np.testing.assert_array_equal(v_warm, v_cold)  # NaN == NaN here
    assert warm.last_warm is not None and warm.last_warm[0] == st.data_version
    store.close()


def test_a_population_larger_than_the_cache_is_not_warmed(
    small_world: Path, tmp_path: Path
) -> None:
    store = _store(f"sqlite:///{tmp_path / 'n.sqlite'}", small_world)
    engine = FeatureEngine(store, cache_size=3, warm=True)
    assert engine.warm() == 0 and engine.cached() == 0
    store.close()


def test_a_warm_up_overtaken_by_a_load_is_dropped(small_world: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'n.sqlite'}"
    store = _store(url, small_world)
    engine = FeatureEngine(store, warm=False)
    engine.state()  # the engine serves data version 1
    code = world_codes(small_world)[3]
    real = store.fetch

    def load_meanwhile(codes: list[str], as_of: int):  # type: ignore[no-untyped-def]
        out = real(codes, as_of)
        # A request sees the new version while the warm-up is still computing the old.
        append_january_filing(url, tmp_path, code, 55_555_555)
        engine.state()
        return out

    store.fetch = load_meanwhile  # type: ignore[method-assign]
    assert engine.warm() == 0 and engine.cached() == 0
    store.fetch = real  # type: ignore[method-assign]
    st = engine.state()
    assert st.data_version == 2
    [[revenue]] = engine.vectors([code], st)[0][:, [engine.index["revenue_12m"]]].tolist()
    expected = catalog.compute(store.fetch([code], month_ordinal("2026-01"))).values[0]
    assert revenue == expected[engine.index["revenue_12m"]] and revenue >= 55_000_000
    store.close()


def test_a_warm_node_answers_appended_data_at_once(
    make_node: NodeFactory, consents: Consents, small_world: Path, tmp_path: Path
) -> None:
    node = make_node("tax", warm=True)
    node.engine.start_warming()
    assert node.engine.wait_warm(30)
    n = node.engine.cached()
    assert n > 1  # every enterprise, before any request
    code = world_codes(small_world)[5]
    tok = consents.token(code, max_uses=5)
    with node.client() as c:
        [before] = c.get_features([(code, tok)], ["revenue_12m"], **node.coordinator_kw())
        url = node.store.engine.url.render_as_string(hide_password=False)
        append_january_filing(url, tmp_path, code, 98_765_432)
        resp = c.get_features_raw(
            build_request([(code, tok)], ["revenue_12m"], **node.coordinator_kw())
        )
        # The load is seen at once (computed on demand), and the warm-up runs again.
        assert resp.data_version == 2
        assert before.values is not None
        assert resp.items[0].values[0] != before.values["revenue_12m"].value
        assert node.engine.wait_warm(30)
        assert node.engine.last_warm is not None and node.engine.last_warm[0] == 2
        assert node.engine.cached() == n
