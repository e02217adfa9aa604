"""What an operator watches: each service's Prometheus ``/metrics`` (prometheus_client).

One registry per process (a deployment runs one service per process); every series
carries the ``service`` label so that in-process tests that host several services
still tell them apart. The gRPC layer counts for every service in one place: requests
by method (:mod:`common.decode`'s interceptor) and refusals by reason and status code
(:mod:`common.rpc`, where every refusal is sent). Services add their own series here
(disclosures by node, consent verifications, ledger size, checkpoint age, witness
cosignatures, node data freshness, training rounds), each defined once below so the
names and help texts are documented where defined.

:func:`serve` exposes the registry on a loopback HTTP port set per service in the
deployment file (``metrics = "127.0.0.1:PORT"``; empty: off).

Logs: :func:`configure_logging` writes one JSON object per line when
``FEDCREDIT_LOG_FORMAT=json`` (time, level, logger, message, and the exception if any).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
_service = "fedcredit"

REQUESTS = Counter(
    "fedcredit_requests",
    "gRPC requests received, by service and method",
    ["service", "method"],
    registry=REGISTRY,
)
REFUSALS = Counter(
    "fedcredit_refusals",
    "gRPC requests refused, by service, status code and machine-readable reason",
    ["service", "code", "reason"],
    registry=REGISTRY,
)
DISCLOSURES = Counter(
    "fedcredit_disclosures",
    "Enterprises' feature vectors disclosed by a department node, by node, purpose and the bank "
    "they were disclosed for (a department's portal page shows them by bank and purpose)",
    ["service", "node", "purpose", "bank"],
    registry=REGISTRY,
)
CONSENT_VERIFICATIONS = Counter(
    "fedcredit_consent_verifications",
    "Consent tokens verified, by service and result (ok or the refusal reason)",
    ["service", "result"],
    registry=REGISTRY,
)
LEDGER_SIZE = Gauge(
    "fedcredit_ledger_size", "Entries in the ledger", ["service"], registry=REGISTRY
)
CHECKPOINT_AGE = Gauge(
    "fedcredit_ledger_checkpoint_age_seconds",
    "Seconds since the latest signed checkpoint (-1: none yet)",
    ["service"],
    registry=REGISTRY,
)
NODE_DATA_AGE = Gauge(
    "fedcredit_node_data_age_seconds",
    "Seconds since a department node's records were last loaded (-1: unknown)",
    ["service", "node"],
    registry=REGISTRY,
)
TRAINING_ROUNDS = Counter(
    "fedcredit_training_rounds",
    "Federated training rounds of the models published to this registry, by strategy",
    ["service", "strategy"],
    registry=REGISTRY,
)
MODELS_PUBLISHED = Counter(
    "fedcredit_models_published",
    "Credit models published to the registry",
    ["service"],
    registry=REGISTRY,
)


def set_service(name: str) -> None:
    """Name this process's service (the ``service`` label of the gRPC counters)."""
    global _service
    _service = name


def service() -> str:
    return _service


_VERIFIED: dict[tuple[str, str], Any] = {}


def verification(result: str) -> None:
    """Count one consent-token verification (``ok`` or the refusal reason). The labelled
    child is kept: a batch verifies a token per item, and ``labels()`` costs several times
    the increment."""
    key = (_service, result)
    child = _VERIFIED.get(key)
    if child is None:
        child = _VERIFIED[key] = CONSENT_VERIFICATIONS.labels(*key)
    child.inc()


def request(method: str) -> None:
    REQUESTS.labels(_service, method).inc()


def refusal(code: str, reason: str) -> None:
    REFUSALS.labels(_service, code, reason).inc()


def published(report: Any, settings: Any) -> None:
    """A model was published: count it, and the training rounds its report lists (one
    validation loss per round, ``valid_logloss``) under its strategy."""
    MODELS_PUBLISHED.labels(_service).inc()
    losses = report.get("valid_logloss") if isinstance(report, dict) else None
    strategy = settings.get("strategy") if isinstance(settings, dict) else None
    if isinstance(losses, list) and losses:
        TRAINING_ROUNDS.labels(_service, str(strategy or "unknown")[:64]).inc(len(losses))


def gauge_from(gauge: Gauge, fn: Callable[[], float], *labels: str) -> None:
    """Let ``gauge`` read its value from ``fn`` at scrape time (errors read as -1)."""

    def read() -> float:
        try:
            return float(fn())
        except Exception:  # a scrape must not fail because a store is busy
            return -1.0

    gauge.labels(*labels).set_function(read)


class _WitnessCounts(Collector):
    def __init__(self, fn: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self.fn = fn

    def collect(self) -> Any:
        fam = GaugeMetricFamily(
            "fedcredit_witness_cosignatures",
            "The ledger's checkpoint pushes to each witness, by outcome (the counts "
            "`fedcredit status` shows: cosigned, refused, unreachable, ...)",
            labels=["service", "witness", "outcome"],
        )
        try:
            status = self.fn()
        except Exception:  # a busy store: no sample this scrape
            status = {}
        for witness, counts in sorted(status.items()):
            for outcome, n in sorted(counts.items()):
                if isinstance(n, int) and not isinstance(n, bool):
                    fam.add_metric([_service, witness, outcome], n)
        yield fam


def witness_counts(fn: Callable[[], dict[str, dict[str, Any]]]) -> None:
    """Expose the ledger's per-witness push counts (read from ``fn`` at scrape time)."""
    REGISTRY.register(_WitnessCounts(fn))


def start(address: str, service_name: str) -> Any:
    """Name this process's service and, when ``address`` is set, serve /metrics there."""
    set_service(service_name)
    if not address:
        return None
    server, _port = serve(address)
    logging.getLogger(__name__).info("metrics of %s on http://%s/metrics", service_name, address)
    return server


def serve(address: str) -> tuple[Any, int]:
    """Serve ``/metrics`` on ``address`` (host:port; port 0 picks one). Returns the
    server (``shutdown()`` stops it) and its port."""
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=REGISTRY)
    return server, int(server.server_port)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": _service,
            "pid": record.process,
            "thread": threading.current_thread().name,
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str) -> None:
    """The root logger at ``level``: JSON lines when FEDCREDIT_LOG_FORMAT=json, else text."""
    handler = logging.StreamHandler()
    if os.environ.get("FEDCREDIT_LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


# What `fedcredit status` shows of each service's /metrics: series name -> column.
ESSENTIALS = {
    "fedcredit_requests_total": "requests",
    "fedcredit_refusals_total": "refusals",
    "fedcredit_disclosures_total": "disclosures",
    "fedcredit_consent_verifications_total": "verifications",
    "fedcredit_ledger_size": "ledger_size",
    "fedcredit_ledger_checkpoint_age_seconds": "checkpoint_age_s",
    "fedcredit_node_data_age_seconds": "data_age_s",
    "fedcredit_training_rounds_total": "training_rounds",
    "fedcredit_models_published_total": "models_published",
}


def scrape(address: str, timeout: float = 2.0) -> list[tuple[str, dict[str, str], float]] | None:
    """Every sample of ``http://address/metrics`` as (name, labels, value); ``None`` when
    the endpoint does not answer."""
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return [
        (s.name, dict(s.labels), float(s.value))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def essentials(address: str, timeout: float = 2.0) -> dict[str, float] | None:
    """Scrape ``http://address/metrics`` and sum each essential series over its labels;
    ``None`` when the endpoint does not answer."""
    samples = scrape(address, timeout)
    if samples is None:
        return None
    out: dict[str, float] = {}
    for name, _, value in samples:
        col = ESSENTIALS.get(name)
        if col is not None:
            out[col] = out.get(col, 0.0) + value
    return out
