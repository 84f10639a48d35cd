"""@command: argument models derived from signatures, validation errors naming the field, schemas."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import Field

from helios.models.helios import HeliosModel
from helios.runtime import CommandError, VideoModel, command


class Toy(VideoModel):
    @command("move")
    def move(
        self,
        dx: Annotated[int, Field(ge=-10, le=10, description="Steps right")],
        mode: Literal["walk", "run"] = "walk",
        label: str | None = None,
    ) -> None:
        """Move the thing.

        Second paragraph is not part of the description."""

    @command()
    def noop(self) -> None:
        """Do nothing."""


class ToyChild(Toy):
    @command("move")
    def move_twice(self, dx: int) -> None:
        """Overrides by command name."""


def test_args_model_follows_signature():
    spec = Toy.commands()["move"]
    assert spec.validate({"dx": 3}) == {"dx": 3, "mode": "walk", "label": None}
    assert spec.validate({"dx": -10, "mode": "run", "label": "x"}) == {"dx": -10, "mode": "run", "label": "x"}
    assert Toy.commands()["noop"].validate(None) == {}


@pytest.mark.parametrize(
    "args, needles",
    [
        ({}, ["move:", "args.dx", "missing"]),
        ({"dx": 11}, ["args.dx", "less than or equal to 10"]),
        ({"dx": "3"}, ["args.dx", "valid integer", "'3'"]),
        ({"dx": 1.5}, ["args.dx"]),
        ({"dx": 1, "mode": "fly"}, ["args.mode", "'walk' or 'run'"]),
        ({"dx": 1, "speed": 2}, ["args.speed", "unknown argument"]),
        ([1, 2], ["move:", "'args' must be an object"]),
    ],
)
def test_bad_args_name_the_field(args, needles):
    with pytest.raises(CommandError) as err:
        Toy.commands()["move"].validate(args)
    for needle in needles:
        assert needle in str(err.value)


def test_schema_published_with_constraints_and_description():
    schemas = {s["name"]: s for s in Toy.command_schemas()}
    assert set(schemas) == {"move", "noop", "get_state", "list_commands"}
    move = schemas["move"]
    assert move["description"] == "Move the thing."
    props = move["args_schema"]["properties"]
    assert props["dx"]["minimum"] == -10 and props["dx"]["maximum"] == 10
    assert props["dx"]["description"] == "Steps right"
    assert props["mode"]["enum"] == ["walk", "run"] and props["mode"]["default"] == "walk"
    assert move["args_schema"]["required"] == ["dx"]
    assert move["args_schema"]["additionalProperties"] is False


def test_subclass_overrides_by_name():
    spec = ToyChild.commands()["move"]
    assert spec.method == "move_twice"
    assert spec.validate({"dx": 100}) == {"dx": 100}
    assert Toy.commands()["move"].method == "move"  # the base class is unaffected


def test_helios_commands_and_schemas():
    schemas = {s["name"]: s["args_schema"] for s in HeliosModel.command_schemas()}
    assert set(schemas) == {
        "set_prompt", "schedule_prompt", "set_image", "start", "pause", "resume", "reset", "set_seed",
        "get_state", "get_schedule", "list_commands",
    }
    assert schemas["schedule_prompt"]["required"] == ["prompt", "chunk"]
    assert schemas["schedule_prompt"]["properties"]["chunk"]["minimum"] == 0
    assert schemas["set_image"]["properties"]["transition"]["enum"] == ["cut", "blend"]
    assert schemas["set_seed"]["properties"]["seed"]["maximum"] == 2**63 - 1
    assert schemas["set_prompt"]["properties"]["prompt"]["minLength"] == 1
