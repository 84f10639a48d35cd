"""app_gone reads Serve's answer right: absent or DELETING is gone, any other status is not (no cluster needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.serve.schema import ApplicationStatus

from deployments import app_watch


@pytest.mark.parametrize(("status", "gone"), [(ApplicationStatus.DELETING, True), (ApplicationStatus.RUNNING, False),
                                              (ApplicationStatus.DEPLOYING, False), (None, True)])
def test_app_gone_from_serve_status(monkeypatch, status, gone):
    apps = {} if status is None else {"helios": SimpleNamespace(status=status)}
    monkeypatch.setattr(app_watch.serve, "status", lambda: SimpleNamespace(applications=apps))
    assert app_watch.app_gone("helios") is gone
