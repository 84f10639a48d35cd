"""Fixtures of the client tests: the real app on the shared Ray cluster, and a client for it."""

from __future__ import annotations

import pytest


@pytest.fixture
def client(helios_server):
    from helios.client import HeliosClient

    with HeliosClient(helios_server.url, helios_server.api_key) as c:
        yield c
