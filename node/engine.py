"""Feature computation at the node: catalog functions over the store, with a cache.

Vectors are computed per enterprise for all of the department's features at once
(one query per raw table for the whole batch of uncached enterprises) and cached
(LRU). Every request first reads the store's ``data_version`` (one small query);
when a load has changed it the cache is dropped, so an answer never reflects data
older than the last completed load (bound: zero — "at once").

With ``warm`` (``[node] warm_cache``, on by default) the engine also computes every
enterprise's vector in a background thread when the node starts and after each
load, if the population fits in the cache: a portfolio scored for the first time
then costs the node no database reads. Until the warm-up is done requests compute
on demand as before, and a warm-up that finishes after the data changed again is
discarded, so it never serves an older version.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedcredit.node import catalog
from fedcredit.node.errors import NoDataLoaded, UnknownFeature
from fedcredit.node.records import FloatArray
from fedcredit.node.store import NodeStore, StoreState

Reasons = npt.NDArray[np.int8]
log = logging.getLogger(__name__)
WARM_CHUNK = 2_000  # enterprises read and computed at a time by the warm-up


@dataclass(frozen=True, slots=True)
class EdgeResult:
    name: str
    upper_bounds: list[float]
    missing_share: float


def quantile_upper_bounds(values: FloatArray, max_bins: int, min_count: int) -> list[float]:
    """Upper bounds of at most ``max_bins`` bins over the non-missing ``values``.

    Bins follow the distinct values (a value never straddles two bins) and each holds
    at least ``min_count`` values (so no bound isolates a handful of enterprises); the
    bound between two bins is the midpoint of the neighbouring distinct values, and
    the last bound is +inf. Pure function (used by the node and by tests).
    """
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return [math.inf]
    distinct, counts = np.unique(v, return_counts=True)
    target = max(min_count, math.ceil(len(v) / max_bins))
    remaining = (len(v) - np.cumsum(counts)).tolist()
    bounds: list[float] = []
    acc = 0
    for i, c in enumerate(counts[:-1].tolist()):
        acc += c
        if acc >= target and remaining[i] >= min_count and len(bounds) < max_bins - 1:
            bounds.append(float((distinct[i] + distinct[i + 1]) / 2))
            acc = 0
    bounds.append(math.inf)
    return bounds


class FeatureEngine:
    def __init__(
        self,
        store: NodeStore,
        *,
        cache_size: int = 200_000,
        min_bin_count: int = 20,
        warm: bool = False,
    ) -> None:
        self.store = store
        self.department = store.department
        self.features = catalog.for_department(store.department)
        self.names = tuple(f.name for f in self.features)
        self.index = {n: j for j, n in enumerate(self.names)}
        self.cache_size = cache_size
        self.min_bin_count = min_bin_count
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[FloatArray, Reasons]] = OrderedDict()
        self._version: int | None = None
        self._population: tuple[int, FloatArray] | None = None
        self.warm_enabled = warm
        self._warming: threading.Thread | None = None
        self._rewarm = False
        self._warm_target: int | None = None  # the data version a running warm-up computes
        # (data version, vectors cached, seconds) of the last warm-up that was kept.
        self.last_warm: tuple[int, int, float] | None = None

    def resolve(self, names: Sequence[str]) -> list[int]:
        """Column indexes of ``names`` (all when empty), duplicates dropped, order kept."""
        if not names:
            return list(range(len(self.names)))
        out: list[int] = []
        for n in names:
            j = self.index.get(n)
            if j is None:
                raise UnknownFeature(
                    f"feature {n!r} is not in the {self.department} node's catalog; "
                    f"it has {', '.join(self.names)}",
                    feature=n,
                )
            if j not in out:
                out.append(j)
        return out

    def state(self) -> StoreState:
        """The store's state; drops the cache when the data changed. Raises if no data."""
        st = self.store.state()
        if st.as_of is None:
            raise NoDataLoaded(
                f"the {self.department} node has no data yet; run `fedcredit node load`"
            )
        changed = False
        with self._lock:
            if st.data_version != self._version:
                self._cache.clear()
                self._population = None
                changed = True
                self._version = st.data_version
        if changed and self.warm_enabled and self._warm_target != st.data_version:
            self.start_warming(st.data_version)
        return st

    # -- warm-up -----------------------------------------------------------------------

    def start_warming(self, version: int | None = None) -> None:
        """Warm the cache in a background thread, one at a time. Asked for ``version`` while
        one runs for an older version, it runs again once it ends; one that has not read
        the store's state yet will compute the latest anyway (the node's start and its
        first request both ask)."""
        with self._lock:
            if self._warming is not None and self._warming.is_alive():
                if version is None or (
                    self._warm_target is not None and self._warm_target != version
                ):
                    self._rewarm = True
                return
            self._rewarm = False
            t = threading.Thread(target=self._warm_loop, name="feature-warm", daemon=True)
            self._warming = t
        t.start()

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Wait for a running warm-up; True when none is running any more."""
        t = self._warming
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def _warm_loop(self) -> None:
        while True:
            try:
                self.warm()
            except Exception as exc:  # e.g. the database went away: requests still compute
                log.warning("feature warm-up of the %s node failed: %s", self.department, exc)
            with self._lock:
                if not self._rewarm:
                    return
                self._rewarm = False

    def warm(self) -> int:
        """Compute and cache every enterprise's vector for the current data version.

        Returns how many were cached: 0 when there is no data, when the population is
        larger than the cache, or when the data changed while computing (the result
        would be stale and is dropped)."""
        t0 = time.perf_counter()
        st = self.store.state()
        if st.as_of is None:
            return 0
        self._warm_target = st.data_version
        codes = self.store.codes()
        if not codes or len(codes) > self.cache_size:
            return 0
        # In chunks: a department's whole raw history at once would be a memory spike.
        k = len(self.names)
        values = np.empty((len(codes), k))
        reasons = np.empty((len(codes), k), dtype=np.int8)
        for i in range(0, len(codes), WARM_CHUNK):
            part = codes[i : i + WARM_CHUNK]
            computed = catalog.compute(self.store.fetch(part, st.as_of), self.features)
            values[i : i + len(part)] = computed.values
            reasons[i : i + len(part)] = computed.reasons
            if self._version is not None and self._version != st.data_version:
                return 0  # overtaken by a load: stop early
        with self._lock:
            if self._version is None:
                self._version = st.data_version
            if self._version != st.data_version:
                return 0
            for r, c in enumerate(codes):
                self._cache[c] = (values[r], reasons[r])
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            self._population = (st.data_version, values)
            self.last_warm = (st.data_version, len(codes), time.perf_counter() - t0)
        log.info(
            "%s node: %d feature vectors computed ahead in %.1f s (data version %d)",
            self.department,
            len(codes),
            time.perf_counter() - t0,
            st.data_version,
        )
        return len(codes)

    def vectors(self, codes: Sequence[str], st: StoreState) -> tuple[FloatArray, Reasons]:
        """All features of ``codes`` (values NaN when missing, reasons per catalog.Missing)."""
        k = len(self.names)
        values = np.empty((len(codes), k))
        reasons = np.empty((len(codes), k), dtype=np.int8)
        todo: list[int] = []
        with self._lock:
            for i, c in enumerate(codes):
                hit = self._cache.get(c)
                if hit is None:
                    todo.append(i)
                else:
                    self._cache.move_to_end(c)
                    values[i], reasons[i] = hit
        if todo:
            miss = [codes[i] for i in todo]
            assert st.as_of is not None
            computed = catalog.compute(self.store.fetch(miss, st.as_of), self.features)
            values[todo] = computed.values
            reasons[todo] = computed.reasons
            with self._lock:
                # Only cache what was computed for the data version still current.
                if self._version == st.data_version and self.cache_size:
                    for r, c in enumerate(miss):
                        self._cache[c] = (computed.values[r].copy(), computed.reasons[r].copy())
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        return values, reasons

    def cached(self) -> int:
        return len(self._cache)

    def population(self, st: StoreState) -> FloatArray:
        """All features of every enterprise the department knows (cached per data version)."""
        with self._lock:
            pop = self._population
        if pop is not None and pop[0] == st.data_version:
            return pop[1]
        assert st.as_of is not None
        _, batch = self.store.fetch_population(st.as_of)
        values = catalog.compute(batch, self.features).values
        with self._lock:
            if self._version == st.data_version:
                self._population = (st.data_version, values)
        return values

    def bin_edges(
        self, columns: Sequence[int], max_bins: int, st: StoreState
    ) -> tuple[list[EdgeResult], int]:
        pop = self.population(st)
        out = []
        for j in columns:
            col = pop[:, j]
            out.append(
                EdgeResult(
                    self.names[j],
                    quantile_upper_bounds(col, max_bins, self.min_bin_count),
                    float(np.isnan(col).mean()) if len(col) else 0.0,
                )
            )
        return out, int(pop.shape[0])
