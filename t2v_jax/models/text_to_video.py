"""The latent text-to-video model: byte tokenizer + T5-style text encoder + VideoDiT + noise schedule,
and the geometry of its latents.

Training stages and pipelines both build on it, so it lives below both: the DiT stage trains these
params, the pipelines sample with them, and neither imports the other.
"""

import math

import jax
import jax.numpy as jnp

from t2v_jax.checks import video_size
from t2v_jax.diffusion.schedules import make_schedule
from t2v_jax.models import video_vae
from t2v_jax.models.clip_text import CLIPTextEncoder
from t2v_jax.models.text_encoder import ByteTokenizer, T5Encoder
from t2v_jax.models.video_dit import VideoDiT


def latent_shape(config) -> tuple[int, int, int, int]:
    """(frames, height, width, channels) of the VAE latents for the configured videos."""
    t_down = video_vae.temporal_compression(config.vae)
    s_down = video_vae.spatial_compression(config.vae)
    height, width = video_size(config.data)
    return (config.data.num_frames // t_down, height // s_down, width // s_down, config.vae.latent_channels)


def dit_token_grid(config) -> tuple[int, int, int]:
    """(frames, height, width) of the DiT's patch tokens."""
    frames, height, width, _ = latent_shape(config)
    pt, ph, pw = config.dit.patch_thw
    return frames // pt, height // ph, width // pw


def num_dit_tokens(config) -> int:
    return math.prod(dit_token_grid(config))


TEXT_ENCODERS = ("t5", "clip")


def text_encoder_module(text_cfg):
    """The text encoder config.text names: `kind` "t5" (default; the byte-level T5 trained here, or T5 v1.1
    XXL for Allegro) or "clip" (CLIP ViT-L/14's text tower, Stable Diffusion 1.x's, for LaVie's released
    weights). Both map (ids_bl, mask_bl) to (B, L, width)."""
    kind = text_cfg.get("kind", "t5")
    if kind == "clip":
        return CLIPTextEncoder(text_cfg.encoder)
    if kind != "t5":
        raise ValueError(f"text.kind={kind!r}; allowed: {TEXT_ENCODERS}")
    return T5Encoder(text_cfg.encoder)


class TextToVideoModel:
    """The text encoder and denoiser that train together, plus the tokenizer and noise schedule.

    The denoiser is `VideoDiT(config.dit)` unless a system passes its own Linen module with the same
    call, (x_bthwc, t_b, context_bld, context_mask_bl) -> x_bthwc (LaVie passes its UNet); its params
    sit under "dit" either way."""

    def __init__(self, config, denoiser=None):
        self.config = config
        self.tokenizer = ByteTokenizer(config.text.max_length)
        self.text_encoder = text_encoder_module(config.text)
        self.dit = VideoDiT(config.dit) if denoiser is None else denoiser
        d = config.diffusion
        self.schedule = make_schedule(d.schedule, d.num_train_steps, d.beta_start, d.beta_end,
                                      d.get("snr_shift", 1.0))

    def encode_text(self, params, ids_bl, mask_bl):
        return self.text_encoder.apply(params["text_encoder"], ids_bl, mask_bl)

    def denoise(self, params, x_bthwc, t_b, cond):
        """The Denoiser interface: cond = (text embeddings, text mask)."""
        context_bld, context_mask_bl = cond
        return self.dit.apply(params["dit"], x_bthwc, t_b, context_bld, context_mask_bl)

    def init_params(self, rng, latent_thwc, **denoiser_kwargs):
        """{"text_encoder", "dit"} params; `latent_thwc` is the denoiser's input per video (a conditioned
        denoiser's includes its condition channels), `denoiser_kwargs` what else its call needs."""
        text_rng, dit_rng = jax.random.split(rng)
        length = self.config.text.max_length
        ids = jnp.zeros((1, length), jnp.int32)
        mask = jnp.ones((1, length), bool)
        text_params = self.text_encoder.init(text_rng, ids, mask)
        context = jnp.zeros((1, length, self.config.text.encoder.width))
        # A denoiser whose parameters more than one pass creates (MALT's memory) names the pass that makes all.
        dit_params = self.dit.init(dit_rng, jnp.zeros((1, *latent_thwc)), jnp.zeros((1,)), context, mask,
                                   method=getattr(type(self.dit), "init_all", None), **denoiser_kwargs)
        return {"text_encoder": text_params, "dit": dit_params}
