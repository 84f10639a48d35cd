"""Admin routes: every tenant's sessions and every model's pool of shard groups, for operators only.

Only admin keys (`admin_keys`, `HELIOS_ADMIN_KEYS`) open them: no key is a 401, a tenant's
key a 403 (it is valid, just not here). The answers name tenants, nodes and sessions, which
no tenant may see of another, so these routes never fall back to tenant auth.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request

from deployments.auth import Authenticator, bearer_key
from deployments.http.base import FrontDoorBase
from deployments.http.schemas import AdminPool, AdminPools, AdminSession, AdminSessions, error_responses
from deployments.protocol import AdminOnly, SessionRecord, Unauthorized
from deployments.protocol_pool import PoolDescription

ADMIN = "admin"
"""The name the admin authenticator maps every admin key to."""

router = APIRouter(tags=["admin"], responses=error_responses(401, 403))


def admin_authenticator(digests: list[str]) -> Authenticator:
    """Admin key digests -> an authenticator answering ADMIN for any of them."""
    return Authenticator([(d, ADMIN) for d in digests])


class AdminRoutes(FrontDoorBase):
    """GET /v1/admin/pool and /v1/admin/sessions."""

    admin_auth: Authenticator

    def _require_admin(self, request: Request) -> None:
        """401 without a key or with an unknown one, 403 with a tenant's key."""
        self._refuse_key_in_query(request)
        key = bearer_key(request.headers.get("authorization"))
        if key is None:
            raise Unauthorized("authorization: missing 'Authorization: Bearer <admin key>' header")
        if self.admin_auth.tenant_of(key) == ADMIN:
            return
        if self.auth.tenant_of(key) is not None:
            raise AdminOnly("authorization: a tenant's API key does not open the admin API; send an admin key (admin_keys)")
        raise Unauthorized("authorization: wrong admin key")

    async def _pools(self) -> dict[str, PoolDescription]:
        return await self.registry.describe_pools.remote()

    @router.get("/v1/admin/pool", response_model=AdminPools)
    async def admin_pool(self, request: Request) -> AdminPools:
        """Every model's pool: bounds, target, queue, and each group's state, node and session."""
        self._require_admin(request)
        pools = await self._pools()
        return AdminPools(models={m: AdminPool.model_validate(asdict(p)) for m, p in pools.items()})

    @router.get("/v1/admin/sessions", response_model=AdminSessions)
    async def admin_sessions(self, request: Request) -> AdminSessions:
        """Every live session of every tenant, with its model, status, shard group and nodes."""
        self._require_admin(request)
        records: list[SessionRecord] = await self.registry.list_sessions.remote()
        group_nodes = {g.group_id: g.node_id for p in (await self._pools()).values() for g in p.groups if g.group_id}
        return AdminSessions(
            sessions=[
                AdminSession(
                    session_id=r.session_id, tenant=r.tenant, model=r.model, status=r.status.value, position=r.position,
                    created_at=r.created_at, group_id=r.group_id, node_id=r.node_id, group_node_id=group_nodes.get(r.group_id),
                )
                for r in sorted(records, key=lambda r: r.created_at)
            ]
        )
