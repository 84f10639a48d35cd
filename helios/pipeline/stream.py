"""HeliosStreamPipeline: the endless, controllable chunk loop (StreamEngine implementation).

Each `begin_chunk()` applies the controls set since the last chunk (seed, prompt, image,
video), draws the chunk's noise, runs the pyramid sampler against the history memory,
pushes the result into memory and hands the latents to the `ChunkDecoder`, which turns
them into uint8 frames (synchronously, or overlapped with the next chunk's denoising:
history lives in latent space, so the next chunk never waits for the VAE). The random
draws happen in the same order as diffusers' HeliosPyramidPipeline, so one seed gives
the same video; the decode draws nothing, so overlapping it changes no frame.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from helios.dtypes import resolve_dtype
from helios.model import HeliosTransformer
from helios.parallel import GroupLike
from helios.pipeline import loading
from helios.pipeline.config import StreamConfig, build_stream_config
from helios.pipeline.decode import ChunkDecoder, DecodeJob, resolve_overlap
from helios.pipeline.engine import ChunkResult, Transition
from helios.pipeline.history import HistoryMemory
from helios.pipeline.image import ImageInputError, resize_image
from helios.pipeline.noise import randn
from helios.pipeline.sampler import Conditioning, PyramidSampler
from helios.pipeline.text import PromptEncoder
from helios.pipeline.vae import VideoCodec, noise_latents
from helios.pipeline.warmup import prepare_fast_path

logger = logging.getLogger(__name__)


@dataclass
class _Blend:
    """A linear move from one tensor to another over `total` chunks (step 1 is the first blended chunk)."""

    start: torch.Tensor
    end: torch.Tensor
    total: int
    done: int = 0

    def next(self) -> torch.Tensor:
        self.done += 1
        w = self.done / self.total
        return self.end if self.done >= self.total else torch.lerp(self.start, self.end, w)

    @property
    def finished(self) -> bool:
        return self.done >= self.total


@dataclass(kw_only=True, eq=False)
class PipelineChunk:
    """A chunk whose latents are done; `result()` waits for its frames (the PendingChunk protocol)."""

    chunk: int
    prompt: str
    seed: int
    timings: dict[str, float]
    """Milliseconds per stage until the latents were done (the decode ones are added by `result()`)."""
    started_at: float
    job: DecodeJob
    _result: ChunkResult | None = field(default=None, init=False, repr=False)

    def done(self) -> bool:
        """True once the frames are decoded (result() then returns at once)."""
        return self.job.future.done()

    def result(self) -> ChunkResult:
        if self._result is None:
            t0 = time.perf_counter()
            frames = self.job.result()
            timings = dict(self.timings)
            timings["decode"] = self.job.decode_ms
            timings["decode_wait"] = (time.perf_counter() - t0) * 1000.0
            timings["total"] = (self.job.finished_at - self.started_at) * 1000.0
            self._result = ChunkResult(chunk=self.chunk, frames=frames, prompt=self.prompt, seed=self.seed,
                                       timings_ms=timings)
        return self._result


class HeliosStreamPipeline:
    """An endless Helios video stream on one device (or one rank of a TP group, SPMD)."""

    def __init__(self, *, transformer: HeliosTransformer, vae, tokenizer, text_encoder, scheduler, config: StreamConfig,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                 decode_frames: bool = True):
        self.config = config
        self.decode_frames = decode_frames
        """False: chunks come back with no frames (0, H, W, 3) and the VAE only encodes: the ranks
        of a TP group other than 0, whose frames nobody reads, skip the decode entirely."""
        self.device = torch.device(device)
        self.dtype = dtype
        self.transformer = transformer
        self.scheduler = scheduler
        self.height, self.width = config.height, config.width
        self.frames_per_chunk = config.frames_per_chunk
        self.fps = config.fps
        patch, channels = transformer.config.patch_size, transformer.config.in_channels
        spatial = int(vae.config.scale_factor_spatial)
        self.latent_hw = (config.height // spatial, config.width // spatial)
        self.codec = VideoCodec(vae, device=self.device, chunk_latent_frames=config.num_latent_frames_per_chunk)
        if self.codec.chunk_frames != self.frames_per_chunk:
            raise ValueError(f"num_latent_frames_per_chunk: VAE gives {self.codec.chunk_frames} frames per chunk, "
                             f"config expects {self.frames_per_chunk}")
        self.decoder = ChunkDecoder(self.codec, overlap=resolve_overlap(config.decode_overlap, self.device))
        self.chunks_in_flight = 2 if self.decoder.overlap else 1
        self.text = PromptEncoder(tokenizer, text_encoder, max_length=config.max_sequence_length,
                                  cache_size=config.text_cache_size, device=self.device, dtype=dtype,
                                  background=config.text_prefetch)
        self.sampler = PyramidSampler(transformer, scheduler, config, patch_size=patch, dtype=dtype, device=self.device)
        self.memory = HistoryMemory(channels=channels, latent_hw=self.latent_hw, history_sizes=config.history_sizes,
                                    chunk_frames=config.num_latent_frames_per_chunk, device=self.device)
        self.channels = channels
        self.generator = torch.Generator(device=self.device)
        self.last_latents: torch.Tensor | None = None
        """Denoised latents of the last chunk (1, C, F, h, w) float; for tests and tools."""
        self._prompt: str | None = None
        self._pending_prompt: tuple[str, int] | None = None
        self._prompt_blend: _Blend | None = None
        self._last_embeds: torch.Tensor | None = None
        self._pending_image: tuple[np.ndarray | None, Transition] | None = None
        self._anchor_blend: _Blend | None = None
        self._pending_video: np.ndarray | None = None
        self.reset(seed)
        self.fast_report, self.warmup_report = prepare_fast_path(self, config.fast)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, *, tp_group: GroupLike = None, dtype: str | torch.dtype | None = None,
                        device: str | torch.device | None = None, seed: int = 0, decode_frames: bool = True,
                        **overrides) -> "HeliosStreamPipeline":
        """Load a diffusers-format Helios folder or a preset name (configs/models/*.yaml).

        `overrides` are StreamConfig fields (height, width, pyramid_steps, guidance_scale, ...);
        an unknown one raises ValueError naming it. Distilled vs Mid/Base follows the folder's
        scheduler config unless `variant` is given.
        """
        source = loading.resolve_source(path)
        preset = source.preset
        if dtype is None and preset is not None:
            dtype = preset.dtype
        torch_dtype = resolve_dtype(dtype)
        device = torch.device(device or "cpu")
        base = dict(preset.stream) if preset is not None else {}
        base.setdefault("is_cfg_zero_star", bool(source.model_index.get("is_cfg_zero_star", False)))
        variant = overrides.pop("variant", base.pop("variant", source.variant))
        config = build_stream_config(variant, base, overrides)
        transformer = loading.load_transformer(source.folder / "transformer", tp_group=tp_group, dtype=torch_dtype,
                                               device=device)
        tokenizer, text_encoder = loading.load_text_stack(source.folder, dtype=torch_dtype, device=device)
        vae = loading.load_vae(source.folder, device=device, dtype=resolve_dtype(config.vae_dtype))
        scheduler = loading.load_scheduler(source.folder, source.scheduler_class)
        logger.info("loaded Helios %s pipeline from %s (%s, %s)", config.variant, source.folder, torch_dtype, device)
        return cls(transformer=transformer, vae=vae, tokenizer=tokenizer, text_encoder=text_encoder,
                   scheduler=scheduler, config=config, device=device, dtype=torch_dtype, seed=seed,
                   decode_frames=decode_frames)

    # ------------------------------------------------------------------ controls (StreamEngine)
    @property
    def chunk_index(self) -> int:
        return self._chunk

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def prompt(self) -> str | None:
        """The prompt the next chunk targets (a pending switch included)."""
        return self._pending_prompt[0] if self._pending_prompt else self._prompt

    def reset(self, seed: int) -> None:
        """Forget history, anchor and reference image; chunk 0 is next, drawn with `seed`. Prompts are kept.

        Chunks already begun still decode, in order (their handles own them).
        """
        self._seed = _check_seed(seed)
        self._pending_seed: int | None = None
        self.generator.manual_seed(self._seed)
        self.memory.clear()
        self._chunk = 0
        self._pending_image = None
        self._pending_video = None
        self._anchor_blend = None
        self._prompt_blend = None
        self._last_embeds = None
        if self._pending_prompt is not None:
            self._pending_prompt = (self._pending_prompt[0], 0)
        self.last_latents = None

    def set_seed(self, seed: int) -> None:
        """Re-seed the noise from the next chunk on; history is kept."""
        self._pending_seed = _check_seed(seed)

    def set_prompt(self, prompt: str, blend_chunks: int = 0) -> None:
        """Condition the next chunk on `prompt`; with blend_chunks=k, interpolate embeddings over k chunks."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt: must be a non-empty string")
        if isinstance(blend_chunks, bool) or not isinstance(blend_chunks, int) or blend_chunks < 0:
            raise ValueError(f"blend_chunks: must be an integer >= 0, got {blend_chunks!r}")
        self._pending_prompt = (prompt, blend_chunks)
        self.text.prefetch(prompt)

    def prefetch_prompt(self, prompt: str) -> None:
        """Encode `prompt` in the background now (warms the cache only; safe from any thread)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt: must be a non-empty string")
        self.text.prefetch(prompt)

    def close(self) -> None:
        """Finish the chunks being decoded and stop the worker threads."""
        self.decoder.close()
        self.text.close()

    def set_image(self, image: np.ndarray | None, transition: Transition = "cut") -> None:
        """Set (uint8 HxWx3) or clear (None) the reference image, applied at the next chunk.

        cut: the stream restarts from the image (anchor = image, history = the image held still);
        blend: history is kept and the anchor moves to the image over `image_blend_chunks` chunks.
        Clearing drops the anchor; the next chunk's first frame becomes the new anchor.
        """
        if transition not in ("cut", "blend"):
            raise ValueError(f"transition: expected 'cut' or 'blend', got {transition!r}")
        if image is not None:
            image = self._check_frames(np.asarray(image)[None] if isinstance(image, np.ndarray) else image, "image")[0]
        self._pending_image = (image, transition)

    def set_video(self, frames: np.ndarray) -> None:
        """V2V: the last whole chunks of a uint8 (N, H, W, 3) clip replace the generated history at the next chunk."""
        frames = self._check_frames(frames, "video")
        if frames.shape[0] < self.frames_per_chunk:
            raise ValueError(f"video: needs at least {self.frames_per_chunk} frames, got {frames.shape[0]}")
        self._pending_video = frames

    # ------------------------------------------------------------------ generation
    def next_chunk(self) -> ChunkResult:
        """Generate and decode the next chunk (waits for its frames)."""
        return self.begin_chunk().result()

    @torch.no_grad()
    def begin_chunk(self) -> PipelineChunk:
        """Denoise the next chunk and queue its decode; returns once the latents are in memory."""
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        chunk = self._chunk
        if self._pending_seed is not None:
            self._seed, self._pending_seed = self._pending_seed, None
            self.generator.manual_seed(self._seed)

        # 1. Text: switch / blend prompts at this boundary (cache: known prompts are not re-encoded).
        t0 = time.perf_counter()
        cond, prompt = self._conditioning()
        timings["text"] = self._elapsed(t0)

        # 2. Image / video conditioning enters memory (encoded once, noised like the reference).
        t0 = time.perf_counter()
        self._apply_image_and_video()
        timings["encode"] = self._elapsed(t0)

        # 3. Denoise this chunk against the memory.
        t0 = time.perf_counter()
        shape = (1, self.channels, self.config.num_latent_frames_per_chunk, *self.latent_hw)
        noise = randn(shape, generator=self.generator, device=self.device)
        if self._anchor_blend is not None:
            self.memory.anchor = self._anchor_blend.next()
            if self._anchor_blend.finished:
                self._anchor_blend = None
        views = self.memory.views(self.dtype)
        latents = self.sampler.sample(noise, views, cond, generator=self.generator, first_chunk=chunk == 0)
        if self.memory.anchor is None:
            self.memory.anchor = latents[:, :, 0:1].float()
        self.memory.push(latents)
        self.last_latents = latents
        timings["denoise"] = self._elapsed(t0)

        # 4. Decode alone (no overlap with neighbouring chunks' latents) to uint8 on the device, once;
        #    with decode_overlap this runs while the caller begins the next chunk.
        job = self.decoder.submit(latents) if self.decode_frames else self.decoder.skip(self.height, self.width)
        self._chunk += 1
        return PipelineChunk(chunk=chunk, prompt=prompt, seed=self._seed, timings=timings, started_at=t_start, job=job)

    # ------------------------------------------------------------------ internals
    def _conditioning(self) -> tuple[Conditioning, str]:
        if self._pending_prompt is not None:
            prompt, blend = self._pending_prompt
            self._pending_prompt = None
            new = self.text.get(prompt)
            if blend > 0 and self._prompt is not None and prompt != self._prompt:
                start = self._last_embeds if self._last_embeds is not None else self.text.get(self._prompt)
                self._prompt_blend = _Blend(start=start, end=new, total=blend)
            else:
                self._prompt_blend = None
            self._prompt = prompt
        if self._prompt is None:
            raise ValueError("prompt: no prompt set; call set_prompt() before next_chunk()")
        if self._prompt_blend is not None:
            embeds = self._prompt_blend.next()
            if self._prompt_blend.finished:
                self._prompt_blend = None
        else:
            embeds = self.text.get(self._prompt)
        self._last_embeds = embeds
        negative = self.text.get(self.config.negative_prompt) if self.config.do_cfg else None
        return Conditioning(prompt_embeds=embeds, negative_embeds=negative), self._prompt

    def _apply_image_and_video(self) -> None:
        cfg = self.config
        if self._pending_image is not None or self._pending_video is not None:
            self.decoder.drain()  # the VAE's encode and decode share its causal-conv caches
        if self._pending_image is not None:
            image, transition = self._pending_image
            self._pending_image = None
            if image is None:
                self.memory.anchor = None
                self._anchor_blend = None
            else:
                latent, fake = self.codec.encode_image(image, self.generator)
                latent = noise_latents(latent, cfg.image_noise_sigma, generator=self.generator, device=self.device)
                fake = noise_latents(fake, cfg.video_noise_sigma, generator=self.generator, device=self.device)
                if transition == "blend" and self._chunk > 0:
                    start = self.memory.anchor if self.memory.anchor is not None else torch.zeros_like(latent)
                    self._anchor_blend = _Blend(start=start, end=latent, total=cfg.image_blend_chunks)
                else:
                    self.memory.clear()
                    self.memory.replace_tail(fake)
                    self.memory.anchor = latent
                    self._anchor_blend = None
        if self._pending_video is not None:
            frames, self._pending_video = self._pending_video, None
            first, video = self.codec.encode_video(frames, self.generator)
            first = noise_latents(first, cfg.image_noise_sigma, generator=self.generator, device=self.device)
            per = cfg.num_latent_frames_per_chunk
            parts = [noise_latents(video[:, :, i: i + per], cfg.video_noise_sigma, generator=self.generator,
                                   device=self.device, per_frame=True)
                     for i in range(0, video.shape[2] - per + 1, per)]
            self.memory.replace_tail(torch.cat(parts, dim=2))
            self.memory.anchor = first
            self._anchor_blend = None

    def _check_frames(self, frames, name: str) -> np.ndarray:
        """uint8 (N, H, W, 3) at the model resolution (other sizes are resized, centre-cropped)."""
        if not isinstance(frames, np.ndarray):
            raise ValueError(f"{name}: expected a numpy uint8 array, got {type(frames).__name__}")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
            raise ValueError(f"{name}: expected uint8 frames of shape (H, W, 3), got {frames.dtype} "
                             f"{tuple(frames.shape[1:]) if frames.ndim == 4 else tuple(frames.shape)}")
        if frames.shape[1:3] != (self.height, self.width):
            try:
                frames = np.stack([resize_image(f, self.width, self.height) for f in frames])
            except ImageInputError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return np.ascontiguousarray(frames)

    def _elapsed(self, t0: float) -> float:
        if self.device.type == "cuda":  # this stream only: a device-wide sync would wait for the decode stream
            torch.cuda.current_stream(self.device).synchronize()
        return (time.perf_counter() - t0) * 1000.0


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed: expected an integer in [0, 2**63), got {seed!r}")
    return int(seed)
