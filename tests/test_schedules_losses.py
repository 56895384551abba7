"""Schedules against diffusers' formulas and published anchor values; losses against oracle denoisers."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.diffusion.losses import diffusion_loss, min_snr_weight
from t2v_jax.diffusion.schedules import (
    PREDICTION_TYPES,
    alphas_cumprod_at,
    make_schedule,
    sigma_at,
    signal_noise,
)

N = 1000


def _cumprod_like_torch(betas32):
    """diffusers: alphas = 1 - betas in float32, torch.cumprod accumulates in float64 on CPU."""
    return np.cumprod((np.float32(1) - betas32).astype(np.float64)).astype(np.float32)


def test_linear_matches_diffusers_and_anchor():
    s = make_schedule("linear", N, 1e-4, 0.02)
    betas = np.linspace(1e-4, 0.02, N).astype(np.float32)
    np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod, _cumprod_like_torch(betas), rtol=1e-6)
    # DDPM's linear schedule ends at alphas_cumprod ~ 4.04e-5 (sqrt 0.00635, Lin et al. 2023).
    np.testing.assert_allclose(s.alphas_cumprod[-1], 4.0358e-5, rtol=1e-3)


def test_scaled_linear_matches_stable_diffusion_anchors():
    s = make_schedule("scaled_linear", N, 0.00085, 0.012)
    betas = (np.linspace(0.00085**0.5, 0.012**0.5, N) ** 2).astype(np.float32)
    np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod, _cumprod_like_torch(betas), rtol=1e-6)
    # Stable Diffusion: sqrt(alphas_cumprod_T) = 0.068265 (Lin et al. 2023), sigma_max = 14.6146.
    np.testing.assert_allclose(np.sqrt(s.alphas_cumprod[-1]), 0.068265, rtol=1e-4)
    np.testing.assert_allclose(s.sigmas[-1], 14.6146, rtol=1e-4)


def test_cosine_telescopes_to_alpha_bar_and_caps_last_beta():
    s = make_schedule("cosine", N)
    alpha_bar = np.cos((np.arange(N + 1) / N + 0.008) / 1.008 * np.pi / 2) ** 2
    betas = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999).astype(np.float32)
    np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
    assert s.betas[-1] == np.float32(0.999) and np.all(s.betas[:-1] < 0.999)
    # Without the cap the product telescopes: alphas_cumprod[i] = alpha_bar((i + 1) / N) / alpha_bar(0).
    np.testing.assert_allclose(s.alphas_cumprod[:-1], alpha_bar[1:-1] / alpha_bar[0], rtol=2e-5)


def test_flow_table_has_rectified_flow_snr():
    s = make_schedule("flow", N)
    t = np.arange(1, N)
    u = t / N
    np.testing.assert_allclose(s.sigmas[1:], u / (1 - u), rtol=1e-5)
    assert s.alphas_cumprod[0] == 1 and s.betas[0] == 0
    alpha, sigma = signal_noise(s, jnp.asarray(t, jnp.float32), flow=True)
    np.testing.assert_allclose(alpha, 1 - u, atol=1e-6)
    np.testing.assert_allclose(sigma, u, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine", "flow"])
def test_sigmas_and_dtypes(kind):
    s = make_schedule(kind, N)
    acp = np.asarray(s.alphas_cumprod, np.float64)
    # Flow's sigma comes from s itself (tested above): its float32 alphas_cumprod near 1 is too coarse.
    if kind != "flow":
        np.testing.assert_allclose(s.sigmas, np.sqrt((1 - acp) / acp), rtol=1e-6)
    assert all(a.dtype == jnp.float32 and a.shape == (N,) for a in s)
    assert np.all(np.diff(acp) < 0)


def test_timestep_lookup_integer_float_and_clean_end():
    s = make_schedule("linear", N)
    t_float = jnp.array([0.0, 10.25, 500.0, 998.5, 999.0])
    np.testing.assert_allclose(sigma_at(s, t_float), np.interp(t_float, np.arange(N), s.sigmas), rtol=1e-6)
    t_int = jnp.array([0, 17, 999])
    np.testing.assert_array_equal(alphas_cumprod_at(s, t_int), s.alphas_cumprod[t_int])
    assert alphas_cumprod_at(s, jnp.int32(-1)) == 1 and sigma_at(s, jnp.float32(-1)) == 0
    alpha_i, sigma_i = signal_noise(s, t_int)
    alpha_f, sigma_f = signal_noise(s, t_int.astype(jnp.float32))
    np.testing.assert_allclose(alpha_f, alpha_i, rtol=1e-5)
    np.testing.assert_allclose(sigma_f, sigma_i, rtol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_snr_shift_divides_every_snr_and_keeps_betas_consistent(kind):
    base, shifted = make_schedule(kind, N), make_schedule(kind, N, snr_shift=3.0)
    np.testing.assert_allclose(shifted.sigmas, 3.0 * base.sigmas, rtol=1e-5)
    np.testing.assert_allclose(shifted.alphas_cumprod, _cumprod_like_torch(shifted.betas), rtol=1e-4)
    assert all(np.array_equal(a, b) for a, b in zip(make_schedule(kind, N, snr_shift=1.0), base))
    with pytest.raises(ValueError, match="snr_shift"):
        make_schedule("flow", N, snr_shift=2.0)


def test_unknown_kind_names_allowed_values():
    with pytest.raises(ValueError, match="scaled_linear"):
        make_schedule("quadratic")


# ---- losses -------------------------------------------------------------------------------------

X0 = jax.random.normal(jax.random.key(7), (64, 2, 4, 4, 3))


def _oracle(schedule, target_type, offset=0.0):
    """A denoiser that knows X0, so it recovers eps from x_t and returns target_type's exact target."""
    n = schedule.betas.shape[0]

    def denoise(x_t, t_b):
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        if jnp.issubdtype(t_b.dtype, jnp.integer):
            acp = schedule.alphas_cumprod[t_b].reshape(shape)
            alpha, sigma = jnp.sqrt(acp), jnp.sqrt(1 - acp)
        else:
            sigma = (t_b / n).reshape(shape)
            alpha = 1 - sigma
        eps = (x_t - alpha * X0) / sigma
        targets = {"eps": eps, "v": alpha * eps - sigma * X0, "x0": X0, "flow": eps - X0}
        return targets[target_type] + offset

    return denoise


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_each_target_is_exact(prediction_type):
    s = make_schedule("flow" if prediction_type == "flow" else "linear", N)
    # Eager on purpose: op-by-op dispatch is cached across calls, three jit compiles are not.
    loss_fn = functools.partial(diffusion_loss, prediction_type=prediction_type)
    loss, aux = loss_fn(_oracle(s, prediction_type), s, X0, jax.random.key(0))
    assert loss < 1e-8
    np.testing.assert_allclose(jnp.mean(aux["loss_per_example"]), loss, rtol=1e-6)
    for wrong in set(PREDICTION_TYPES) - {prediction_type}:
        if (wrong == "flow") != (prediction_type == "flow"):
            continue
        assert loss_fn(_oracle(s, wrong), s, X0, jax.random.key(0))[0] > 1e-2, wrong


@pytest.mark.parametrize("prediction_type", ["eps", "flow"])
def test_timesteps_uniform_over_model_range(prediction_type):
    s = make_schedule("linear", N)
    x0 = jnp.zeros((4096, 1))
    _, aux = diffusion_loss(lambda x, t: x, s, x0, jax.random.key(1), prediction_type=prediction_type)
    t = np.asarray(aux["t"])
    assert t.min() >= 0 and t.max() < N
    assert np.issubdtype(t.dtype, np.integer) == (prediction_type != "flow")
    # Uniform on [0, N): mean (N - 1) / 2 and std N / sqrt(12); 5 standard errors of the mean.
    assert abs(t.mean() - (N - 1) / 2) < 5 * N / math.sqrt(12 * len(t))
    assert abs(t.std() - N / math.sqrt(12)) < 0.03 * N


@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
def test_min_snr_weights(prediction_type):
    s = make_schedule("linear", N)
    gamma = 5.0
    _, aux = diffusion_loss(
        _oracle(s, prediction_type, offset=1.0), s, X0, jax.random.key(2),
        prediction_type=prediction_type, min_snr_gamma=gamma,
    )
    acp = np.asarray(s.alphas_cumprod, np.float64)[np.asarray(aux["t"])]
    snr = acp / (1 - acp)
    expected = {"eps": np.minimum(snr, gamma) / snr, "v": np.minimum(snr, gamma) / (snr + 1),
                "x0": np.minimum(snr, gamma)}[prediction_type]
    # The oracle is off by exactly 1 everywhere, so each per-example loss is its weight.
    np.testing.assert_allclose(aux["loss_per_example"], expected, rtol=1e-4)
    assert np.any(snr > gamma) and np.any(snr < gamma)
    np.testing.assert_allclose(min_snr_weight(s, aux["t"], prediction_type, gamma), expected, rtol=1e-4)


def test_loss_rejects_bad_arguments():
    s = make_schedule("flow", N)
    with pytest.raises(ValueError, match="min_snr_gamma"):
        diffusion_loss(lambda x, t: x, s, X0, jax.random.key(0), prediction_type="flow", min_snr_gamma=5.0)
    with pytest.raises(ValueError, match="'eps', 'v', 'x0', 'flow'"):
        diffusion_loss(lambda x, t: x, s, X0, jax.random.key(0), prediction_type="epsilon")
