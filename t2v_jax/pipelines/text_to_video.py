"""Text in, uint8 video out: encode text -> one scanned sampler -> VAE decode, in one jit."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.config import latent_shape
from t2v_jax.diffusion.samplers import sample
from t2v_jax.io.video import to_uint8
from t2v_jax.models.video_vae import VideoVAE, vae_decode
from t2v_jax.train.stages import DiTStage, TextToVideoModel, VAEStage
from t2v_jax.train.trainer import restore_params


class TextToVideoPipeline:
    """Holds the configs and params of the VAE, text encoder and DiT of one trained system."""

    def __init__(self, config, vae_params, model_params):
        self.config = config
        self.model = TextToVideoModel(config)
        self.vae = VideoVAE(config.vae)
        self.vae_params = vae_params
        self.model_params = model_params
        self.latent_shape = latent_shape(config)

    @classmethod
    def from_workdir(cls, config, workdir: str, *, use_ema: bool = True):
        """Loads the latest VAE and DiT checkpoints written by `scripts/train.py`."""
        vae_params = restore_params(os.path.join(workdir, "vae"), VAEStage(config), config.train_vae,
                                    mesh_cfg=config.mesh, use_ema=use_ema)
        model_params = restore_params(os.path.join(workdir, "dit"), DiTStage(config, vae_params),
                                      config.train_dit, mesh_cfg=config.mesh, use_ema=use_ema)
        return cls(config, vae_params, model_params)

    @functools.partial(jax.jit, static_argnums=0, static_argnames=("method", "num_steps"))
    def _generate(self, model_params, vae_params, ids_bl, mask_bl, neg_ids_bl, neg_mask_bl, rng,
                  guidance_scale, eta, *, method, num_steps):
        cond = (self.model.encode_text(model_params, ids_bl, mask_bl), mask_bl)
        uncond = (self.model.encode_text(model_params, neg_ids_bl, neg_mask_bl), neg_mask_bl)
        noise_rng, sample_rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, (ids_bl.shape[0], *self.latent_shape))
        latents = sample(
            lambda x, t, c: self.model.denoise(model_params, x, t, c), self.model.schedule, noise,
            sample_rng, method=method, num_steps=num_steps,
            prediction_type=self.config.diffusion.prediction_type, cond=cond, uncond=uncond,
            guidance_scale=guidance_scale, eta=eta)
        return vae_decode(self.vae, vae_params, latents)

    def generate(self, prompts, *, seed: int = 0, num_steps=None, guidance_scale=None, method=None,
                 eta=None, negative_prompt=None) -> np.ndarray:
        """Returns uint8 videos (N, frames, H, W, 3), one per prompt."""
        sampling = self.config.sampling
        tokenizer = self.model.tokenizer
        ids, mask = tokenizer(list(prompts))
        negative = sampling.negative_prompt if negative_prompt is None else negative_prompt
        neg_ids, neg_mask = tokenizer([negative] * len(prompts))
        videos = self._generate(
            self.model_params, self.vae_params, ids, mask, neg_ids, neg_mask, jax.random.PRNGKey(seed),
            jnp.float32(sampling.guidance_scale if guidance_scale is None else guidance_scale),
            jnp.float32(sampling.eta if eta is None else eta),
            method=method or sampling.method, num_steps=num_steps or sampling.num_steps)
        return to_uint8(jax.device_get(videos))
