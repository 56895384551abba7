"""Noise schedules: the per-timestep tables that losses and samplers share.

The variance-preserving kinds reimplement diffusers' ``DDPMScheduler`` formulas (betas built
in float64 and stored as float32, ``1 - betas`` in float32, the cumulative product accumulated
in float64 as torch does on CPU) so that weights trained there sample the same here.

``flow`` is rectified flow, x_s = (1 - s) x0 + s eps with s in [0, 1]. Its table holds the
variance-preserving schedule with the same signal-to-noise ratio on the grid s = t / N, so
SNR-based code reads it like any other kind; losses and samplers switch to the flow
interpolation itself when ``prediction_type == "flow"``.

Model time ``t`` is always in [0, N) with N = num_train_steps: integer timesteps index the
table (DDPM, DDIM), float timesteps interpolate sigma linearly between entries as diffusers'
Euler schedulers do, and t < 0 denotes the clean end (alphas_cumprod = 1, sigma = 0).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine", "flow")
PREDICTION_TYPES = ("eps", "v", "x0", "flow")


class Schedule(NamedTuple):
    """Float32 tables of length num_train_steps; a pytree, so it passes through jit."""

    betas: jax.Array
    alphas_cumprod: jax.Array
    sigmas: jax.Array  # sqrt((1 - alphas_cumprod) / alphas_cumprod): Karras/Euler noise level


def _cosine_betas(n: int) -> np.ndarray:
    """Nichol & Dhariwal's squaredcos_cap_v2, betas capped at 0.999 so the last step stays finite."""

    def alpha_bar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)])


def _flow_tables(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rectified flow on s = i / n as a VP table: SNR ((1 - s) / s)^2, so sigma = s / (1 - s).

    Built in float64 from s itself, since near s = 0 a float32 cumulative product would lose sigma.
    """
    s = np.arange(n, dtype=np.float64) / n
    alphas_cumprod = (1 - s) ** 2 / ((1 - s) ** 2 + s**2)
    betas = 1 - alphas_cumprod / np.concatenate([[1.0], alphas_cumprod[:-1]])
    return betas, alphas_cumprod, s / (1 - s)


def shift_snr(alphas_cumprod, snr_shift: float) -> np.ndarray:
    """The same table with every signal-to-noise ratio divided by snr_shift**2 (float64).

    Hoogeboom et al.'s shifted schedules ("simple diffusion", 2023) and SD3's timestep shift are this
    map: redundant data (large images, or video whose frames repeat one another) keeps its content
    readable at noise levels that would erase a single small image, so the unshifted schedule spends
    most of training where the noisy input already shows what the caption should decide.
    """
    acp = np.asarray(alphas_cumprod, np.float64)
    return acp / (acp + snr_shift**2 * (1 - acp))


def make_schedule(kind="linear", num_train_steps=1000, beta_start=1e-4, beta_end=0.02,
                  snr_shift=1.0) -> Schedule:
    """Builds a schedule; defaults are Allegro/LaVie's (Stable Diffusion: scaled_linear, 0.00085, 0.012).

    snr_shift != 1 (variance-preserving kinds only) divides every SNR by snr_shift**2; see shift_snr.
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"schedule kind {kind!r} is not one of {SCHEDULE_KINDS}")
    if num_train_steps < 2:
        raise ValueError(f"num_train_steps must be at least 2, got {num_train_steps}")
    if snr_shift <= 0 or (kind == "flow" and snr_shift != 1):
        raise ValueError(f"snr_shift must be positive, and 1 for the flow schedule; got {snr_shift} for {kind!r}")
    if kind == "flow":
        betas, alphas_cumprod, sigmas = _flow_tables(num_train_steps)
        return Schedule(*(jnp.asarray(a, jnp.float32) for a in (betas, alphas_cumprod, sigmas)))
    if kind == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_steps, dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_steps, dtype=np.float64) ** 2
    else:
        betas = _cosine_betas(num_train_steps)
    betas = betas.astype(np.float32)
    alphas_cumprod = np.cumprod((np.float32(1) - betas).astype(np.float64)).astype(np.float32)
    if snr_shift != 1:
        shifted = shift_snr(alphas_cumprod, snr_shift)
        betas = (1 - shifted / np.concatenate([[1.0], shifted[:-1]])).astype(np.float32)
        alphas_cumprod = shifted.astype(np.float32)
    acp = alphas_cumprod.astype(np.float64)
    sigmas = np.sqrt((1 - acp) / acp).astype(np.float32)
    return Schedule(jnp.asarray(betas), jnp.asarray(alphas_cumprod), jnp.asarray(sigmas))


def num_train_steps(schedule: Schedule) -> int:
    """N, static under jit because it is a shape."""
    return schedule.betas.shape[0]


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")


def _is_integer(t) -> bool:
    return jnp.issubdtype(jnp.asarray(t).dtype, jnp.integer)


def sigma_at(schedule: Schedule, t) -> jax.Array:
    """Karras sigma at model time t (integer: table entry; float: linear interpolation; t < 0: 0)."""
    t = jnp.asarray(t)
    n = num_train_steps(schedule)
    if _is_integer(t):
        sigma = schedule.sigmas[jnp.clip(t, 0, n - 1)]
    else:
        sigma = jnp.interp(t, jnp.arange(n, dtype=jnp.float32), schedule.sigmas)
    return jnp.where(t < 0, 0.0, sigma)


def alphas_cumprod_at(schedule: Schedule, t) -> jax.Array:
    """alphas_cumprod at model time t; t < 0 gives 1 (DDIM's set_alpha_to_one: the last step lands on x0)."""
    t = jnp.asarray(t)
    if _is_integer(t):
        acp = schedule.alphas_cumprod[jnp.clip(t, 0, num_train_steps(schedule) - 1)]
        return jnp.where(t < 0, 1.0, acp)
    return 1 / (1 + sigma_at(schedule, t) ** 2)


def signal_noise(schedule: Schedule, t, *, flow=False) -> tuple[jax.Array, jax.Array]:
    """(alpha_t, sigma_t) with x_t = alpha_t x0 + sigma_t eps, for the model time t the denoiser sees.

    flow=True is rectified flow (alpha, sigma) = (1 - s, s) with s = t / N. Float t goes through the
    Karras sigma so that small noise levels keep their precision.
    """
    t = jnp.asarray(t)
    if flow:
        s = t.astype(jnp.float32) / num_train_steps(schedule)
        return 1 - s, s
    if _is_integer(t):
        acp = alphas_cumprod_at(schedule, t)
        return jnp.sqrt(acp), jnp.sqrt(1 - acp)
    sigma = sigma_at(schedule, t)
    alpha = jax.lax.rsqrt(1 + sigma**2)
    return alpha, sigma * alpha


def add_noise(schedule: Schedule, x0, noise, t, *, flow=False) -> jax.Array:
    """x_t = alpha_t x0 + sigma_t noise for per-example times t (B,): the forward process, as diffusers'
    `scheduler.add_noise`. Also how a cascade's super-resolution stage noise-augments its low-resolution
    input at a fixed level (Stable Diffusion's x4 upscaler, LaVie's VSR)."""
    alpha_b, sigma_b = signal_noise(schedule, t, flow=flow)
    x0 = jnp.asarray(x0, jnp.float32)
    return expand_like(alpha_b, x0) * x0 + expand_like(sigma_b, x0) * noise


def expand_like(c, x) -> jax.Array:
    """Appends unit axes to a scalar or per-example coefficient so it broadcasts against x."""
    c = jnp.asarray(c)
    return jnp.reshape(c, c.shape + (1,) * (x.ndim - c.ndim))
