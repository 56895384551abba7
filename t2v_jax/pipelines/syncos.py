"""SynCoS (Kim et al. 2025): a long, multi-prompt video from any base model's denoiser, one `lax.scan` over steps.

The long latent (B, T, h, w, c) is cut into overlapping chunks of the base model's native length
(`chunk_frames`, starting every `stride` frames, the last one aligned to the end); every step denoises all
chunks in ONE denoiser call with chunks x videos on the batch axis (chunk-major), so the mesh's data axes
shard them, and fuses chunk results back by overlap averaging. Three modes share that code:

- ``independent`` (the floor): each chunk keeps its own trajectory from its crop of the long initial noise,
  nothing is fused while sampling; at the end each frame is taken from the one chunk whose centre is nearest
  (the earlier chunk on a tie), so the video cuts at the middle of each overlap. With stride == chunk_frames
  the chunks lie end to end and this is plain per-chunk sampling; with the other modes' stride it compares
  like with like (same chunks, same prompts, same noise).
- ``co_denoise`` (Gen-L-Video, Wang et al. 2023): each chunk takes a DDIM step and the chunks' x_{t-1} are
  averaged where they overlap.
- ``syncos``: (1) temporal co-denoising fuses the chunks' predicted x0 (and eps, with the same weights);
  (2) while t > t_min, CSD refinement of the fused x0: each chunk is re-noised at the current t (the
  grounded timestep) with one baseline noise eps_base drawn once per run, the chunks are SVGD particles, and
  `csd_iterations` optax steps follow the fused score-distillation gradient; (3) the synchronised step goes
  from the refined x0 to t_prev with eps_base as the noise direction (DDIM eta = 0; for flow prediction
  the Euler step from the sample that x0 and eps_base make at t, which lands on the same interpolation).
  At steps with t <= t_min there is nothing to synchronise with, so the step uses the fused eps: with one
  chunk and t_min above every t, `syncos` and `co_denoise` are exactly `samplers.sample(method="ddim")`
  (for deterministic DDIM with a shared x_t, fusing x0 and fusing x_{t-1} agree; SynCoS differs by (2)
  and (3)).

Sources. The paper (arXiv 2503.08605) has no public code (github.com/subin-kim-cv/SynCoS holds a README);
from it: the three stages, the grounded timestep, the fixed baseline noise, t_min in [800, 900] of 1000,
global + local structured prompts. From the first author's CSD code (github.com/subin-kim-cv/CSD,
csdedit.py, `rbf_kernel` and `edit_image`): the RBF kernel on the flattened NOISY latents with the
median heuristic over all N x N squared distances (h = sqrt(0.5 med / log(N + 1)), so gamma = 1 / (2 h^2)
= log(N + 1) / med); the update w_t (K g + dK) / N with g = eps_pred - eps, dK_i = sum_j -2 gamma K_ij
(x_i - x_j) and w_t = 1 - alphas_cumprod[t], a gradient that the optimiser DESCENDS (so the kernel term
repels); the per-view gradients averaged back by overlap counts before the step. One departure: the
median is numpy's (the mean of the two middle values, as Liu & Wang's SVGD reference code takes it), not
torch.median's lower middle value, which is 0 for two particles (a 2x-long video) and makes gamma infinite;
and gamma is 0 where every distance is 0 (one chunk), where the kernel is 1 and the update is g itself.

Units: chunk_frames, stride and the structured prompt's ranges are LATENT frames, the sampler's only unit, and
the pipelines take them so too (`TextToVideoPipeline.sample_long_latents`): nothing to round, and a video of L
latent frames decodes to L x the VAE's temporal compression frames.
"""

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from t2v_jax.checks import one_of, require
from t2v_jax.diffusion.samplers import (
    ddim_step,
    flow_euler_step,
    guided_predictor,
    spacing_options,
    timesteps,
    to_x0_eps,
)
from t2v_jax.diffusion.schedules import add_noise, alphas_cumprod_at, check_prediction_type
from t2v_jax.models.video_vae import tile_starts

MODES = ("independent", "co_denoise", "syncos")
CSD_OPTIMIZERS = ("adam", "sgd")


def syncos_config(**overrides) -> ml_collections.ConfigDict:
    """config.syncos with every field the sampler reads, `overrides` applied.

    chunk_frames must be the base model's native latent frames and stride at most that. t_min = 850 is the
    middle of the paper's range (800-900); with 2 CSD iterations over the steps above it (4 of a 25-step
    trailing grid) SynCoS costs about 1 + 0.16 * 2 = 1.3x co-denoising's denoiser calls. At t_min = 800 (5 of
    25 steps) it measured 1.53x on the CPU, past the issue's 1.5x. The spacing fields of
    `samplers.sampling_config` (timestep_spacing, steps_offset, set_alpha_to_one) are read when present, so a
    base model that samples with "leading" spacing (LaVie) can set them here too.
    """
    config = ml_collections.ConfigDict(dict(
        mode="syncos", chunk_frames=8, stride=4, num_steps=50, guidance_scale=4.0,
        t_min=850, csd_iterations=2, csd_learning_rate=0.05, csd_optimizer="adam"))
    config.update(overrides)
    return config


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_chunking(num_frames, chunk_frames, stride, field) -> None:
    require(_is_int(chunk_frames) and chunk_frames >= 1, f"{field}.chunk_frames",
            f"must be a positive integer (the base model's native latent frames), got {chunk_frames!r}")
    require(chunk_frames <= num_frames, f"{field}.chunk_frames",
            f"{chunk_frames} is longer than the video's {num_frames} latent frames")
    require(_is_int(stride) and stride >= 1, f"{field}.stride", f"must be an integer >= 1, got {stride!r}")
    require(stride <= chunk_frames, f"{field}.stride",
            f"{stride} is larger than the chunk ({field}.chunk_frames={chunk_frames}): the frames between "
            "chunks would belong to none")


def validate_syncos_config(config, num_frames: int, field: str = "syncos") -> None:
    """The syncos section against the long video's latent frame count, as ConfigErrors naming the field;
    `syncos_sample` calls it before tracing anything, a system's config checks may call it earlier."""
    one_of(config.mode, f"{field}.mode", MODES)
    _check_chunking(num_frames, config.chunk_frames, config.stride, field)
    require(_is_int(config.num_steps) and config.num_steps >= 1, f"{field}.num_steps",
            f"must be a positive integer, got {config.num_steps!r}")
    require(isinstance(config.t_min, numbers.Real), f"{field}.t_min",
            f"must be a model time (CSD refines while t > t_min; the paper: 800-900 of 1000), got {config.t_min!r}")
    require(_is_int(config.csd_iterations) and config.csd_iterations >= 0, f"{field}.csd_iterations",
            f"must be a non-negative integer, got {config.csd_iterations!r}")
    require(config.csd_learning_rate > 0, f"{field}.csd_learning_rate",
            f"must be positive, got {config.csd_learning_rate}")
    one_of(config.csd_optimizer, f"{field}.csd_optimizer", CSD_OPTIMIZERS)


def chunk_starts(num_frames: int, chunk_frames: int, stride: int) -> tuple[int, ...]:
    """First latent frame of each chunk: every `stride`, the last chunk aligned to the end (the VAE's tiling)."""
    _check_chunking(num_frames, chunk_frames, stride, "syncos")
    return tile_starts(num_frames, chunk_frames, chunk_frames - stride)


def chunk_indices(num_frames: int, chunk_frames: int, stride: int) -> np.ndarray:
    """(num_chunks, chunk_frames) int32: the long video's frame index of each chunk frame (static)."""
    starts_n = np.asarray(chunk_starts(num_frames, chunk_frames, stride), np.int32)
    return starts_n[:, None] + np.arange(chunk_frames, dtype=np.int32)[None]


def owner_weights(index_nf: np.ndarray) -> np.ndarray:
    """(num_chunks, chunk_frames) float32, 1 where the chunk owns that frame: the chunk whose centre is
    nearest (the earlier on a tie). `independent` mode's hand-over: every frame from one trajectory."""
    num_chunks, chunk_frames = index_nf.shape
    centres_n = index_nf[:, 0] + (chunk_frames - 1) / 2
    owner_t = np.argmin(np.abs(np.arange(index_nf.max() + 1)[:, None] - centres_n[None]), axis=1)
    return (owner_t[index_nf] == np.arange(num_chunks)[:, None]).astype(np.float32)


def split_chunks(x_bthwc, index_nf):
    """(B, T, h, w, c) -> (num_chunks, B, chunk_frames, h, w, c)."""
    return jnp.swapaxes(x_bthwc[:, index_nf], 0, 1)


def merge_chunks(x_nbfhwc, index_nf, num_frames, weights_nf=None):
    """(num_chunks, B, chunk_frames, h, w, c) -> (B, T, h, w, c): each frame the weighted mean of the chunks
    that hold it; weights_nf None is overlap averaging (weight 1, divided by the overlap count)."""
    weights_nf = np.ones(index_nf.shape, np.float32) if weights_nf is None else np.asarray(weights_nf, np.float32)
    total_t = np.zeros(num_frames, np.float32)
    np.add.at(total_t, index_nf, weights_nf)
    x_bnfhwc = jnp.swapaxes(x_nbfhwc, 0, 1) * weights_nf[None, :, :, None, None, None]
    summed_bthwc = jnp.zeros((x_bnfhwc.shape[0], num_frames, *x_bnfhwc.shape[3:]), x_bnfhwc.dtype)
    summed_bthwc = summed_bthwc.at[:, index_nf].add(x_bnfhwc)
    return summed_bthwc / total_t[None, :, None, None, None]


def svgd_direction(particles_nd, grads_nd):
    """CSD's Stein variational update for N particles of D values, a direction to DESCEND:
    (sum_j K_ji g_j + sum_j -2 gamma K_ij (x_i - x_j)) / N with K_ij = exp(-gamma |x_i - x_j|^2) and
    gamma = log(N + 1) / median of the N x N squared distances (module docstring). The distances go row by
    row (`lax.map`), exact and without an N x N x D array; no Gram trick, which cancels in float32."""
    n = particles_nd.shape[0]
    d2_nn = jax.lax.map(lambda x_d: jnp.sum(jnp.square(particles_nd - x_d), axis=-1), particles_nd)
    median = jnp.median(d2_nn)
    gamma = jnp.where(median > 0, jnp.log(n + 1.0) / jnp.where(median > 0, median, 1.0), 0.0)
    k_nn = jnp.exp(-gamma * d2_nn)
    highest = jax.lax.Precision.HIGHEST
    driving_nd = jnp.matmul(k_nn.T, grads_nd, precision=highest)
    kernel_grad_nd = -2 * gamma * (jnp.sum(k_nn, axis=1)[:, None] * particles_nd
                                   - jnp.matmul(k_nn, particles_nd, precision=highest))
    return (driving_nd + kernel_grad_nd) / n


@dataclasses.dataclass(frozen=True)
class StructuredPrompt:
    """One global prompt (what stays: the subject, its look) and local prompts (text, start, end) over
    [start, end) in LATENT frames, in time order, covering the video without gap or overlap.

    A chunk's text is global + separator + the local prompt that covers most of the chunk (the earlier on a
    tie); the default separator " " joins "a red 3" and "moving left" into Bouncing Digits' own caption.
    """

    global_prompt: str
    local: tuple
    separator: str = " "

    def __post_init__(self):
        object.__setattr__(self, "local", tuple(tuple(item) for item in self.local))

    @classmethod
    def from_segments(cls, global_prompt: str, segment_prompts, segment_latent_frames: int) -> "StructuredPrompt":
        """One local prompt per segment of `segment_latent_frames` latent frames, in order."""
        return cls(global_prompt, tuple((text, i * segment_latent_frames, (i + 1) * segment_latent_frames)
                                        for i, text in enumerate(segment_prompts)))

    def validate(self, num_frames: int) -> None:
        """Raises ValueError naming the field: empty prompts, malformed or out-of-range ranges, gaps, overlaps."""
        def fail(field, message):
            raise ValueError(f"StructuredPrompt.{field}: {message}")

        if not isinstance(self.global_prompt, str) or not self.global_prompt.strip():
            fail("global_prompt", f"must be a non-empty string, got {self.global_prompt!r}")
        if not self.local:
            fail("local", "is empty; give (text, start, end) ranges that cover the video")
        covered = 0
        for i, item in enumerate(self.local):
            if len(item) != 3:
                fail(f"local[{i}]", f"must be (text, start, end), got {item!r}")
            text, start, end = item
            if not isinstance(text, str) or not text.strip():
                fail(f"local[{i}].text", f"must be a non-empty string, got {text!r}")
            for name, value in (("start", start), ("end", end)):
                if not _is_int(value) or not 0 <= value <= num_frames:
                    fail(f"local[{i}].{name}", f"{value!r} is outside the video's [0, {num_frames}] latent frames")
            if end <= start:
                fail(f"local[{i}].end", f"{end} must be after start {start}: the range is empty")
            if start > covered:
                fail(f"local[{i}].start", f"{start} leaves latent frames [{covered}, {start}) without a local "
                     "prompt (a gap)")
            if start < covered:
                fail(f"local[{i}].start", f"{start} overlaps the previous range, which ends at {covered}; "
                     "ranges are [start, end) in time order")
            covered = end
        if covered != num_frames:
            fail(f"local[{len(self.local) - 1}].end", f"{covered} leaves latent frames [{covered}, {num_frames}) "
                 "without a local prompt (a gap)")

    def chunk_texts(self, num_frames: int, chunk_frames: int, stride: int) -> tuple[str, ...]:
        """The text of each chunk of `chunk_starts(num_frames, chunk_frames, stride)`, after validating."""
        self.validate(num_frames)
        texts = []
        for start in chunk_starts(num_frames, chunk_frames, stride):
            end = start + chunk_frames
            overlaps = [max(0, min(end, e) - max(start, s)) for _, s, e in self.local]
            texts.append(f"{self.global_prompt}{self.separator}{self.local[int(np.argmax(overlaps))][0]}")
        return tuple(texts)


def _check_conditions(cond_chunks, uncond, num_chunks, batch) -> None:
    for leaf in jax.tree.leaves(cond_chunks):
        if tuple(leaf.shape[:2]) != (num_chunks, batch):
            raise ValueError(f"cond_chunks: every leaf must lead with (chunks, videos) = ({num_chunks}, {batch}), "
                             f"one condition per chunk of each video; got shape {tuple(leaf.shape)}")
    for leaf in jax.tree.leaves(uncond):
        if leaf.shape[0] != batch:
            raise ValueError(f"uncond: every leaf must lead with the {batch} videos; got shape {tuple(leaf.shape)}")


def _chunk_denoiser(denoise_fn, schedule, cond_chunks, uncond, guidance_scale, prediction_type, num_chunks, batch):
    """(x_nbfhwc, t) -> (x0, eps) of every chunk from one guided denoiser call on (num_chunks * B) examples."""
    def flat(leaf):
        return leaf.reshape(num_chunks * batch, *leaf.shape[2:])

    cond = jax.tree.map(flat, cond_chunks)
    uncond_nb = None if uncond is None else jax.tree.map(
        lambda leaf: flat(jnp.broadcast_to(leaf, (num_chunks, *leaf.shape))), uncond)
    predict = guided_predictor(denoise_fn, cond, uncond_nb, guidance_scale)

    def x0_eps(x_nbfhwc, t):
        x = flat(x_nbfhwc)
        x0, eps = to_x0_eps(predict(x, jnp.full((x.shape[0],), t)), x, t, schedule, prediction_type)
        return x0.reshape(x_nbfhwc.shape), eps.reshape(x_nbfhwc.shape)

    return x0_eps


def syncos_sample(denoise_fn, schedule, noise_bthwc, cond_chunks, uncond, *, config, prediction_type, rng,
                  guidance_scale=None):
    """A long video's latents (B, T, h, w, c) from standard-normal `noise_bthwc`, in one jax.lax.scan over
    the steps of deterministic DDIM (flow prediction: flow Euler), grid and spacing as `samplers.sample`.

    denoise_fn(x, t_b, cond) -> prediction of `prediction_type` ("eps", "v", "x0" or "flow"), the interface
    `samplers.sample` drives. cond_chunks: a pytree whose leaves lead with (num_chunks, B), e.g. the encoded
    `StructuredPrompt.chunk_texts` of each video stacked on axis 1; uncond: leaves leading with B (the
    negative prompt), or None for no guidance. config: `syncos_config()`; guidance_scale (may be traced)
    replaces config.guidance_scale. rng draws eps_base (`jax.random.normal(rng, noise_bthwc.shape)`), used
    by the `syncos` mode only. Everything is checked before anything is traced; jit this with denoise_fn,
    config and prediction_type closed over.
    """
    check_prediction_type(prediction_type)
    if noise_bthwc.ndim != 5:
        raise ValueError(f"noise_bthwc must be (B, T, h, w, c); got shape {tuple(noise_bthwc.shape)}")
    batch, num_frames = noise_bthwc.shape[:2]
    validate_syncos_config(config, num_frames)
    index_nf = chunk_indices(num_frames, config.chunk_frames, config.stride)
    num_chunks = index_nf.shape[0]
    _check_conditions(cond_chunks, uncond, num_chunks, batch)
    flow = prediction_type == "flow"
    t_n, t_prev_n = timesteps("flow_euler" if flow else "ddim", config.num_steps, schedule,
                              **spacing_options(config))
    step = functools.partial(flow_euler_step if flow else functools.partial(ddim_step, eta=0.0), schedule=schedule)
    x0_eps = _chunk_denoiser(denoise_fn, schedule, cond_chunks, uncond,
                             config.guidance_scale if guidance_scale is None else guidance_scale,
                             prediction_type, num_chunks, batch)
    split = functools.partial(split_chunks, index_nf=index_nf)
    merge = functools.partial(merge_chunks, index_nf=index_nf, num_frames=num_frames)
    dtype = noise_bthwc.dtype

    if config.mode == "independent":
        def independent_step(x_nbfhwc, times):
            t, t_prev = times
            x0, eps = x0_eps(x_nbfhwc, t)
            return step(x_nbfhwc, x0, eps, t, t_prev).astype(dtype), None

        x_nbfhwc, _ = jax.lax.scan(independent_step, split(noise_bthwc), (t_n, t_prev_n))
        return merge(x_nbfhwc, weights_nf=owner_weights(index_nf)).astype(dtype)

    if config.mode == "co_denoise":
        def co_denoise_step(x_bthwc, times):
            t, t_prev = times
            x_nbfhwc = split(x_bthwc)
            x0, eps = x0_eps(x_nbfhwc, t)
            return merge(step(x_nbfhwc, x0, eps, t, t_prev)).astype(dtype), None

        x_bthwc, _ = jax.lax.scan(co_denoise_step, noise_bthwc, (t_n, t_prev_n))
        return x_bthwc

    eps_base_bthwc = jax.random.normal(rng, noise_bthwc.shape, dtype)
    eps_base_nbfhwc = split(eps_base_bthwc)
    optimizer = (optax.adam if config.csd_optimizer == "adam" else optax.sgd)(config.csd_learning_rate)

    def renoise(x0_bthwc, eps_bthwc, t):
        return add_noise(schedule, x0_bthwc, eps_bthwc, jnp.full((batch,), t), flow=flow)

    def to_particles(a_nbfhwc):
        return jnp.swapaxes(a_nbfhwc.reshape(num_chunks, batch, -1), 0, 1)

    def csd_gradient(x0_bthwc, t):
        """w(t) * SVGD over the chunks of (eps_pred - eps_base) at the re-noised chunks, overlap-averaged."""
        x_t_nbfhwc = split(renoise(x0_bthwc, eps_base_bthwc, t))
        _, eps_nbfhwc = x0_eps(x_t_nbfhwc, t)
        phi_bnd = jax.vmap(svgd_direction)(to_particles(x_t_nbfhwc), to_particles(eps_nbfhwc - eps_base_nbfhwc))
        return (1 - alphas_cumprod_at(schedule, t)) * merge(jnp.swapaxes(phi_bnd, 0, 1).reshape(x_t_nbfhwc.shape))

    def refine(x0_bthwc, t, num_iterations):
        def iteration(_, carry):
            x0, opt_state = carry
            updates, opt_state = optimizer.update(csd_gradient(x0, t), opt_state, x0)
            return optax.apply_updates(x0, updates), opt_state

        return jax.lax.fori_loop(0, num_iterations, iteration, (x0_bthwc, optimizer.init(x0_bthwc)))[0]

    def syncos_step(x_bthwc, times):
        t, t_prev = times
        x0_nbfhwc, eps_nbfhwc = x0_eps(split(x_bthwc), t)
        x0_bthwc, eps_bthwc = merge(x0_nbfhwc), merge(eps_nbfhwc)
        synchronise = t > config.t_min
        x0_bthwc = refine(x0_bthwc, t, jnp.where(synchronise, config.csd_iterations, 0))
        x_from = jnp.where(synchronise, renoise(x0_bthwc, eps_base_bthwc, t), x_bthwc)
        eps_bthwc = jnp.where(synchronise, eps_base_bthwc, eps_bthwc)
        return step(x_from, x0_bthwc, eps_bthwc, t, t_prev).astype(dtype), None

    x_bthwc, _ = jax.lax.scan(syncos_step, noise_bthwc, (t_n, t_prev_n))
    return x_bthwc
