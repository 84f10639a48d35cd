"""Fixtures of the client tests: the real app on the shared Ray cluster, and a client for it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _live_server_module():
    """tests/client/live_server.py under one module name, shared with tests/web."""
    name = "helios_tests_live_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("live_server.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def helios_server(ray_cluster, tiny_pipeline_dir):
    """URL and API key of the real Helios Serve app (test-pattern + helios-tiny)."""
    return _live_server_module().live_server(tiny_pipeline_dir)


@pytest.fixture
def client(helios_server):
    from helios.client import HeliosClient

    with HeliosClient(helios_server.url, helios_server.api_key) as c:
        yield c
