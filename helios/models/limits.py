"""`SessionLimits`: what one session of the Helios protocol may hold (DESIGN section 10).

Without these, one tenant can schedule a prompt for every chunk up to 10^9 and every
`state` message (one per chunk, kept in the serving layer's message log) carries them
all: memory grows quadratically in one session. The serving config sets them per model
(`models.<name>.limits`); a command over a limit is refused with an error naming the
limit, and the session keeps running.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from helios.pipeline.image import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeOptions

MAX_PROMPT_CHARS = 4000
"""The hard ceiling of a prompt (also in the published `list_commands` schema)."""


class SessionLimits(BaseModel):
    """Per-session limits; every field is a config key under `models.<name>.limits`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_scheduled_prompts: int = Field(
        64, ge=1, le=10_000, description="Prompts waiting for a future chunk; one more (a new chunk) is refused."
    )
    max_chunks_ahead: int = Field(
        10_000, ge=0, le=10**9, description="How far past the next chunk to generate a prompt may be scheduled."
    )
    max_prompt_chars: int = Field(
        MAX_PROMPT_CHARS, ge=1, le=MAX_PROMPT_CHARS, description="Longest prompt, in characters (after trimming)."
    )
    state_scheduled_entries: int = Field(
        8, ge=0, le=64, description="Earliest scheduled prompts one `state` message shows (`scheduled_count` has them all)."
    )
    state_prompt_chars: int = Field(
        200, ge=16, le=MAX_PROMPT_CHARS, description="Characters of each scheduled prompt a `state` message shows."
    )
    max_image_bytes: int = Field(
        DEFAULT_MAX_IMAGE_BYTES, ge=1024, le=16 * 1024 * 1024, description="Largest `set_image` payload (decoded bytes)."
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS, ge=1, le=100_000_000, description="Largest image, width x height, read from its header."
    )

    def image_options(self, target_size: tuple[int, int] | None = None) -> ImageDecodeOptions:
        """How a `set_image` payload is decoded under these limits (for a model of `target_size`)."""
        return ImageDecodeOptions(self.max_image_bytes, self.max_image_pixels, target_size)
