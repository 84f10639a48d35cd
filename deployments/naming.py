"""Names of the long-lived Ray actors, shared by every deployment (front door, relay, registry).

Sessions outlive front-door replicas, so nothing may hold them by handle only: any
process finds a session's actor by its name in the `helios` namespace.
"""

from __future__ import annotations

import re

NAMESPACE = "helios"
"""Ray namespace of every named Helios actor (sessions, registry)."""

REGISTRY_NAME = "helios-session-registry"
"""The one admission controller / session registry actor of an app."""

_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


def session_actor_name(session_id: str) -> str:
    """Name of the detached actor that runs session `session_id`."""
    return f"helios-session-{session_id}"


def registry_actor_name(app_name: str = "helios") -> str:
    """Name of the registry of Serve app `app_name` (one per app so two apps never share pools)."""
    return REGISTRY_NAME if app_name == "helios" else f"{REGISTRY_NAME}-{app_name}"


def is_valid_session_id(session_id: str) -> bool:
    """True for ids the registry hands out (32 lowercase hex); anything else cannot exist."""
    return bool(_SESSION_ID.match(session_id or ""))
