"""The denoising training loss, one function for every schedule and prediction type."""

import jax
import jax.numpy as jnp

from t2v_jax.diffusion.schedules import (
    add_noise,
    alphas_cumprod_at,
    check_prediction_type,
    expand_like,
    num_train_steps,
    signal_noise,
)


def min_snr_weight(schedule, t, prediction_type, gamma) -> jax.Array:
    """Min-SNR-gamma (Hang et al. 2023): the x0-space weight min(snr, gamma) moved into each target's space.

    The eps and v losses equal the x0 loss times snr and snr + 1, hence the divisions.
    """
    acp = alphas_cumprod_at(schedule, t)
    snr = acp / (1 - acp)
    clipped = jnp.minimum(snr, gamma)
    if prediction_type == "eps":
        return clipped / snr
    if prediction_type == "v":
        return clipped / (snr + 1)
    if prediction_type == "x0":
        return clipped
    raise ValueError(f"min-SNR weighting is defined for ('eps', 'v', 'x0'), not {prediction_type!r}")


def _target(prediction_type, x0, eps, alpha, sigma):
    if prediction_type == "eps":
        return eps
    if prediction_type == "v":
        return alpha * eps - sigma * x0
    if prediction_type == "x0":
        return x0
    return eps - x0


def diffusion_loss(denoise_fn, schedule, x0, rng, *, prediction_type="eps", min_snr_gamma=None):
    """Mean squared error between denoise_fn(x_t, t_b) and the target of prediction_type.

    Timesteps are uniform: integer t in [0, N) for eps/v/x0 on the schedule's table, and for
    "flow" s ~ U[0, 1) with x_t = (1 - s) x0 + s eps, shown to the model as t = s * N, so the
    model always sees t in [0, N). Returns (loss, aux) with aux["loss_per_example"] (after the
    optional min-SNR weight) and aux["t"], both of shape (batch,).
    """
    check_prediction_type(prediction_type)
    if min_snr_gamma is not None and prediction_type == "flow":
        raise ValueError("min_snr_gamma is defined for prediction_type in ('eps', 'v', 'x0'), not 'flow'")
    flow = prediction_type == "flow"
    n = num_train_steps(schedule)
    batch = x0.shape[0]
    t_key, noise_key = jax.random.split(rng)
    if flow:
        t_b = jax.random.uniform(t_key, (batch,), jnp.float32) * n
    else:
        t_b = jax.random.randint(t_key, (batch,), 0, n)
    x0 = x0.astype(jnp.float32)
    eps = jax.random.normal(noise_key, x0.shape, jnp.float32)
    x_t = add_noise(schedule, x0, eps, t_b, flow=flow)
    alpha_b, sigma_b = signal_noise(schedule, t_b, flow=flow)
    alpha, sigma = expand_like(alpha_b, x0), expand_like(sigma_b, x0)
    target = _target(prediction_type, x0, eps, alpha, sigma)
    pred = denoise_fn(x_t, t_b).astype(jnp.float32)
    loss_b = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, x0.ndim)))
    if min_snr_gamma is not None:
        loss_b = loss_b * min_snr_weight(schedule, t_b, prediction_type, min_snr_gamma)
    return jnp.mean(loss_b), {"loss_per_example": loss_b, "t": t_b}
