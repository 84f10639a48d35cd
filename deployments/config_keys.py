"""API keys from the environment, and the generated key of a server started with none.

Split out of deployments/config.py (one job: merge `HELIOS_API_KEYS` / `HELIOS_ADMIN_KEYS`
into a validated ServingConfig at start-up, and give a keyless server one tenant key);
the config itself checks every key, wherever it came from.
"""

from __future__ import annotations

import os
import secrets

from pydantic import SecretStr

from deployments.config import ADMIN_KEYS_ENV, API_KEYS_ENV, ServingConfig, TenantSpec


def parse_api_keys_env(value: str) -> list[tuple[str, str]]:
    """`tenant:key,tenant:key` → [(tenant, key)]; ValueError names the bad entry position, never the key."""
    pairs = []
    for i, item in enumerate(p.strip() for p in value.split(",")):
        if not item:
            continue
        tenant, sep, key = item.partition(":")
        if not sep or not tenant.strip() or not key.strip():
            raise ValueError(f"{API_KEYS_ENV}: entry {i} is not 'tenant:key'")
        pairs.append((tenant.strip(), key.strip()))
    return pairs


def parse_admin_keys_env(value: str) -> list[str]:
    """`key,key` -> [key] (blanks skipped)."""
    return [k.strip() for k in value.split(",") if k.strip()]


def with_env_keys(config: ServingConfig, env: dict[str, str] | None = None) -> ServingConfig:
    """Merge HELIOS_API_KEYS into the tenants (new tenants get the default quota) and HELIOS_ADMIN_KEYS into admin_keys."""
    env = os.environ if env is None else env
    raw = env.get(API_KEYS_ENV, "").strip()
    raw_admin = env.get(ADMIN_KEYS_ENV, "").strip()
    if not raw and not raw_admin:
        return config
    tenants = {t.name: t.model_copy(deep=True) for t in config.tenants}
    for tenant, key in parse_api_keys_env(raw):
        spec = tenants.setdefault(tenant, TenantSpec(name=tenant))
        spec.api_keys.append(SecretStr(key))
    admin = [*config.admin_keys, *(SecretStr(k) for k in parse_admin_keys_env(raw_admin))]
    # Validated again: the env's keys obey the same rules (length, one tenant per key, admin keys apart).
    return ServingConfig.model_validate({**dict(config), "tenants": list(tenants.values()), "admin_keys": admin})


def ensure_some_key(config: ServingConfig) -> tuple[ServingConfig, str | None]:
    """With no key anywhere, add tenant 'default' with a fresh key; returns it (to show once) or None."""
    if config.digest_table():
        return config, None
    key = "hs-" + secrets.token_urlsafe(24)
    tenants = [t for t in config.tenants if t.name != "default"]
    own = next((t for t in config.tenants if t.name == "default"), None)
    tenants.append(TenantSpec(name="default", api_keys=[SecretStr(key)], quota=own.quota if own else None))
    return config.model_copy(update={"tenants": tenants}), key
