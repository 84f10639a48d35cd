"""Config of the admin API, checked without a cluster: admin keys (config and HELIOS_ADMIN_KEYS), kept
as digests, apart from tenants' keys."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from deployments.app import prepare_config
from deployments.config import ServingConfig, key_digest
from deployments.config_keys import with_env_keys
from deployments.http.routes_admin import ADMIN, admin_authenticator

KEY = "k" * 20
ADMIN_KEY = "a" * 20


def _config(**extra) -> ServingConfig:
    return ServingConfig.model_validate(
        {"models": {"tp": {"kind": "test-pattern"}}, "tenants": [{"name": "acme", "api_keys": [KEY]}], **extra}
    )


def test_admin_keys_from_config_and_env_are_kept_as_digests(monkeypatch):
    env_key = "e" * 24
    monkeypatch.delenv("HELIOS_API_KEYS", raising=False)
    monkeypatch.setenv("HELIOS_ADMIN_KEYS", f" {env_key} ,,")
    cfg = prepare_config(_config(admin_keys=[ADMIN_KEY]))
    blob = pickle.dumps(cfg)  # what Ray ships to the front door
    assert ADMIN_KEY.encode() not in blob and env_key.encode() not in blob and not cfg.admin_keys
    auth = admin_authenticator(cfg.admin_digests())
    assert auth.tenant_of(ADMIN_KEY) == ADMIN and auth.tenant_of(env_key) == ADMIN
    assert auth.tenant_of(KEY) is None and auth.tenant_of(key_digest(ADMIN_KEY)) is None  # a digest is not a key


def test_admin_key_digests_authenticate_and_are_checked():
    cfg = _config(admin_key_digests=[key_digest(ADMIN_KEY)])
    assert admin_authenticator(cfg.admin_digests()).tenant_of(ADMIN_KEY) == ADMIN
    with pytest.raises(ValidationError, match="admin_key_digests"):
        _config(admin_key_digests=["not-hex"])


def test_an_admin_key_that_is_also_a_tenant_key_is_a_config_error():
    with pytest.raises(ValidationError) as info:
        _config(admin_keys=[KEY])
    assert "also an API key of tenant 'acme'" in str(info.value) and KEY not in str(info.value)
    with pytest.raises(ValidationError, match="also an API key"):  # through the environment too
        with_env_keys(_config(), {"HELIOS_ADMIN_KEYS": KEY})


def test_short_admin_keys_are_refused_without_showing_them():
    with pytest.raises(ValidationError) as info:
        with_env_keys(_config(), {"HELIOS_ADMIN_KEYS": "short-admin"})
    assert "admin_keys[0]" in str(info.value) and "HELIOS_ADMIN_KEYS" in str(info.value) and "short-admin" not in str(info.value)


def test_no_admin_key_configured_opens_the_admin_api_to_nobody():
    cfg = prepare_config(_config())
    assert cfg.admin_digests() == [] and admin_authenticator(cfg.admin_digests()).tenant_of(KEY) is None
