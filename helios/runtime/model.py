"""`VideoModel`: the base class a streaming model implements (Reactor-style)."""

from __future__ import annotations

from typing import Any, ClassVar

from helios.runtime.commands import CommandSpec, collect_commands, command


class VideoModel:
    """A controllable endless video stream.

    Subclasses implement `start_session()` (the generation loop: read state under
    `get_ctx().lock`, generate, `get_ctx().emit_block(frames)`, until `should_stop()`) and
    expose controls as `@command` methods, which the session runs one at a time, in
    arrival order, holding `get_ctx().lock`.
    """

    fps: float = 24.0
    """Playback rate of the stream."""

    _commands: ClassVar[dict[str, CommandSpec] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._commands = None

    def start_session(self) -> None:
        """The generation loop; runs on the session's generation thread until it returns."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """A JSON-safe snapshot of the model's state (`get_state` answers it)."""
        return {}

    def on_session_end(self) -> None:
        """Release resources; called once after the loop and the command thread have finished."""

    @classmethod
    def commands(cls) -> dict[str, CommandSpec]:
        """Command name → spec, bases included."""
        if cls.__dict__.get("_commands") is None:
            cls._commands = collect_commands(cls)
        return cls._commands  # type: ignore[return-value]

    @classmethod
    def command_schemas(cls) -> list[dict[str, Any]]:
        """`[{name, description, args_schema}]` for every command, sorted by name."""
        return [spec.schema() for _, spec in sorted(cls.commands().items())]

    @command("get_state")
    def get_state_command(self) -> dict[str, Any]:
        """Return the current state snapshot (the same data as a `state` message)."""
        return self.state()

    @command("list_commands")
    def list_commands_command(self) -> list[dict[str, Any]]:
        """Return every command with the JSON schema of its arguments."""
        return type(self).command_schemas()
