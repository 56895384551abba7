"""LaVie's cascade as one pipeline: the base model's latents -> x`rate` temporal interpolation -> decode ->
(when the config has one) x`scale` super-resolution -> the VSR VAE's decode.

Every stage runs as its own compiled phase with its own text encoder, sampler and guidance (from
`config.sampling`, `config.interpolation.sampling` and `config.vsr.sampling`); each sampling loop is one
`lax.scan`. The interpolation model reads the base model's latents directly (both work in the same VAE's
latent space). Super-resolution runs on independent chunks of `vsr.chunk_frames` frames, as LaVie's does,
as a `lax.scan` over the chunks, so its memory does not grow with the video's length.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.diffusion.samplers import sample, spacing_options
from t2v_jax.diffusion.schedules import add_noise
from t2v_jax.io.video import to_uint8
from t2v_jax.models.text_to_video import latent_shape
from t2v_jax.models.video_vae import VideoVAE, spatial_compression, vae_decode
from t2v_jax.pipelines.text_to_video import TextToVideoPipeline


class LaVieCascadePipeline(TextToVideoPipeline):
    """`generate(prompts)` -> uint8 (N, (frames - 1) * rate + 1, H, W, 3); `interpolate` alone for given
    keyframe latents. `keyframe_condition(keyframes_bkhwc)` repeats keyframe latents to the output frames
    (`systems.lavie.interpolation_condition`)."""

    def __init__(self, config, *, tokenizer, base_params, interpolation_params, vae_params, base_model,
                 interpolation_model, keyframe_condition, vsr=None):
        """`vsr`: None, or a dict of the super-resolution stage's `params`, `model`, `vae_params`,
        `low_res_schedule` and `tokenizer` (from `systems.lavie`)."""
        super().__init__(config, tokenizer=tokenizer, text_encoder_params=base_params["text_encoder"],
                         dit_params=base_params["dit"], vae_params=vae_params, model=base_model)
        self.interpolation_model = interpolation_model
        self.interpolation_params = interpolation_params
        self.keyframe_condition = keyframe_condition
        self.vsr = vsr
        if vsr is not None:
            self.vsr_vae = VideoVAE(config.vsr.vae)
        frames, height, width, channels = latent_shape(config)
        self.output_latent_shape = (config.interpolation.num_frames, height, width, channels)

    def program(self, phase: str, method=None, num_steps=None, **static):
        if phase == "encode_interpolation":
            return lambda params, ids, mask: self.interpolation_model.encode_text({"text_encoder": params}, ids, mask)
        if phase == "interpolate":
            return functools.partial(self._interpolate_latents, method=method, num_steps=num_steps)
        if phase == "encode_vsr":
            return lambda params, ids, mask: self.vsr["model"].encode_text({"text_encoder": params}, ids, mask)
        if phase == "upscale":
            return functools.partial(self._upscale_latents, method=method, num_steps=num_steps)
        if phase == "decode_vsr":
            return lambda params, latents: vae_decode(self.vsr_vae, params, latents)
        return super().program(phase, method=method, num_steps=num_steps, **static)

    def _interpolate_latents(self, params, cond, uncond, noise, rng, guidance_scale, eta, *, method, num_steps):
        """The interpolation sampler; cond and uncond carry the repeated keyframe latents as a third part,
        so classifier-free guidance drops the caption only."""
        unet = self.interpolation_model.dit

        def denoise(x_bthwc, t_b, c):
            context_bld, mask_bl, condition_bthwc = c
            return unet.apply(params, jnp.concatenate([x_bthwc, condition_bthwc], -1), t_b, context_bld, mask_bl)

        return sample(denoise, self.interpolation_model.schedule, noise, rng, method=method, num_steps=num_steps,
                      prediction_type=self.config.diffusion.prediction_type, cond=cond, uncond=uncond,
                      guidance_scale=guidance_scale, eta=eta, **spacing_options(self.config.interpolation.sampling))

    def _upscale_latents(self, params, cond, uncond, low_res_bthwc, rng, guidance_scale, eta, *, method, num_steps):
        """Super-resolution latents of `low_res_bthwc` ([-1, 1] frames at the base size), chunk by chunk in
        one `lax.scan`; the last chunk is padded by repeating the last frame, and the padding dropped."""
        vsr_cfg, vsr = self.config.vsr, self.vsr
        chunk = vsr_cfg.chunk_frames
        batch, frames = low_res_bthwc.shape[:2]
        pad = -frames % chunk
        low_res_bthwc = jnp.concatenate([low_res_bthwc, jnp.repeat(low_res_bthwc[:, -1:], pad, axis=1)], axis=1)
        augment_rng, noise_rng, sample_rng = jax.random.split(rng, 3)
        levels_b = jnp.full((batch,), vsr_cfg.noise_level, jnp.int32)
        low_res_bthwc = add_noise(vsr["low_res_schedule"], low_res_bthwc,
                                  jax.random.normal(augment_rng, low_res_bthwc.shape), levels_b)
        height, width = (size * vsr_cfg.scale // spatial_compression(vsr_cfg.vae) for size in low_res_bthwc.shape[2:4])
        noise = jax.random.normal(noise_rng, (batch, frames + pad, height, width, vsr_cfg.vae.latent_channels))
        chunks = frames // chunk + (pad > 0)

        def split(x):
            return jnp.moveaxis(x.reshape((batch, chunks, chunk) + x.shape[2:]), 1, 0)

        unet = vsr["model"].dit

        def denoise(x_bthwc, t_b, c):
            context_bld, mask_bl, low_bthwc, level_b = c
            return unet.apply(params, jnp.concatenate([x_bthwc, low_bthwc], -1), t_b, context_bld, mask_bl,
                              class_labels_b=level_b)

        def upscale_chunk(_, inputs):
            low_bthwc, noise_bthwc, chunk_rng = inputs
            latents = sample(denoise, vsr["model"].schedule, noise_bthwc, chunk_rng, method=method,
                             num_steps=num_steps, prediction_type=vsr["model"].config.diffusion.prediction_type,
                             cond=(*cond, low_bthwc, levels_b), uncond=(*uncond, low_bthwc, levels_b),
                             guidance_scale=guidance_scale, eta=eta, **spacing_options(vsr_cfg.sampling))
            return None, latents

        _, latents_nbthwc = jax.lax.scan(upscale_chunk, None, (split(low_res_bthwc), split(noise),
                                                               jax.random.split(sample_rng, chunks)))
        latents = jnp.moveaxis(latents_nbthwc, 0, 1).reshape((batch, chunks * chunk) + latents_nbthwc.shape[3:])
        return latents[:, :frames]

    def upscale(self, prompts, low_res_bthwc, *, seed: int = 0):
        """uint8 videos `vsr.scale` x the size of `low_res_bthwc` ([-1, 1], base size)."""
        sampling = self.config.vsr.sampling
        prompts = list(prompts)
        ids_bl, mask_bl = self.vsr["tokenizer"](prompts + [sampling.negative_prompt] * len(prompts))
        embeddings_bld = self.run("encode_vsr", self.vsr["params"]["text_encoder"], (ids_bl, mask_bl),
                                  count=len(ids_bl))
        n = len(prompts)
        mask_bl = jnp.asarray(mask_bl)
        latents = self.run("upscale", self.vsr["params"]["dit"],
                           ((embeddings_bld[:n], mask_bl[:n]), (embeddings_bld[n:], mask_bl[n:]), low_res_bthwc),
                           (jax.random.fold_in(jax.random.PRNGKey(seed), 2), jnp.float32(sampling.guidance_scale),
                            jnp.float32(sampling.eta)),
                           count=n, method=sampling.method, num_steps=sampling.num_steps)
        return self.decode_vsr(latents)

    def decode_vsr(self, latents_bthwc) -> np.ndarray:
        """uint8 videos from the super-resolution VAE's latents."""
        return to_uint8(jax.device_get(self.run("decode_vsr", self.vsr["vae_params"], (latents_bthwc,),
                                                count=latents_bthwc.shape[0])))

    def interpolate(self, prompts, keyframes_bkhwc, *, seed: int = 0):
        """Latents (N, output frames, h, w, c) from keyframe latents (N, K, h, w, c) and their prompts."""
        sampling = self.config.interpolation.sampling
        prompts = list(prompts)
        ids_bl, mask_bl = self.tokenize(prompts + [sampling.negative_prompt] * len(prompts))
        embeddings_bld = self.run("encode_interpolation", self.interpolation_params["text_encoder"], (ids_bl, mask_bl),
                                  count=len(ids_bl))
        n = len(prompts)
        condition = self.keyframe_condition(jnp.asarray(keyframes_bkhwc))
        mask_bl = jnp.asarray(mask_bl)
        cond = (embeddings_bld[:n], mask_bl[:n], condition)
        uncond = (embeddings_bld[n:], mask_bl[n:], condition)
        noise_rng, sample_rng = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1))
        noise = jax.random.normal(noise_rng, (n, *self.output_latent_shape))
        return self.run("interpolate", self.interpolation_params["dit"], (cond, uncond, noise),
                        (sample_rng, jnp.float32(sampling.guidance_scale), jnp.float32(sampling.eta)),
                        count=n, method=sampling.method, num_steps=sampling.num_steps)

    def generate(self, prompts, *, seed: int = 0) -> np.ndarray:
        prompts = list(prompts)
        latents = self.interpolate(prompts, self.sample_latents(prompts, seed=seed), seed=seed)
        if self.vsr is None:
            return self.decode(latents)
        low_res_bthwc = self.run("decode", self.vae_params, (latents,), count=len(prompts))
        return self.upscale(prompts, jnp.clip(low_res_bthwc, -1.0, 1.0), seed=seed)
