"""Ray start-up for the Simulation Engine: retried when the head node times out (seen in CI)."""

from __future__ import annotations

from typing import Any

import pytest

from fedcredit.training.run import simulation


class _FlakyRay:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.inits: list[dict[str, Any]] = []
        self.shutdowns = 0

    def init(self, **kwargs: Any) -> None:
        self.inits.append(kwargs)
        if len(self.inits) <= self.failures:
            raise RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_y")

    def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> Any:
    def make(failures: int) -> _FlakyRay:
        fake = _FlakyRay(failures)
        monkeypatch.setattr(simulation, "ray", fake)
        monkeypatch.setattr(simulation, "RAY_RETRY_PAUSE_S", 0.0)
        return fake

    return make


def test_start_is_retried_after_a_gcs_timeout(flaky: Any) -> None:
    fake = flaky(2)
    simulation.start_ray(3, attempts=3)
    assert len(fake.inits) == 3 and fake.shutdowns == 2
    args = fake.inits[-1]
    assert args["num_cpus"] == 3 and args["_node_ip_address"] == "127.0.0.1"
    assert args["include_dashboard"] is False


def test_start_gives_up_with_every_attempt_named(flaky: Any) -> None:
    fake = flaky(5)
    with pytest.raises(simulation.SimulationFailed) as info:
        simulation.start_ray(2, attempts=3)
    msg = str(info.value)
    assert "did not start in 3 attempts" in msg
    assert msg.count("RuntimeError: Timed out waiting for file") == 3
    assert len(fake.inits) == 3 and info.value.reason == "SIMULATION_FAILED"
