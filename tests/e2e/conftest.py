"""End-to-end fixtures: the synthetic city and credit model of the coordinator tests."""

from tests.coordinator.conftest import city  # noqa: F401  (a fixture, re-exported)
