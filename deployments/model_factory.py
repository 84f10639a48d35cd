"""Model factories: how a session actor builds its `VideoModel`, chosen once from the model spec.

The session actor takes its factory by injection (as Ray Serve LLM's server takes its
engine): the registry picks one with `model_factory_for(spec)`; a test may pass its own.
Each factory is a small frozen dataclass, so it pickles into the actor's constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from deployments.config import ModelSpec
from deployments.shard import ShardGroup, ShardGroupEngine
from helios.models import HeliosModel, TestPatternModel
from helios.models.limits import SessionLimits
from helios.runtime import VideoModel


@dataclass(frozen=True)
class BuiltModel:
    """A session's model and, when it runs on a shard group, the engine proxy of that group."""

    model: VideoModel
    engine: ShardGroupEngine | None = None
    """Its `failure` names why the group broke: the session reports it, the registry rebuilds the group."""


class ModelFactory(Protocol):
    """Builds the model of one session on its leased shard group (None for models without one)."""

    needs_group: ClassVar[bool]
    """Whether the model's pool holds shard groups (else plain slots, the model runs in the session actor)."""
    model_class: ClassVar[type[HeliosModel]]
    """The model's class: its commands validate a queued session's arguments before the model exists."""

    def __call__(self, group: ShardGroup | None, seed: int) -> BuiltModel: ...


@dataclass(frozen=True)
class HeliosFactory:
    """`HeliosModel` over the leased group (it resets the engine at chunk 0, so a warm group starts clean)."""

    needs_group: ClassVar[bool] = True
    model_class: ClassVar[type[HeliosModel]] = HeliosModel
    limits: SessionLimits = field(default_factory=SessionLimits)

    def __call__(self, group: ShardGroup | None, seed: int) -> BuiltModel:
        if group is None:
            raise ValueError("a helios session needs a shard group (got none)")
        engine = ShardGroupEngine(group)
        return BuiltModel(HeliosModel(engine, seed=seed, limits=self.limits), engine)


@dataclass(frozen=True)
class TestPatternFactory:
    """`TestPatternModel` in the session actor itself (no shard group)."""

    __test__ = False  # not a pytest test class
    needs_group: ClassVar[bool] = False
    model_class: ClassVar[type[HeliosModel]] = TestPatternModel
    options: dict[str, Any] = field(default_factory=dict)
    limits: SessionLimits = field(default_factory=SessionLimits)

    def __call__(self, group: ShardGroup | None, seed: int) -> BuiltModel:
        return BuiltModel(TestPatternModel(**self.options, seed=seed, limits=self.limits))


FACTORIES: dict[str, Callable[[ModelSpec], ModelFactory]] = {
    "helios": lambda spec: HeliosFactory(spec.limits),
    "test-pattern": lambda spec: TestPatternFactory(dict(spec.options), spec.limits),
}
"""Factory per `ModelSpec.kind`."""


def model_factory_for(spec: ModelSpec) -> ModelFactory:
    """The factory of `spec`'s kind."""
    return FACTORIES[spec.kind](spec)
