"""`ResolvingHandle` (deployments/lookup.py) without a cluster: a call that finds the actor gone resolves it again, once."""

from __future__ import annotations

import asyncio

import pytest
import ray

from deployments.lookup import ResolvingHandle


class FakeMethod:
    def __init__(self, handle: "FakeHandle", name: str):
        self.handle, self.name = handle, name

    def remote(self, *args):
        async def run():
            self.handle.calls.append((self.name, args))
            await asyncio.sleep(0)
            if self.handle.dead:
                raise ray.exceptions.ActorDiedError()
            if self.name == "refuse":
                raise ValueError("a typed refusal, not a dead actor")
            return (self.handle.label, args)

        return run()


class FakeHandle:
    def __init__(self, label: str, dead: bool = False):
        self.label, self.dead = label, dead
        self.calls: list = []

    def __getattr__(self, name: str) -> FakeMethod:
        return FakeMethod(self, name)


def _resolver(*handles: FakeHandle):
    queue = list(handles)
    return lambda: queue.pop(0)


def test_a_call_on_a_dead_actor_is_resolved_again_and_retried_once():
    old, new = FakeHandle("old", dead=True), FakeHandle("new")
    registry = ResolvingHandle(_resolver(old, new), "registry")
    assert asyncio.run(registry.get_session.remote("s1")) == ("new", ("s1",))
    assert registry.resolved == 2
    assert old.calls == [("get_session", ("s1",))] and new.calls == [("get_session", ("s1",))]


def test_calls_failing_together_resolve_once():
    old, new = FakeHandle("old", dead=True), FakeHandle("new")
    registry = ResolvingHandle(_resolver(old, new), "registry")

    async def many():
        return await asyncio.gather(*(registry.stats.remote() for _ in range(5)))

    assert [label for label, _ in asyncio.run(many())] == ["new"] * 5
    assert registry.resolved == 2


def test_a_second_failure_and_other_errors_are_raised_not_retried_forever():
    registry = ResolvingHandle(_resolver(FakeHandle("a", dead=True), FakeHandle("b", dead=True)), "registry")
    with pytest.raises(ray.exceptions.ActorDiedError):
        asyncio.run(registry.stats.remote())
    alive = ResolvingHandle(_resolver(FakeHandle("c")), "registry")
    with pytest.raises(ValueError, match="typed refusal"):
        asyncio.run(alive.refuse.remote())
    assert alive.resolved == 1

