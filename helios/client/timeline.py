"""Prompt timelines: a YAML file mapping chunk indices to prompts and images, played into a session.

    model: test-pattern          # optional
    seed: 7                      # optional
    chunks: 6                    # optional; default: last entry + 2
    timeline:
      0: a red fox in the snow   # shorthand for {prompt: ...}
      2: {prompt: the fox starts running}
      4: {image: fox.png, transition: blend}   # path relative to this file

Prompts are sent up front with `schedule_prompt`, so they switch exactly at their chunk.
The protocol has no scheduled image, so an image is sent when the chunk before its entry
completes: it shows at that chunk or, when the generator runs ahead, the one after.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from helios.client.sync import HeliosSession
from helios.client.types import Message

log = logging.getLogger(__name__)


class TimelineEntry(BaseModel):
    """What changes at one chunk: a new prompt, a new reference image, or both."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, description="Prompt from this chunk on.")
    image: str | None = Field(default=None, description="Reference image path (relative to the timeline file).")
    transition: Literal["cut", "blend"] = Field(default="cut", description="How the image comes in.")

    @model_validator(mode="after")
    def _something(self) -> "TimelineEntry":
        if self.prompt is None and self.image is None:
            raise ValueError("an entry needs a prompt, an image, or both")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt must not be empty")
        return self


class Timeline(BaseModel):
    """A whole timeline file."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="Model to create the session with.")
    seed: int | None = Field(default=None, description="Seed of the new session.")
    chunks: int | None = Field(default=None, ge=1, description="Chunks to play before stopping.")
    timeline: dict[int, TimelineEntry] = Field(description="chunk index → entry")

    @field_validator("timeline", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError("expected a non-empty mapping of chunk index → prompt or {prompt, image, transition}")
        return {k: ({"prompt": v} if isinstance(v, str) else v) for k, v in value.items()}

    @model_validator(mode="after")
    def _check(self) -> "Timeline":
        bad = [c for c in self.timeline if c < 0]
        if bad:
            raise ValueError(f"timeline: chunk indices must be >= 0, got {bad}")
        if 0 not in self.timeline or self.timeline[0].prompt is None:
            raise ValueError("timeline: chunk 0 needs a prompt (a session cannot start without one)")
        return self

    @property
    def total_chunks(self) -> int:
        return self.chunks if self.chunks is not None else max(self.timeline) + 2

    def prompt_at(self, chunk: int) -> str:
        """The prompt the timeline asks for at `chunk`."""
        prompt = self.timeline[0].prompt
        for c in sorted(self.timeline):
            if c > chunk:
                break
            if self.timeline[c].prompt is not None:
                prompt = self.timeline[c].prompt
        if prompt is None:
            raise RuntimeError("timeline: no prompt at or before this chunk")
        return prompt


def load_timeline(path: str | Path) -> tuple[Timeline, Path]:
    """Parse and validate a timeline file; → (timeline, folder that image paths are relative to)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"timeline: file not found: {str(path)!r}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"timeline: {path} is not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"timeline: {path} must be a mapping with a 'timeline' key")
    if "timeline" not in raw and all(isinstance(k, int) for k in raw):
        raw = {"timeline": raw}  # a bare chunk → prompt mapping
    try:
        timeline = Timeline.model_validate(raw)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"timeline: {errs}") from None
    for chunk, entry in timeline.timeline.items():
        if entry.image is not None and not (path.parent / entry.image).is_file():
            raise ValueError(f"timeline.{chunk}.image: file not found: {entry.image!r}")
    return timeline, path.parent


@dataclass
class PlayReport:
    """What a played timeline produced, for printing and for tests."""

    chunk_prompts: dict[int, str] = field(default_factory=dict)
    """chunk index → prompt reported by its chunk_complete event."""
    switches: list[tuple[int, str]] = field(default_factory=list)
    """(chunk at which the switch showed, new prompt) for each prompt_switched event."""
    errors: list[str] = field(default_factory=list)


def play(session: HeliosSession, timeline: Timeline, base_dir: Path, *,
         on_message: Callable[[Message], None] | None = None, timeout: float = 120.0) -> PlayReport:
    """Schedule the timeline into a not-yet-started session, start it, and follow it to the end."""
    images = {c: e for c, e in timeline.timeline.items() if e.image is not None}
    for chunk, entry in sorted(timeline.timeline.items()):
        if entry.prompt is not None:
            session.schedule_prompt(entry.prompt, chunk)
    if 0 in images:
        session.set_image(base_dir / images[0].image, images[0].transition)
    session.start()
    report = PlayReport()
    pending_switches: list[str] = []
    total = timeline.total_chunks
    for msg in session.messages(timeout=timeout):
        if on_message is not None:
            on_message(msg)
        event = msg.event
        if event == "prompt_switched":
            pending_switches.append(str(msg.data.get("new_prompt")))
        elif event == "error":
            report.errors.append(str(msg.data.get("message")))
        elif event == "chunk_complete":
            chunk = int(msg.data["chunk"])
            report.chunk_prompts[chunk] = str(msg.data.get("prompt"))
            report.switches.extend((chunk, p) for p in pending_switches)
            pending_switches.clear()
            nxt = images.get(chunk + 1)
            if nxt is not None and chunk + 1 < total:
                session.set_image(base_dir / nxt.image, nxt.transition)
            if chunk + 1 >= total:
                break
        elif event == "session_ended":
            break
    return report
