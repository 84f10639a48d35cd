"""No blocking Ray call on an event loop: one slow GCS lookup must not stall every tenant.

A static check over deployments/: inside an `async def`, the calls below may only be
handed to a worker thread (`asyncio.to_thread(ray.get_actor, ...)`), never made. The
front door, relay and registry serve every tenant from one loop per replica, so there
even their plain helpers (called from handlers) must not make them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments"
BLOCKING = {
    "ray.get", "ray.wait", "ray.get_actor", "serve.status", "serve.get_deployment_handle", "serve.get_app_handle",
    "serve.get_replica_context().servable_object", "time.sleep", "destroy_shard_group", "remove_placement_group",
}
LOOP_MODULES = ("http/", "relay.py", "registry.py", "pools.py", "lookup.py")
"""Modules whose every function may run on a serving loop (sync helpers included)."""


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _direct_calls(fn: ast.AST):
    """Calls made by `fn` itself (not by functions or lambdas defined inside it)."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Call):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def blocking_calls(source: str, *, sync_too: bool) -> list[tuple[int, str, str]]:
    """(line, function, call) of every blocking call made on a loop in `source`."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, ast.AsyncFunctionDef) or (sync_too and isinstance(fn, ast.FunctionDef) and fn.name != "__init__"):
            for call in _direct_calls(fn):
                name = _name(call.func)
                if name in BLOCKING:
                    found.append((call.lineno, fn.name, name))
    return found


def test_the_check_finds_a_blocking_call():
    src = "async def h(x):\n    a = ray.get_actor('n')\n    b = await asyncio.to_thread(ray.get_actor, 'n')\n    def inner():\n        ray.get(x)\n"
    assert blocking_calls(src, sync_too=False) == [(2, "h", "ray.get_actor")]
    assert blocking_calls("def helper():\n    return ray.get_actor('n')\n", sync_too=True) == [(2, "helper", "ray.get_actor")]


@pytest.mark.parametrize("path", sorted(p.relative_to(DEPLOYMENTS).as_posix() for p in DEPLOYMENTS.rglob("*.py")))
def test_no_blocking_ray_call_on_an_event_loop(path):
    sync_too = path.startswith(LOOP_MODULES)
    found = blocking_calls((DEPLOYMENTS / path).read_text(), sync_too=sync_too)
    assert not found, f"deployments/{path}: blocking calls on the event loop (use asyncio.to_thread or a cache): {found}"
