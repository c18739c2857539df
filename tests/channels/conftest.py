"""Fixtures for the channel tests: gateway replicas (the channels are theirs)."""

from tests.gateway.conftest import start_gateway  # noqa: F401 - a fixture
