"""Set-up commands of a queued session: which ones, checked before the model exists, kept until admission.

While a session waits for a shard group it already takes the commands that set it up
(`SETUP_COMMANDS`), as a user expects from "commands reach the session in arrival order":
the front door checks each as far as it can without the model (`check_setup_command`),
the registry keeps them (at most `max_queued_commands` per session), and the session
actor applies them in order as it starts, before any command sent after admission. Their
real acks (and messages) then come on the session's message stream; the request itself
is answered with `queued_ack` (HTTP 202).
"""

from __future__ import annotations

from typing import Any

from deployments.config import ModelSpec
from deployments.model_factory import model_factory_for
from deployments.protocol import BadCommand, CommandQueued, SessionQueued
from helios.runtime.commands import CommandError
from helios.runtime.messages import ack_message

SETUP_COMMANDS = ("set_prompt", "schedule_prompt", "set_image", "set_seed", "start")
"""Commands a queued session accepts; anything else is refused (409) until it is admitted."""


def check_setup_command(spec: ModelSpec, cmd: dict[str, Any], position: int | None) -> None:
    """Refuse what can be refused now: SessionQueued (409) for a command that is not a set-up
    command, BadCommand (422, with its ack) for arguments the model would refuse."""
    name = cmd.get("command")
    if name not in SETUP_COMMANDS:
        raise SessionQueued(
            f"session_id: session is queued (position {position}); until it is admitted it takes only the set-up "
            f"commands {', '.join(SETUP_COMMANDS)} (applied in order at admission), not {name!r}",
            position=position,
        )
    model_class = model_factory_for(spec).model_class
    try:
        kwargs = model_class.commands()[name].validate(cmd.get("args"))
        model_class.check_queued_args(name, kwargs, spec.limits)
    except (CommandError, ValueError) as exc:
        text = str(exc) if str(exc).startswith(f"{name}:") else f"{name}: {exc}"
        raise BadCommand(text, ack=ack_message(cmd.get("id"), False, text)["data"]) from None


def queued_ack(cmd: dict[str, Any], queued: CommandQueued) -> dict[str, Any]:
    """The immediate ack of a kept command: ok, `queued: true`, and the session's queue position."""
    return {**ack_message(cmd.get("id"), True)["data"], "queued": True, "position": queued.position}
