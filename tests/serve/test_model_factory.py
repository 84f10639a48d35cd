"""Engine injection: the session actor's model factory is chosen once from the model spec (pure, no Ray)."""

from __future__ import annotations

import pickle

import pytest

from deployments.config import ModelSpec
from deployments.model_factory import HeliosFactory, TestPatternFactory, model_factory_for
from helios.models import TestPatternModel


def test_factory_follows_the_spec_kind_and_pickles():
    tp = model_factory_for(ModelSpec(kind="test-pattern", options={"height": 64, "width": 96}))
    helios = model_factory_for(ModelSpec(kind="helios", preset="tiny"))
    assert isinstance(tp, TestPatternFactory) and not tp.needs_group
    assert isinstance(helios, HeliosFactory) and helios.needs_group
    for factory in (tp, helios):  # it travels into the session actor's constructor
        assert pickle.loads(pickle.dumps(factory)) == factory


def test_test_pattern_factory_builds_its_model_without_a_group():
    built = model_factory_for(ModelSpec(kind="test-pattern", options={"height": 64, "width": 96}))(None, 3)
    assert isinstance(built.model, TestPatternModel) and built.engine is None
    assert (built.model.engine.height, built.model.engine.width) == (64, 96)


def test_helios_factory_needs_a_group():
    with pytest.raises(ValueError, match="shard group"):
        model_factory_for(ModelSpec(kind="helios", preset="tiny"))(None, 0)
