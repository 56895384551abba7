"""MALT's any-length generation: one compiled `lax.scan` over segments carrying the memory.

Each step of the scan encodes its segment's caption, samples the segment with the shared sampler (one inner
scan, classifier-free guidance against the empty caption, both branches reading the same memory), writes the
memory from the generated latents noised to `malt.memory_noise_level` (training noised them at random
levels, so the model has learned to read a memory of imperfect segments), and decodes the segment with the
VAE. The carry is the memory alone, so device memory does not grow with the number of segments: only the
returned uint8 video does.

The state between calls is an explicit pytree, `{"memory": (B, layers, M, width), "next_segment": int,
"seed": int}`: segment i's noise comes from fold_in(seed, i), so generating 8 segments, saving the state
(`systems.malt.save_state`, orbax), restoring it and generating 8 more gives the 16 segments of one call.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.diffusion.samplers import sample, spacing_options
from t2v_jax.diffusion.schedules import add_noise
from t2v_jax.models.malt import MALTDiT
from t2v_jax.io.video import to_uint8
from t2v_jax.models.video_vae import vae_decode
from t2v_jax.pipelines.text_to_video import TextToVideoPipeline


class MALTPipeline(TextToVideoPipeline):
    """`generate(prompts)` gives `malt.num_segments` segments per prompt (the same caption for each);
    `generate_long(captions_ns, state=...)` one caption per segment, continuing from a state."""

    def program(self, phase: str, method=None, num_steps=None, **static):
        if phase == "generate_segments":
            return functools.partial(self._generate_segments, method=method, num_steps=num_steps)
        return super().program(phase, method=method, num_steps=num_steps, **static)

    def _generate_segments(self, params, ids_bsl, mask_bsl, memory_blmd, null_ids_l, null_mask_l, first_segment,
                           seed, guidance_scale, eta, *, method, num_steps):
        """(uint8 video (B, S * F, H, W, 3), memory (B, layers, M, width)) for S segments from `memory_blmd`."""
        model, malt = self.model, self.config.malt
        dit = model.dit
        batch = ids_bsl.shape[0]
        null_ids_bl = jnp.broadcast_to(null_ids_l, (batch,) + null_ids_l.shape)
        null_mask_bl = jnp.broadcast_to(null_mask_l, (batch,) + null_mask_l.shape)
        null_context_bld = model.encode_text({"text_encoder": params["text_encoder"]}, null_ids_bl, null_mask_bl)
        level_b = jnp.full((batch,), malt.memory_noise_level, jnp.int32)

        def denoise(x_bthwc, t_b, c):
            context_bld, context_mask_bl, memory_bl_md = c
            return dit.apply(params["dit"], x_bthwc, t_b, context_bld, context_mask_bl,
                             jnp.moveaxis(memory_bl_md, 1, 0))

        def segment_step(memory_blmd, inputs):
            ids_bl, mask_bl, index = inputs
            context_bld = model.encode_text({"text_encoder": params["text_encoder"]}, ids_bl, mask_bl)
            noise_rng, sample_rng, memory_rng = jax.random.split(jax.random.fold_in(seed, index), 3)
            noise = jax.random.normal(noise_rng, (batch, *self.latent_shape))
            latents = sample(denoise, model.schedule, noise, sample_rng, method=method, num_steps=num_steps,
                             prediction_type=self.config.diffusion.prediction_type,
                             cond=(context_bld, mask_bl, memory_blmd),
                             uncond=(null_context_bld, null_mask_bl, memory_blmd),
                             guidance_scale=guidance_scale, eta=eta, **spacing_options(self.config.sampling))
            noised = add_noise(model.schedule, latents, jax.random.normal(memory_rng, latents.shape), level_b)
            memory_lbmd = dit.apply(params["dit"], noised, level_b.astype(jnp.float32), context_bld, mask_bl,
                                    jnp.moveaxis(memory_blmd, 0, 1), method=MALTDiT.update_memory)
            video_bthwc = to_uint8(vae_decode(self.vae, params["vae"], latents))
            return jnp.moveaxis(memory_lbmd, 1, 0), video_bthwc

        indices_s = first_segment + jnp.arange(ids_bsl.shape[1])
        memory_blmd, videos_sbthwc = jax.lax.scan(
            segment_step, memory_blmd, (jnp.moveaxis(ids_bsl, 1, 0), jnp.moveaxis(mask_bsl, 1, 0), indices_s))
        videos_bsthwc = jnp.moveaxis(videos_sbthwc, 0, 1)
        return videos_bsthwc.reshape((batch, -1) + videos_bsthwc.shape[3:]), memory_blmd

    def initial_state(self, batch: int, seed: int = 0) -> dict:
        """The state before the first segment: the learned first memory."""
        memory_lbmd = self.model.dit.apply(self.dit_params, batch, method=MALTDiT.initial_memory)
        return {"memory": jnp.moveaxis(memory_lbmd, 0, 1), "next_segment": 0, "seed": seed}

    def generation_call(self, captions_ns, *, seed: int = 0, state: dict | None = None) -> tuple:
        """(run's positional arguments, its keywords, the state it starts from) for `generate_long`; errors
        name the argument before anything compiles."""
        captions_ns = [list(captions) for captions in captions_ns]
        if not captions_ns or not captions_ns[0]:
            raise ValueError("captions_ns: needs at least one video with at least one segment caption "
                             "(num_segments must be >= 1)")
        num_segments = len(captions_ns[0])
        lengths = sorted({len(captions) for captions in captions_ns})
        if lengths != [num_segments]:
            raise ValueError(f"captions_ns: every video needs one caption per segment, the same number for all; got "
                             f"lists of lengths {lengths}")
        batch = len(captions_ns)
        state = self.initial_state(batch, seed) if state is None else state
        if state["memory"].shape[0] != batch:
            raise ValueError(f"state: its memory holds {state['memory'].shape[0]} videos, captions_ns {batch}")
        ids_nl, mask_nl = self.tokenize([caption for captions in captions_ns for caption in captions])
        null_ids, null_mask = self.tokenize([self.config.sampling.negative_prompt])
        sampling = self.config.sampling
        args = ("generate_segments", {"text_encoder": self.text_encoder_params, "dit": self.dit_params,
                                      "vae": self.vae_params},
                (ids_nl.reshape(batch, num_segments, -1), mask_nl.reshape(batch, num_segments, -1), state["memory"]),
                (null_ids[0], null_mask[0], jnp.int32(state["next_segment"]), jax.random.PRNGKey(state["seed"]),
                 jnp.float32(sampling.guidance_scale), jnp.float32(sampling.eta)))
        return args, dict(count=batch, method=sampling.method, num_steps=sampling.num_steps), state

    def generate_long(self, captions_ns, *, seed: int = 0, state: dict | None = None):
        """(uint8 videos (N, S * F, H, W, 3), the state after them) for N lists of S segment captions,
        continuing `state` when given (its seed then wins)."""
        args, kwargs, state = self.generation_call(captions_ns, seed=seed, state=state)
        video, memory = self.run(*args, **kwargs)
        return np.asarray(jax.device_get(video)), {"memory": memory,
                                                   "next_segment": state["next_segment"] + len(captions_ns[0]),
                                                   "seed": state["seed"]}

    def generate(self, prompts, *, seed: int = 0) -> np.ndarray:
        """uint8 videos of `malt.num_segments` segments, each prompt the caption of all its segments."""
        return self.generate_long([[prompt] * self.config.malt.num_segments for prompt in prompts], seed=seed)[0]

    def sample_long_latents(self, structured_prompts, num_latent_frames: int, **kwargs):
        """Refused: MALT's denoiser reads a memory that SynCoS's chunks do not carry; its own long videos
        come segment by segment from `generate_long`, one caption per segment."""
        raise ValueError("SynCoS (sample_long_latents / generate_multi_prompt) needs a memory-free denoiser; "
                         "MALT makes long videos with generate_long(captions_ns), one caption per segment")
