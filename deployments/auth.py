"""API keys → tenants by digest, compared in constant time; keys are never logged, echoed or kept.

The prepared config holds only SHA-256 digests of the keys (`ServingConfig.with_hashed_keys`),
so neither the front door nor the registry has a key to leak: a request's key is hashed
and its digest compared with every known one.
"""

from __future__ import annotations

import hmac

from deployments.config import key_digest


def _digest(key: str) -> bytes:
    # Fixed-length digests: compare_digest then takes the same time whatever the key length.
    return bytes.fromhex(key_digest(key))


class Authenticator:
    """Maps a bearer key to its tenant without an early exit on the first match."""

    def __init__(self, digest_table: list[tuple[str, str]]):
        self._table = [(bytes.fromhex(d), tenant) for d, tenant in digest_table]

    def tenant_of(self, key: str | None) -> str | None:
        """The tenant of `key`, or None for a missing or unknown key."""
        if not key:
            return None
        probe = _digest(key)
        found = None
        for digest, tenant in self._table:
            if hmac.compare_digest(probe, digest) and found is None:
                found = tenant
        return found


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header (None when absent or another scheme)."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def token_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time viewer-token check."""
    if not given or not expected:
        return False
    return hmac.compare_digest(_digest(given), _digest(expected))
