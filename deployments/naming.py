"""Every name another process looks something up by: Serve deployments, named actors, placement groups, KV namespaces.

Sessions outlive front-door replicas, so nothing may hold them by handle only: any
process finds a session's actor by its name in the `helios` namespace, and the registry
finds the relay deployment by its name in the app. Nothing else spells these names.
"""

from __future__ import annotations

import os
import re
import tempfile

NAMESPACE = "helios"
"""Ray namespace of every named Helios actor (sessions, registry)."""

DEFAULT_APP_NAME = "helios"
"""Serve application name when the config does not choose one."""

FRONT_DOOR_DEPLOYMENT = "FrontDoor"
"""Serve deployment name of the HTTP ingress."""

RELAY_DEPLOYMENT = "Relay"
"""Serve deployment name of the relay (the registry asks it for recordings by this name)."""

REGISTRY_NAME = "helios-session-registry"
"""The one admission controller / session registry actor of an app."""

SESSION_ACTOR_PREFIX = "helios-session-"

RECORDINGS_FOLDER = "helios-recordings"
"""Folder under the temp directory where recordings go when `recording_uri` is not set (one machine only)."""


def default_recording_uri() -> str:
    """`recording_uri` when the config sets none: a folder of this machine's temp directory (no cluster sharing)."""
    return os.path.join(tempfile.gettempdir(), RECORDINGS_FOLDER)

_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


def session_actor_name(session_id: str) -> str:
    """Name of the detached actor that runs session `session_id`."""
    return f"{SESSION_ACTOR_PREFIX}{session_id}"


def registry_actor_name(app_name: str = DEFAULT_APP_NAME) -> str:
    """Name of the registry of Serve app `app_name` (one per app so two apps never share pools)."""
    return REGISTRY_NAME if app_name == DEFAULT_APP_NAME else f"{REGISTRY_NAME}-{app_name}"


def shard_group_id(app_name: str, model: str, suffix: str) -> str:
    """Id of one shard group of `model` (unique per build through `suffix`)."""
    return f"{app_name}-{model}-{suffix}"


def placement_group_name(group_id: str) -> str:
    """Name of a shard group's placement group (operators find an app's groups by it)."""
    return f"helios-group-{group_id}"


def shard_worker_name(group_id: str, rank: int) -> str:
    """Name of rank `rank` of a shard group (detached: a restarted registry finds its groups' ranks by it)."""
    return f"helios-shard-{group_id}-{rank}"


def registry_state_namespace(app_name: str = DEFAULT_APP_NAME) -> str:
    """Ray GCS key-value namespace of app `app_name`'s registry state (deployments/registry_state.py)."""
    return f"helios-registry-{app_name}"


def is_valid_session_id(session_id: str) -> bool:
    """True for ids the registry hands out (32 lowercase hex); anything else cannot exist."""
    return bool(_SESSION_ID.match(session_id or ""))
