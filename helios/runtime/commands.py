"""`@command`: a model method becomes a protocol command whose arguments pydantic validates.

The argument model is derived from the method signature (annotations, defaults,
`Annotated[..., Field(...)]` constraints), so the code is the single source of truth for
both validation and the JSON schema published by `list_commands`.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, ValidationError

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__helios_command__"


class CommandError(ValueError):
    """A command was refused; the message names the command and the bad value."""


@dataclass
class CommandSpec:
    """What `@command` records about one method."""

    name: str
    method: str
    description: str
    func: Callable[..., Any]
    _args_model: type[BaseModel] | None = field(default=None, repr=False)

    @property
    def args_model(self) -> type[BaseModel]:
        """The pydantic model of the arguments, built on first use (annotations resolve late)."""
        if self._args_model is None:
            self._args_model = _build_args_model(self.name, self.func)
        return self._args_model

    def validate(self, args: Any) -> dict[str, Any]:
        """Validated keyword arguments, or CommandError naming each bad field."""
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise CommandError(f"{self.name}: 'args' must be an object, got {type(args).__name__}")
        try:
            parsed = self.args_model.model_validate(args)
        except ValidationError as exc:
            raise CommandError(f"{self.name}: {format_validation_error(exc)}") from None
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    def schema(self) -> dict[str, Any]:
        """{name, description, args_schema}: one entry of `list_commands`."""
        return {
            "name": self.name,
            "description": self.description,
            "args_schema": self.args_model.model_json_schema(),
        }


def format_validation_error(exc: ValidationError) -> str:
    """'args.seed: Input should be a valid integer; ...' — every problem with its field path."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        if err.get("type") == "missing":
            parts.append(f"args.{loc}: missing required argument")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"args.{loc}: unknown argument")
        else:
            parts.append(f"args.{loc}: {err.get('msg')} (got {_short(err.get('input'))})")
    return "; ".join(parts)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def command(name: str | None = None, *, description: str | None = None) -> Callable[[F], F]:
    """Mark a `VideoModel` method as the protocol command `name` (default: the method name).

    Every parameter after `self` becomes an argument; `Annotated[int, Field(ge=0)]` adds
    constraints, a default makes it optional. The docstring's first paragraph describes it.
    """

    def decorate(func: F) -> F:
        doc = inspect.getdoc(func) or ""
        spec = CommandSpec(
            name=name or func.__name__,
            method=func.__name__,
            description=description or doc.split("\n\n")[0].replace("\n", " "),
            func=func,
        )
        setattr(func, _ATTR, spec)
        return func

    return decorate


def command_spec(obj: Any) -> CommandSpec | None:
    """The CommandSpec of a decorated function, else None."""
    return getattr(obj, _ATTR, None)


def collect_commands(cls: type) -> dict[str, CommandSpec]:
    """All commands of a class and its bases, subclasses overriding by command name."""
    found: dict[str, CommandSpec] = {}
    for klass in reversed(cls.__mro__):
        for attr in vars(klass).values():
            spec = command_spec(attr)
            if spec is not None:
                found[spec.name] = spec
    return found


def _build_args_model(cmd_name: str, func: Callable[..., Any]) -> type[BaseModel]:
    sig = inspect.signature(func)
    hints = typing.get_type_hints(func, include_extras=True)
    fields: dict[str, Any] = {}
    for i, (pname, param) in enumerate(sig.parameters.items()):
        if i == 0 and pname in ("self", "cls"):
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"@command {cmd_name!r}: *args/**kwargs cannot be described as arguments")
        annotation = hints.get(pname, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (annotation, default)
    model_name = "".join(part.capitalize() for part in cmd_name.split("_")) + "Args"
    # strict: "5" is not an int; extra=forbid: a misspelt argument is an error, not ignored.
    config = ConfigDict(extra="forbid", strict=True)
    return pydantic.create_model(model_name, __config__=config, **fields)
