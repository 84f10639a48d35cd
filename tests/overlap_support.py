"""The tiny pipeline as the decode-overlap tests build it (pipeline and session level share it).

Its VAE is the `sensitive_vae` fixture's, so frames follow the latents and a frame comparison can fail.
"""

from __future__ import annotations

from helios.pipeline import HeliosStreamPipeline

GEOMETRY = dict(height=64, width=64, num_latent_frames_per_chunk=3, pyramid_steps=[1, 1, 1])


def sensitive_pipe(folder, overlap: str, vae) -> HeliosStreamPipeline:
    """The pipeline of `folder` at GEOMETRY with `decode_overlap=overlap` and `vae` as its decoder."""
    pipe = HeliosStreamPipeline.from_pretrained(folder, decode_overlap=overlap, **GEOMETRY)
    pipe.codec.vae = vae  # frames that follow the latents, so frame comparisons can fail
    return pipe
