"""Text in, uint8 video out, in three compiled phases: encode text -> one scanned sampler -> VAE decode.

The phases are separate jits so that the text encoder's parameters can be freed before the DiT
loop runs: at full size (Allegro) T5 v1.1 XXL alone is 9.5 GB in bf16. A pipeline takes the text
encoder either resident (a params tree) or as a loader that is called for each batch of prompts and
whose result is dropped right after encoding.

Each phase is compiled with input and output shardings on the config's mesh and traced under its
logical rules: prompts, latents and videos split over the data axes when their count allows it,
params stay where they were loaded.

A video longer than the model's own, with a prompt per time range (`sample_long_latents`,
`generate_multi_prompt`), samples with SynCoS (`pipelines/syncos.py`) over the same denoiser in one
more phase, "sample_long"; the VAE decodes it in time tiles like any latent.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2v_jax.checks import require
from t2v_jax.diffusion.samplers import sample, spacing_options
from t2v_jax.io.video import to_uint8
from t2v_jax.models.text_to_video import TextToVideoModel, latent_shape
from t2v_jax.models.video_vae import VideoVAE, vae_decode
from t2v_jax.pipelines.base import Pipeline, free
from t2v_jax.pipelines.syncos import StructuredPrompt, syncos_config, syncos_sample, validate_syncos_config


def _check_initial_noise(initial_noise, shape, axes: str) -> None:
    if initial_noise is not None and tuple(initial_noise.shape) != tuple(shape):
        raise ValueError(f"initial_noise has shape {tuple(initial_noise.shape)}; expected {tuple(shape)} ({axes})")


def _starting_noise(seed: int, shape, initial_noise=None):
    """(the sampler's starting latents, the sampler's key): one split of `seed` serves both, so a given
    `initial_noise` leaves the sampler's own randomness as the seed's."""
    noise_rng, sample_rng = jax.random.split(jax.random.PRNGKey(seed))
    if initial_noise is None:
        initial_noise = jax.random.normal(noise_rng, shape)
    return initial_noise, sample_rng


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

    def program(self, phase: str, method=None, num_steps=None, syncos=()):
        """`syncos` ("sample_long"): the SynCoS config as sorted (field, value) pairs, hashable as a static
        keyword must be."""
        if phase == "encode":
            return lambda params, ids, mask: self.model.encode_text({"text_encoder": params}, ids, mask)
        if phase == "sample":
            return functools.partial(self._sample_latents, method=method, num_steps=num_steps)
        if phase == "sample_long":
            return functools.partial(self._sample_long_latents, syncos=ml_collections.ConfigDict(dict(syncos)))
        if phase == "decode":
            return lambda params, latents: vae_decode(self.vae, params, latents)
        raise ValueError(f"unknown phase {phase!r}; the phases are encode, sample, sample_long and decode")

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

    def _sample_long_latents(self, dit_params, cond_bn, uncond, noise_bthwc, rng, guidance_scale, *, syncos):
        """`syncos_sample` over the denoiser; the conditions arrive video-major (B, chunks, ...) so that
        they split over the data axes with the noise, and go to the sampler chunk-major."""
        return syncos_sample(
            lambda x, t, c: self.model.denoise({"dit": dit_params}, x, t, c), self.model.schedule, noise_bthwc,
            jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), cond_bn), uncond, config=syncos,
            prediction_type=self.config.diffusion.prediction_type, rng=rng, guidance_scale=guidance_scale)

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
        noise_shape = (len(prompts), *self.latent_shape)
        _check_initial_noise(initial_noise, noise_shape, "prompts, *latent_shape")
        cond, uncond = self._conditions(prompts, [negative] * len(prompts))
        initial_noise, sample_rng = _starting_noise(seed, noise_shape, initial_noise)
        return self.run(
            "sample", self.dit_params, (cond, uncond, jnp.asarray(initial_noise, jnp.float32)),
            (sample_rng, jnp.float32(sampling.guidance_scale if guidance_scale is None else guidance_scale),
             jnp.float32(sampling.eta if eta is None else eta)),
            count=len(prompts), method=method or sampling.method, num_steps=num_steps or sampling.num_steps)

    def syncos_settings(self, syncos=None) -> ml_collections.ConfigDict:
        """The SynCoS config a long video samples with: `syncos`, else config.syncos, else `syncos_config()`
        with chunks of the model's native latent frames every half chunk and the model's own steps,
        guidance and timestep spacing (config.sampling), so that one chunk samples as `sample_latents`
        with DDIM does."""
        syncos = self.config.get("syncos") if syncos is None else syncos
        if syncos is not None:
            return syncos
        sampling, chunk_frames = self.config.sampling, self.latent_shape[0]
        return syncos_config(chunk_frames=chunk_frames, stride=max(1, chunk_frames // 2),
                             num_steps=sampling.num_steps, guidance_scale=sampling.guidance_scale,
                             **spacing_options(sampling))

    def sample_long_latents(self, structured_prompts, num_latent_frames: int, *, syncos=None, seed: int = 0,
                            guidance_scale=None, negative_prompt=None, initial_noise=None):
        """Latents (N, num_latent_frames, h, w, c) of N long videos, one per `StructuredPrompt` (or one
        StructuredPrompt alone), sampled with SynCoS (`syncos_settings(syncos)`; its mode may be a baseline).

        Lengths and the prompts' ranges are in LATENT frames, the sampler's unit: no rounding, and a video
        of L latent frames decodes to L x the VAE's temporal compression frames. Everything is checked,
        naming the field, before any text is encoded or anything compiles. Each distinct chunk text is
        encoded once, through `_conditions` (a subclass's prompt template applies). `seed` draws the initial
        noise (unless `initial_noise`, standard normal, is given) and SynCoS's baseline noise.
        """
        syncos = self.syncos_settings(syncos)
        texts_bn = self._chunk_texts(structured_prompts, num_latent_frames, syncos)
        batch = len(texts_bn)
        noise_shape = (batch, num_latent_frames, *self.latent_shape[1:])
        _check_initial_noise(initial_noise, noise_shape, "videos, num_latent_frames, *latent_shape[1:]")
        distinct = list(dict.fromkeys(text for texts in texts_bn for text in texts))
        negative = self.config.sampling.negative_prompt if negative_prompt is None else negative_prompt
        cond, uncond = self._conditions(distinct, [negative])
        index_bn = np.array([[distinct.index(text) for text in texts] for texts in texts_bn])
        cond_bn = jax.tree.map(lambda leaf: leaf[index_bn], cond)
        uncond = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (batch, *leaf.shape[1:])), uncond)
        initial_noise, sample_rng = _starting_noise(seed, noise_shape, initial_noise)
        return self.run(
            "sample_long", self.dit_params, (cond_bn, uncond, jnp.asarray(initial_noise, jnp.float32)),
            (sample_rng, jnp.float32(syncos.guidance_scale if guidance_scale is None else guidance_scale)),
            count=batch, syncos=tuple(sorted(syncos.items())))

    def _chunk_texts(self, structured_prompts, num_latent_frames, syncos) -> list[tuple[str, ...]]:
        """Each video's chunk texts, after checking everything a long video's sampling reads, naming the field."""
        if isinstance(structured_prompts, StructuredPrompt):
            structured_prompts = [structured_prompts]
        structured_prompts = list(structured_prompts)
        require(len(structured_prompts) > 0, "structured_prompts", "needs at least one StructuredPrompt")
        require(isinstance(num_latent_frames, (int, np.integer)) and num_latent_frames >= 1, "num_latent_frames",
                f"must be a positive integer (latent frames), got {num_latent_frames!r}")
        validate_syncos_config(syncos, num_latent_frames)
        native_frames = self.latent_shape[0]
        require(syncos.chunk_frames == native_frames, "syncos.chunk_frames",
                f"{syncos.chunk_frames} must be the model's native {native_frames} latent frames")
        texts_bn = []
        for i, prompt in enumerate(structured_prompts):
            try:
                texts_bn.append(prompt.chunk_texts(num_latent_frames, syncos.chunk_frames, syncos.stride))
            except ValueError as error:
                raise ValueError(f"structured_prompts[{i}]: {error}") from None
        return texts_bn

    def generate_multi_prompt(self, structured_prompts, num_latent_frames: int, **kwargs) -> np.ndarray:
        """uint8 videos (N, num_latent_frames x the VAE's temporal compression, H, W, 3) of
        `sample_long_latents`, same arguments, through the VAE's decoder tiled in time."""
        return self.decode(self.sample_long_latents(structured_prompts, num_latent_frames, **kwargs))

    def decode(self, latents_bthwc) -> np.ndarray:
        """uint8 videos from latents, through the VAE's (tiled) decoder."""
        return to_uint8(jax.device_get(self.run("decode", self.vae_params, (latents_bthwc,),
                                                count=latents_bthwc.shape[0])))

    def _conditions(self, prompts, negatives):
        """Prompts and negatives through the text encoder in one call, so a loaded encoder loads once."""
        embeddings_bld, mask_bl = self.encode_prompts(prompts + negatives)
        n = len(prompts)
        return (embeddings_bld[:n], mask_bl[:n]), (embeddings_bld[n:], mask_bl[n:])

