"""A test-pattern stream: the Helios protocol over a cheap drawn engine.

Each frame shows moving colour bars (their phase follows the seed), the reference image
if one is set, and the active prompt, chunk index and frame counter as text, so a person
watching can see every command take effect. It proves the runtime is model-agnostic and
gives end-to-end tests a fast model.
"""

from __future__ import annotations

import textwrap
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from helios.models.helios import HeliosModel
from helios.models.limits import SessionLimits
from helios.pipeline.engine import ChunkResult, SynchronousEngine, Transition

_BARS = np.array(
    [
        [235, 235, 235],
        [235, 235, 16],
        [16, 235, 235],
        [16, 235, 16],
        [235, 16, 235],
        [235, 16, 16],
        [16, 16, 235],
        [16, 16, 16],
    ],
    dtype=np.uint8,
)


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `px` pixels (the fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


class TestPatternEngine(SynchronousEngine):
    """A `StreamEngine` that draws frames instead of generating them."""

    __test__ = False  # not a pytest test class

    def __init__(self, height: int = 128, width: int = 128, frames_per_chunk: int = 33, fps: int = 24) -> None:
        for name, value, low in (("height", height, 16), ("width", width, 16), ("frames_per_chunk", frames_per_chunk, 1), ("fps", fps, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: must be an int >= {low}, got {value!r}")
        self.height = height
        self.width = width
        self.frames_per_chunk = frames_per_chunk
        self.fps = fps
        self._font_px = max(10, height // 16)
        self._font = _font(self._font_px)
        self.reset(0)

    @property
    def chunk_index(self) -> int:
        return self._chunk

    def reset(self, seed: int) -> None:
        self._chunk = 0
        self._frame = 0
        self._seed = int(seed)
        self._prompt = ""
        self._image: np.ndarray | None = None
        self._blend_from: np.ndarray | None = None

    def set_seed(self, seed: int) -> None:
        self._seed = int(seed)

    def set_prompt(self, prompt: str, blend_chunks: int = 0) -> None:
        self._prompt = prompt

    def set_image(self, image: np.ndarray | None, transition: Transition = "cut") -> None:
        if image is not None and image.shape != (self.height, self.width, 3):
            raise ValueError(f"image: expected ({self.height}, {self.width}, 3), got {image.shape}")
        self._blend_from = self._image if transition == "blend" else None
        self._image = image

    def next_chunk(self) -> ChunkResult:
        t0 = time.perf_counter()
        frames = np.empty((self.frames_per_chunk, self.height, self.width, 3), dtype=np.uint8)
        overlay, mask, y = self._static_text()  # drawn once per chunk: text rendering dominates
        for i in range(self.frames_per_chunk):
            frame = self._background(i)
            frame[mask] = overlay[mask]
            frames[i] = self._draw_counter(frame, y, i)
        self._frame += self.frames_per_chunk
        result = ChunkResult(
            chunk=self._chunk,
            frames=frames,
            prompt=self._prompt,
            seed=self._seed,
            timings_ms={"total": (time.perf_counter() - t0) * 1000.0},
        )
        self._chunk += 1
        self._blend_from = None
        return result

    def _background(self, i: int) -> np.ndarray:
        h, w = self.height, self.width
        # The bars repeat every `w` shifts: reduce in Python ints, so any seed up to 2**63-1 fits numpy's int64.
        shift = ((self._frame + i) * 2 + self._seed * 7) % w
        cols = ((np.arange(w) + shift) * len(_BARS) // w) % len(_BARS)
        bars = np.broadcast_to(_BARS[cols][None, :, :], (h, w, 3))
        if self._image is None:
            return np.array(bars)
        image = self._image.astype(np.float32)
        if self._blend_from is not None:  # cross-fade from the previous image over this chunk
            a = (i + 1) / self.frames_per_chunk
            image = a * image + (1 - a) * self._blend_from.astype(np.float32)
        out = image.astype(np.uint8)
        strip = max(4, h // 8)
        out[h - strip :] = bars[h - strip :]
        return out

    def _static_text(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The prompt, chunk and seed lines as an RGB overlay, its mask, and the y of the counter line."""
        img = Image.new("RGB", (self.width, self.height))
        mask = Image.new("L", (self.width, self.height))
        draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
        chars = max(8, int(self.width / (0.55 * self._font_px)))
        lines = textwrap.wrap(self._prompt, chars)[:3] or ["(no prompt)"]
        lines += [f"chunk {self._chunk}", f"seed {self._seed}"]
        y = 2
        for line in lines:
            box = draw.textbbox((2, y), line, font=self._font)
            rect = (box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1)
            draw.rectangle(rect, fill=(0, 0, 0))
            mdraw.rectangle(rect, fill=255)
            draw.text((2, y), line, fill=(255, 255, 255), font=self._font)
            y = box[3] + 3
        return np.asarray(img), np.asarray(mask) > 0, y

    def _draw_counter(self, frame: np.ndarray, y: int, i: int) -> np.ndarray:
        img = Image.fromarray(frame)
        draw = ImageDraw.Draw(img)
        line = f"frame {self._frame + i}"
        box = draw.textbbox((2, y), line, font=self._font)
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
        draw.text((2, y), line, fill=(255, 255, 255), font=self._font)
        return np.asarray(img, dtype=np.uint8)


class TestPatternModel(HeliosModel):
    """The Helios protocol over `TestPatternEngine`: same commands and messages, drawn frames."""

    __test__ = False

    def __init__(
        self,
        height: int = 128,
        width: int = 128,
        frames_per_chunk: int = 33,
        fps: int = 24,
        *,
        seed: int = 0,
        limits: SessionLimits | None = None,
    ) -> None:
        super().__init__(TestPatternEngine(height, width, frames_per_chunk, fps), seed=seed, limits=limits)
