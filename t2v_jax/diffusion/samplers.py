"""Samplers as pure functions: one jax.lax.scan per sampling run, classifier-free guidance inside it.

Conventions (chosen once, here):
- ddpm / ddim default to "trailing" timestep spacing (Lin et al. 2023; diffusers ``timestep_spacing=
  "trailing"``): round(arange(N, 0, -N / K)) - 1, so the first step is at t = N - 1 where the
  training noise level is, and each step goes to the next entry of that list rather than to
  t - N // K, which is the same when K divides N and stays on the list when it does not.
- The Stable Diffusion family's settings, which released checkpoints such as LaVie's sample with, are
  the sampling config's `timestep_spacing`, `steps_offset` and `set_alpha_to_one` (ddpm / ddim only),
  read as diffusers' DDPMScheduler and DDIMScheduler read them: "leading" is arange(K) * (N // K)
  reversed plus `steps_offset`, "linspace" is round(linspace(0, N - 1, K)) reversed. ddpm steps to
  the next entry; ddim with these two steps from t to t - N // K as diffusers' DDIM does (off the
  list for "linspace").
- The last ddpm / ddim step goes to t_prev = -1 with alphas_cumprod = 1 (diffusers'
  ``set_alpha_to_one=True``), so the output is the final x0 prediction; ddim with
  `set_alpha_to_one=False` ends at t_prev = 0 instead, alphas_cumprod[0], as Stable Diffusion does.
- euler_ancestral follows diffusers' ``EulerAncestralDiscreteScheduler`` with its default
  "linspace" spacing (Allegro's setting): float t = linspace(N - 1, 0, K), sigma interpolated
  linearly, a final sigma of 0, initial noise scaled by sigma_max and the model input by
  1 / sqrt(sigma^2 + 1).
- flow_euler integrates rectified flow from s = 1 to 0 on a uniform grid of K steps; the model
  sees t = s * N, so t = N at the first step.
- The state x_t of ddpm / ddim is the variance-preserving sample, of euler_ancestral the Karras
  sample x0 + sigma eps, of flow_euler the flow sample (1 - s) x0 + s eps.

Every step shares the signature ``step(x_t, x0, eps, t, t_prev, schedule, *, noise)`` (ddim adds
eta), with (x0, eps) from ``to_x0_eps``, so SynCoS and MALT can predict x0, change it, and step
from it with a noise they choose.
"""

import functools
import numbers

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2v_jax.checks import one_of, require
from t2v_jax.diffusion.schedules import (
    PREDICTION_TYPES,
    SCHEDULE_KINDS,
    alphas_cumprod_at,
    check_prediction_type,
    expand_like,
    num_train_steps,
    sigma_at,
    signal_noise,
)

SAMPLERS = ("ddpm", "ddim", "euler_ancestral", "flow_euler")
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
_DEFAULT_SPACING = dict(timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True)


def sampling_config(**overrides) -> ml_collections.ConfigDict:
    """config.sampling with every field a latent system reads, `overrides` applied.

    method, num_steps, guidance_scale, eta (ddim only), negative_prompt; timestep_spacing, steps_offset
    and set_alpha_to_one as described in this module's docstring.
    """
    config = ml_collections.ConfigDict(dict(method="ddim", num_steps=50, guidance_scale=4.0, eta=0.0,
                                            negative_prompt="", **_DEFAULT_SPACING))
    config.update(overrides)
    return config


def spacing_options(sampling_cfg) -> dict:
    """The timestep-spacing keyword arguments of `timesteps` and `sample` that `sampling_cfg` sets
    (configs written before these fields existed get the defaults)."""
    return {key: sampling_cfg.get(key, default) for key, default in _DEFAULT_SPACING.items()}


def validate_config(config, sampling_field: str = "sampling") -> None:
    """config.diffusion (schedule, target, weighting) and the sampling section at `sampling_field` (a
    cascade stage has its own, e.g. "interpolation.sampling") against each other."""
    diff = config.diffusion
    samp = config
    for key in sampling_field.split("."):
        samp = samp[key]
    one_of(diff.schedule, "diffusion.schedule", SCHEDULE_KINDS)
    one_of(diff.prediction_type, "diffusion.prediction_type", PREDICTION_TYPES)
    one_of(samp.method, f"{sampling_field}.method", SAMPLERS)
    require(0 < samp.num_steps <= diff.num_train_steps, f"{sampling_field}.num_steps",
            f"must be in [1, diffusion.num_train_steps={diff.num_train_steps}], got {samp.num_steps}")
    is_flow = diff.schedule == "flow"
    require(is_flow == (diff.prediction_type == "flow"), "diffusion.prediction_type",
            f"{diff.prediction_type!r} does not fit schedule {diff.schedule!r}: the flow schedule "
            "trains 'flow' targets and the others 'eps', 'v' or 'x0'")
    require(is_flow == (samp.method == "flow_euler"), f"{sampling_field}.method",
            f"{samp.method!r} does not fit schedule {diff.schedule!r}: use 'flow_euler' with 'flow' "
            "and ddpm/ddim/euler_ancestral otherwise")
    snr_shift = diff.get("snr_shift", 1.0)
    require(snr_shift > 0 and not (is_flow and snr_shift != 1), "diffusion.snr_shift",
            f"must be positive (SNRs are divided by its square), and 1 for the flow schedule; got {snr_shift}")
    require(not (is_flow and diff.min_snr_gamma), "diffusion.min_snr_gamma",
            "min-SNR weighting is defined for eps, v and x0 targets; set it to None for the flow schedule")
    _check_spacing(samp.method, samp.num_steps, diff.num_train_steps, sampling_field, **spacing_options(samp))


def _check_spacing(method, num_steps, n, field, *, timestep_spacing, steps_offset, set_alpha_to_one) -> None:
    """The spacing fields against the sampler and the step counts, as ConfigErrors naming the field."""
    one_of(timestep_spacing, f"{field}.timestep_spacing", TIMESTEP_SPACINGS)
    discrete = method in ("ddpm", "ddim")
    require(discrete or timestep_spacing == "trailing", f"{field}.timestep_spacing",
            f"{timestep_spacing!r} applies to ddpm and ddim; {method!r} has its own grid, leave it 'trailing'")
    require(isinstance(steps_offset, int) and steps_offset >= 0, f"{field}.steps_offset",
            f"must be a non-negative integer, got {steps_offset!r}")
    require(steps_offset == 0 or timestep_spacing == "leading", f"{field}.steps_offset",
            f"shifts 'leading' timesteps only (diffusers ignores it otherwise); got {steps_offset} with "
            f"{field}.timestep_spacing={timestep_spacing!r}")
    if timestep_spacing == "leading":
        # Below N // K, the first step stays at or below N - 1 and the last one steps past 0 to the end.
        require(steps_offset < n // num_steps, f"{field}.steps_offset",
                f"{steps_offset} must be below N // K = {n // num_steps} (N = diffusion.num_train_steps = {n}, "
                f"K = {field}.num_steps = {num_steps}) so that the last step ends the run")
    require(set_alpha_to_one or method == "ddim", f"{field}.set_alpha_to_one",
            f"False is DDIM's final-step rule; {method!r} always ends at alphas_cumprod = 1")


def _check(method, prediction_type):
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; allowed: {SAMPLERS}")
    check_prediction_type(prediction_type)
    if (method == "flow_euler") != (prediction_type == "flow"):
        raise ValueError(
            f"sampler {method!r} does not fit prediction_type {prediction_type!r}: "
            "'flow_euler' needs prediction_type 'flow' and 'flow' needs 'flow_euler'"
        )


def timesteps(method, num_steps, schedule, *, timestep_spacing="trailing", steps_offset=0,
              set_alpha_to_one=True) -> tuple[jax.Array, jax.Array]:
    """(t_n, t_prev_n), each (num_steps,): the model time of each step and the time it steps to.

    int32 for ddpm / ddim (t_prev ends at -1: alphas_cumprod = 1, or at 0 for ddim without
    set_alpha_to_one); float32 for euler_ancestral (t_prev ends at -1: sigma = 0) and flow_euler
    (t = s * N, from N down to 0). The spacing arguments are the sampling config's fields of the same
    names (module docstring).
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; allowed: {SAMPLERS}")
    n = num_train_steps(schedule)
    if not 1 <= num_steps <= n:
        raise ValueError(f"num_steps must be in [1, {n}], got {num_steps}")
    _check_spacing(method, num_steps, n, "sampling", timestep_spacing=timestep_spacing, steps_offset=steps_offset,
                   set_alpha_to_one=set_alpha_to_one)
    final = -1 if set_alpha_to_one else 0
    if method in ("ddpm", "ddim"):
        if timestep_spacing == "trailing":
            t = np.round(n - np.arange(num_steps) * (n / num_steps)) - 1
        elif timestep_spacing == "leading":
            t = (np.arange(num_steps) * (n // num_steps))[::-1] + steps_offset
        else:
            t = np.round(np.linspace(0, n - 1, num_steps))[::-1]
        t = t.astype(np.int32)
        if method == "ddim" and timestep_spacing != "trailing":
            t_prev = np.where(t - n // num_steps < 0, final, t - n // num_steps).astype(np.int32)
        else:
            t_prev = np.append(t[1:], np.int32(final))
    elif method == "euler_ancestral":
        t = np.linspace(0, n - 1, num_steps, dtype=np.float32)[::-1]
        t_prev = np.append(t[1:], np.float32(-1))
    else:
        grid = np.linspace(n, 0, num_steps + 1, dtype=np.float32)
        t, t_prev = grid[:-1], grid[1:]
    return jnp.asarray(t), jnp.asarray(t_prev)


def to_x0_eps(pred, x_t, t, schedule, prediction_type) -> tuple[jax.Array, jax.Array]:
    """Turns any prediction into (x0, eps) for the variance-preserving (or, for "flow", flow) sample x_t.

    t is the model time the denoiser saw, a scalar or per-example (batch,).
    """
    check_prediction_type(prediction_type)
    alpha_t, sigma_t = signal_noise(schedule, t, flow=prediction_type == "flow")
    alpha, sigma = expand_like(alpha_t, x_t), expand_like(sigma_t, x_t)
    if prediction_type == "eps":
        return (x_t - sigma * pred) / alpha, pred
    if prediction_type == "x0":
        return pred, (x_t - alpha * pred) / sigma
    if prediction_type == "v":
        return alpha * x_t - sigma * pred, sigma * x_t + alpha * pred
    return x_t - sigma * pred, x_t + alpha * pred


def ddim_step(x_t, x0, eps, t, t_prev, schedule, *, eta, noise=None) -> jax.Array:
    """DDIM (Song et al. 2021) as diffusers' DDIMScheduler.step; eta = 0 is deterministic, 1 is DDPM-like.

    Built from (x0, eps) alone, which is what lets SynCoS step from a refined x0 with a fixed
    noise; x_t is accepted only so that every step has the same signature. noise (standard
    normal) may be None when eta is 0.
    """
    acp_t = alphas_cumprod_at(schedule, t)
    acp_prev = alphas_cumprod_at(schedule, t_prev)
    variance = (1 - acp_prev) / (1 - acp_t) * (1 - acp_t / acp_prev)
    std = eta * jnp.sqrt(variance)
    x_prev = jnp.sqrt(acp_prev) * x0 + jnp.sqrt(jnp.maximum(1 - acp_prev - std**2, 0.0)) * eps
    if noise is None:
        return x_prev
    return x_prev + std * noise


def ddpm_step(x_t, x0, eps, t, t_prev, schedule, *, noise) -> jax.Array:
    """Ancestral step from q(x_prev | x_t, x0), "fixed_small" variance, as diffusers' DDPMScheduler.

    Works for skipped steps too: beta is taken between t and t_prev. eps is unused (the
    posterior is written in x0 and x_t); no x0 clipping, since latents are not bounded.
    """
    acp_t = alphas_cumprod_at(schedule, t)
    acp_prev = alphas_cumprod_at(schedule, t_prev)
    alpha = acp_t / acp_prev
    beta = 1 - alpha
    x0_coef = jnp.sqrt(acp_prev) * beta / (1 - acp_t)
    x_t_coef = jnp.sqrt(alpha) * (1 - acp_prev) / (1 - acp_t)
    variance = jnp.maximum((1 - acp_prev) / (1 - acp_t) * beta, 0.0)
    return x0_coef * x0 + x_t_coef * x_t + jnp.sqrt(variance) * noise


def euler_ancestral_step(x_t, x0, eps, t, t_prev, schedule, *, noise) -> jax.Array:
    """Euler ancestral step in Karras sigma space, as diffusers' EulerAncestralDiscreteScheduler.

    x_t is the Karras sample x0 + sigma eps. The step goes deterministically down to sigma_down
    and adds fresh noise sigma_up so that the marginal lands at sigma_prev; x0 is unused
    because the derivative (x_t - x0) / sigma is eps.
    """
    sigma = sigma_at(schedule, t)
    sigma_prev = sigma_at(schedule, t_prev)
    sigma_up = jnp.sqrt(sigma_prev**2 * (sigma**2 - sigma_prev**2) / sigma**2)
    sigma_down = jnp.sqrt(sigma_prev**2 - sigma_up**2)
    return x_t + eps * (sigma_down - sigma) + sigma_up * noise


def flow_euler_step(x_t, x0, eps, t, t_prev, schedule, *, noise=None) -> jax.Array:
    """Euler step of the rectified-flow ODE dx/ds = eps - x0 from s = t / N to t_prev / N; deterministic."""
    n = num_train_steps(schedule)
    return x_t + (t_prev - t) / n * (eps - x0)


_STEPS = {
    "ddpm": ddpm_step,
    "ddim": ddim_step,
    "euler_ancestral": euler_ancestral_step,
    "flow_euler": flow_euler_step,
}


def guided_predictor(denoise_fn, cond, uncond, guidance_scale):
    """Predictor with classifier-free guidance in ONE denoiser call: cond and uncond share the batch.

    Guidance is skipped only when guidance_scale is a concrete 1, so a traced scale still works.
    """
    if uncond is None or (isinstance(guidance_scale, numbers.Real) and guidance_scale == 1):
        return lambda x, t_b: denoise_fn(x, t_b, cond)
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, uncond)

    def predict(x, t_b):
        pred = denoise_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t_b, t_b], axis=0), both)
        pred_cond, pred_uncond = jnp.split(pred, 2, axis=0)
        return pred_uncond + guidance_scale * (pred_cond - pred_uncond)

    return predict


def sample(
    denoise_fn,
    schedule,
    noise,
    rng,
    *,
    method,
    num_steps,
    prediction_type="eps",
    cond=None,
    uncond=None,
    guidance_scale=1.0,
    eta=0.0,
    timestep_spacing="trailing",
    steps_offset=0,
    set_alpha_to_one=True,
) -> jax.Array:
    """Runs a sampler from standard-normal noise to x0 in one jax.lax.scan; jit it with
    denoise_fn, method, num_steps and prediction_type static.

    denoise_fn(x_t, t_b, cond) -> prediction of prediction_type, with x_t the variance-preserving
    (or flow) sample and t_b the (batch,) model time. With uncond (a pytree shaped like cond) and
    guidance_scale != 1 each step makes one call on the doubled batch and uses
    uncond + guidance_scale * (cond - uncond). rng draws the per-step noise of ddpm,
    euler_ancestral and ddim with eta > 0. eta is used by ddim only; the spacing arguments by ddpm and
    ddim (`timesteps`). The state and the result keep noise's dtype.
    """
    _check(method, prediction_type)
    t_n, t_prev_n = timesteps(method, num_steps, schedule, timestep_spacing=timestep_spacing,
                              steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one)
    step = functools.partial(ddim_step, eta=eta) if method == "ddim" else _STEPS[method]
    predict = guided_predictor(denoise_fn, cond, uncond, guidance_scale)
    karras = method == "euler_ancestral"
    x = (noise * sigma_at(schedule, t_n[0])).astype(noise.dtype) if karras else noise

    def body(x, inputs):
        t, t_prev, key = inputs
        x_in = x * jax.lax.rsqrt(1 + sigma_at(schedule, t) ** 2) if karras else x
        pred = predict(x_in, jnp.full((x.shape[0],), t))
        x0, eps = to_x0_eps(pred, x_in, t, schedule, prediction_type)
        z = jax.random.normal(key, x.shape, x.dtype)
        return step(x, x0, eps, t, t_prev, schedule, noise=z).astype(x.dtype), None

    keys = jax.random.split(rng, num_steps)
    x, _ = jax.lax.scan(body, x, (t_n, t_prev_n, keys))
    return x


def ddim_invert(denoise_fn, schedule, x0, *, num_steps, cond=None, prediction_type="eps") -> jax.Array:
    """Deterministic DDIM inversion x0 -> x_T (flow: Euler from s = 0 to 1), one jax.lax.scan.

    Walks the sampler's own grid upwards, so sampling with the same num_steps retraces it. Each
    step takes eps from the denoiser at the sample it has (one level below) labelled with the
    time it goes to, as diffusers' DDIMInverseScheduler, and rebuilds x0 at the sample's true
    level, so the first step can start from clean data.
    """
    check_prediction_type(prediction_type)
    flow = prediction_type == "flow"
    t_n, t_prev_n = timesteps("flow_euler" if flow else "ddim", num_steps, schedule)

    def body(x, inputs):
        t_low, t_high = inputs
        pred = denoise_fn(x, jnp.full((x.shape[0],), t_high), cond)
        _, eps = to_x0_eps(pred, x, t_high, schedule, prediction_type)
        alpha_low, sigma_low = signal_noise(schedule, t_low, flow=flow)
        alpha_high, sigma_high = signal_noise(schedule, t_high, flow=flow)
        x0_hat = (x - sigma_low * eps) / alpha_low
        return (alpha_high * x0_hat + sigma_high * eps).astype(x.dtype), None

    x, _ = jax.lax.scan(body, x0, (t_prev_n[::-1], t_n[::-1]))
    return x
