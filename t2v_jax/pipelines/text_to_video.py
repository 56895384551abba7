"""Text in, uint8 video out, in three compiled phases: encode text -> one scanned sampler -> VAE decode.

The phases are separate jits so that the text encoder's parameters can be freed before the DiT
loop runs: at full size (Allegro) T5 v1.1 XXL alone is 9.5 GB in bf16. A pipeline takes the text
encoder either resident (a params tree) or as a loader that is called for each batch of prompts and
whose result is dropped right after encoding.

Each phase is compiled with input and output shardings on the config's mesh and traced under its
logical rules: prompts, latents and videos split over the data axes when their count allows it,
params stay where they were loaded.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.diffusion.samplers import sample, spacing_options
from t2v_jax.io.video import to_uint8
from t2v_jax.models.text_to_video import TextToVideoModel, latent_shape
from t2v_jax.models.video_vae import VideoVAE, vae_decode
from t2v_jax.pipelines.base import Pipeline, free


class TextToVideoPipeline(Pipeline):
    """The tokenizer, text encoder, DiT and VAE of one latent system, with their params."""

    def __init__(self, config, *, tokenizer, text_encoder_params, dit_params, vae_params, model=None):
        """Params are Flax variables ({"params": ...}); `text_encoder_params` may instead be a
        zero-argument function that loads them (per `encode_prompts` call, freed after it). `model`: a
        `TextToVideoModel` with a system's own denoiser (default: the DiT's)."""
        super().__init__(config, tokenizer)
        self.model = TextToVideoModel(config) if model is None else model
        self.vae = VideoVAE(config.vae)
        self.text_encoder_params = text_encoder_params
        self.dit_params = dit_params
        self.vae_params = vae_params
        self.latent_shape = latent_shape(config)

    def program(self, phase: str, method=None, num_steps=None):
        if phase == "encode":
            return lambda params, ids, mask: self.model.encode_text({"text_encoder": params}, ids, mask)
        if phase == "sample":
            return functools.partial(self._sample_latents, method=method, num_steps=num_steps)
        if phase == "decode":
            return lambda params, latents: vae_decode(self.vae, params, latents)
        raise ValueError(f"unknown phase {phase!r}; the phases are encode, sample and decode")

    def encode_prompts(self, prompts) -> tuple[jax.Array, jax.Array]:
        """(embeddings_bld, mask_bl) for a list of prompts."""
        ids_bl, mask_bl = self.tokenize(prompts)
        loaded = callable(self.text_encoder_params)
        params = self.text_encoder_params() if loaded else self.text_encoder_params
        embeddings_bld = self.run("encode", params, (ids_bl, mask_bl), count=len(ids_bl))
        if loaded:
            embeddings_bld.block_until_ready()
            free(params)
        return embeddings_bld, jnp.asarray(mask_bl)

    def _sample_latents(self, dit_params, cond, uncond, noise, rng, guidance_scale, eta, *, method, num_steps):
        return sample(
            lambda x, t, c: self.model.denoise({"dit": dit_params}, x, t, c), self.model.schedule, noise, rng,
            method=method, num_steps=num_steps, prediction_type=self.config.diffusion.prediction_type,
            cond=cond, uncond=uncond, guidance_scale=guidance_scale, eta=eta,
            **spacing_options(self.config.sampling))

    def generate(self, prompts, *, seed: int = 0, num_steps=None, guidance_scale=None, method=None,
                 eta=None, negative_prompt=None, initial_noise=None) -> np.ndarray:
        """Returns uint8 videos (N, frames, H, W, 3), one per prompt.

        `initial_noise` (N, *latent_shape), standard normal, replaces the seed's starting latents: the
        way to reproduce another implementation's run from the same noise.
        """
        return self.decode(self.sample_latents(
            prompts, seed=seed, num_steps=num_steps, guidance_scale=guidance_scale, method=method, eta=eta,
            negative_prompt=negative_prompt, initial_noise=initial_noise))

    def sample_latents(self, prompts, *, seed: int = 0, num_steps=None, guidance_scale=None, method=None,
                       eta=None, negative_prompt=None, initial_noise=None):
        """The sampled latents (N, *latent_shape) that `generate` decodes; same arguments."""
        sampling = self.config.sampling
        prompts = list(prompts)
        negative = sampling.negative_prompt if negative_prompt is None else negative_prompt
        cond, uncond = self._conditions(prompts, [negative] * len(prompts))
        noise_rng, sample_rng = jax.random.split(jax.random.PRNGKey(seed))
        if initial_noise is None:
            initial_noise = jax.random.normal(noise_rng, (len(prompts), *self.latent_shape))
        elif tuple(initial_noise.shape) != (len(prompts), *self.latent_shape):
            raise ValueError(f"initial_noise has shape {tuple(initial_noise.shape)}; expected "
                             f"{(len(prompts), *self.latent_shape)} (prompts, *latent_shape)")
        return self.run(
            "sample", self.dit_params, (cond, uncond, jnp.asarray(initial_noise, jnp.float32)),
            (sample_rng, jnp.float32(sampling.guidance_scale if guidance_scale is None else guidance_scale),
             jnp.float32(sampling.eta if eta is None else eta)),
            count=len(prompts), method=method or sampling.method, num_steps=num_steps or sampling.num_steps)

    def decode(self, latents_bthwc) -> np.ndarray:
        """uint8 videos from latents, through the VAE's (tiled) decoder."""
        return to_uint8(jax.device_get(self.run("decode", self.vae_params, (latents_bthwc,),
                                                count=latents_bthwc.shape[0])))

    def _conditions(self, prompts, negatives):
        """Prompts and negatives through the text encoder in one call, so a loaded encoder loads once."""
        embeddings_bld, mask_bl = self.encode_prompts(prompts + negatives)
        n = len(prompts)
        return (embeddings_bld[:n], mask_bl[:n]), (embeddings_bld[n:], mask_bl[n:])

