"""Samplers driven by the exact denoiser of a Gaussian data distribution, plus step-level checks
against numpy transcriptions of diffusers' scheduler formulas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.diffusion.samplers import (
    ddim_invert,
    ddim_step,
    ddpm_step,
    euler_ancestral_step,
    sample,
    timesteps,
    to_x0_eps,
)
from t2v_jax.diffusion.schedules import make_schedule, signal_noise

N = 1000
MU = jnp.array([0.5, -1.0])
SD = jnp.array([0.5, 1.5])
LINEAR = make_schedule("linear", N)
FLOW = make_schedule("flow", N)


def gaussian_denoiser(schedule, prediction_type):
    """E[x0 | x_t] for x0 ~ N(MU, SD^2) per dimension, returned as prediction_type.

    Reads model time the way a trained model would have seen it: integer t indexes the table,
    float t interpolates sigma (Euler), flow t is s * N.
    """
    n = schedule.betas.shape[0]

    def denoise(x, t_b, cond):
        t = t_b[0]
        if prediction_type == "flow":
            a, b = 1 - t / n, t / n
        elif jnp.issubdtype(t.dtype, jnp.integer):
            a, b = jnp.sqrt(schedule.alphas_cumprod[t]), jnp.sqrt(1 - schedule.alphas_cumprod[t])
        else:
            sigma = jnp.interp(t, jnp.arange(n, dtype=jnp.float32), schedule.sigmas)
            a = 1 / jnp.sqrt(1 + sigma**2)
            b = sigma * a
        var = a**2 * SD**2 + b**2
        x0 = MU + a * SD**2 / var * (x - a * MU)
        eps = b / var * (x - a * MU)
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0, "flow": eps - x0}[prediction_type]

    return denoise


@functools.lru_cache(maxsize=None)
def jitted_sample(schedule_kind, method, num_steps, prediction_type):
    schedule = FLOW if schedule_kind == "flow" else LINEAR
    fn = functools.partial(
        sample, gaussian_denoiser(schedule, prediction_type),
        method=method, num_steps=num_steps, prediction_type=prediction_type,
    )
    return jax.jit(lambda noise, rng, eta=0.0: fn(schedule, noise, rng, eta=eta))


@pytest.mark.parametrize(
    "method,prediction_type,num_steps,eta",
    [
        ("ddim", "eps", 500, 0.0),
        ("ddim", "x0", 500, 1.0),
        ("ddpm", "v", 1000, 0.0),
        ("euler_ancestral", "eps", 1000, 0.0),
        ("flow_euler", "flow", 500, 0.0),
    ],
)
def test_sampler_recovers_gaussian_data(method, prediction_type, num_steps, eta):
    n = 65536
    noise = jax.random.normal(jax.random.key(0), (n, 2))
    kind = "flow" if method == "flow_euler" else "linear"
    x = jitted_sample(kind, method, num_steps, prediction_type)(noise, jax.random.key(1), eta)
    # Monte Carlo: 4 standard errors (SD / sqrt(n) for the mean, sqrt(2 / n) relative for the
    # variance). Bias: the linear schedule's x_T is N(0, 1) instead of N(0.0064 MU, ~1), which
    # shifts the mean by up to 0.01; these first-order samplers lose at most 3% of the variance
    # at these step counts (measured on 2^18 samples).
    np.testing.assert_array_less(jnp.abs(x.mean(0) - MU), 4 * SD / np.sqrt(n) + 0.01)
    np.testing.assert_array_less(jnp.abs(x.var(0) / SD**2 - 1), 4 * np.sqrt(2 / n) + 0.03)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    noise = jax.random.normal(jax.random.key(0), (256, 2))
    run = jitted_sample("linear", "ddim", 20, "eps")
    np.testing.assert_array_equal(run(noise, jax.random.key(1)), run(noise, jax.random.key(2)))
    assert jnp.abs(run(noise, jax.random.key(1), 1.0) - run(noise, jax.random.key(2), 1.0)).max() > 0.1


def test_parametrisations_give_the_same_ddim_samples():
    noise = jax.random.normal(jax.random.key(0), (256, 2))
    eps = jitted_sample("linear", "ddim", 20, "eps")(noise, jax.random.key(1))
    for prediction_type in ("v", "x0"):
        other = jitted_sample("linear", "ddim", 20, prediction_type)(noise, jax.random.key(1))
        np.testing.assert_allclose(other, eps, atol=2e-5)


@pytest.mark.parametrize("prediction_type", ["eps", "flow"])
def test_ddim_invert_then_sample_reconstructs(prediction_type):
    schedule = FLOW if prediction_type == "flow" else LINEAR
    method = "flow_euler" if prediction_type == "flow" else "ddim"
    denoise = gaussian_denoiser(schedule, prediction_type)
    x0 = MU + SD * jax.random.normal(jax.random.key(3), (1024, 2))

    def roundtrip(num_steps):
        x_T = ddim_invert(denoise, schedule, x0, num_steps=num_steps, prediction_type=prediction_type)
        return sample(denoise, schedule, x_T, jax.random.key(0), method=method, num_steps=num_steps,
                      prediction_type=prediction_type)

    roundtrip = jax.jit(roundtrip, static_argnums=0)
    err_250 = jnp.abs(roundtrip(250) - x0).max()
    err_1000 = jnp.abs(roundtrip(1000) - x0).max()
    # Inversion evaluates eps one level early, a first-order error: 4x the steps, ~4x smaller.
    assert err_1000 < err_250 / 3
    assert err_1000 < (0.05 if prediction_type == "flow" else 0.015)


def _cfg_denoiser(calls):
    """A linear eps model whose output depends on a pytree cond; records each call's batch size."""

    def denoise(x, t_b, cond):
        calls.append(x.shape[0])
        return 0.9 * x + cond["shift"] * (1 + t_b[:, None] / N) + cond["gain"] * x

    return denoise


CFG_X = jax.random.normal(jax.random.key(4), (8, 2))
COND = {"shift": jnp.full((8, 2), 0.3), "gain": jnp.full((8, 1), 0.05)}
UNCOND = {"shift": jnp.full((8, 2), -0.2), "gain": jnp.zeros((8, 1))}


def test_cfg_scale_one_equals_no_guidance():
    calls = []
    run = functools.partial(sample, _cfg_denoiser(calls), LINEAR, CFG_X, jax.random.key(0),
                            method="ddim", num_steps=10, cond=COND)
    plain = run()
    np.testing.assert_array_equal(run(uncond=UNCOND, guidance_scale=1.0), plain)
    traced = jax.jit(lambda g: run(uncond=UNCOND, guidance_scale=g))(1.0)
    np.testing.assert_allclose(traced, plain, rtol=1e-5)


def test_cfg_one_step_is_the_manual_extrapolation():
    calls = []
    g = 4.0
    got = sample(_cfg_denoiser(calls), LINEAR, CFG_X, jax.random.key(0), method="ddim", num_steps=1,
                 cond=COND, uncond=UNCOND, guidance_scale=g)
    t = jnp.full((8,), N - 1)
    pred_c = 0.9 * CFG_X + COND["shift"] * (1 + t[:, None] / N) + COND["gain"] * CFG_X
    pred_u = 0.9 * CFG_X + UNCOND["shift"] * (1 + t[:, None] / N)
    pred = pred_u + g * (pred_c - pred_u)
    acp = LINEAR.alphas_cumprod[N - 1]
    # One trailing step goes from t = 999 straight to alphas_cumprod = 1: the output is x0.
    np.testing.assert_allclose(got, (CFG_X - jnp.sqrt(1 - acp) * pred) / jnp.sqrt(acp), rtol=1e-5)


@pytest.mark.parametrize("guided", [False, True])
def test_one_denoiser_call_per_step_in_one_scan(guided):
    calls = []
    kwargs = dict(cond=COND, uncond=UNCOND, guidance_scale=7.5) if guided else dict(cond=COND)
    run = functools.partial(sample, _cfg_denoiser(calls), LINEAR, CFG_X, jax.random.key(0),
                            method="euler_ancestral", num_steps=12, **kwargs)
    jaxpr = jax.make_jaxpr(run)()
    assert [eqn.primitive.name for eqn in jaxpr.eqns].count("scan") == 1
    assert calls == [16 if guided else 8]


def test_timesteps_follow_documented_spacings():
    for k in (1, 3, 7, 50, 1000):
        t, t_prev = timesteps("ddim", k, LINEAR)
        # diffusers "trailing": round(arange(N, 0, -N / k)) - 1.
        np.testing.assert_array_equal(t, np.round(np.arange(N, 0, -N / k)).astype(int) - 1)
        np.testing.assert_array_equal(t_prev, np.append(np.asarray(t)[1:], -1))
    t, t_prev = timesteps("euler_ancestral", 30, LINEAR)
    np.testing.assert_allclose(t, np.linspace(0, N - 1, 30)[::-1], rtol=1e-6)
    assert t_prev[-1] == -1
    t, t_prev = timesteps("flow_euler", 4, FLOW)
    np.testing.assert_allclose(t, [1000, 750, 500, 250])
    np.testing.assert_allclose(t_prev, [750, 500, 250, 0])


def test_bad_arguments_name_allowed_values():
    denoise = gaussian_denoiser(LINEAR, "eps")
    with pytest.raises(ValueError, match="'ddpm', 'ddim', 'euler_ancestral', 'flow_euler'"):
        sample(denoise, LINEAR, CFG_X, jax.random.key(0), method="heun", num_steps=10)
    with pytest.raises(ValueError, match="flow_euler"):
        sample(denoise, LINEAR, CFG_X, jax.random.key(0), method="ddim", num_steps=10, prediction_type="flow")
    with pytest.raises(ValueError, match="num_steps"):
        timesteps("ddim", 1001, LINEAR)


@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0", "flow"])
@pytest.mark.parametrize("t", [jnp.int32(3), jnp.int32(998), jnp.float32(517.25)])
def test_to_x0_eps_inverts_each_parametrisation(prediction_type, t):
    x0, eps = jax.random.normal(jax.random.key(5), (2, 16, 3))
    schedule = FLOW if prediction_type == "flow" else LINEAR
    a, b = signal_noise(schedule, t, flow=prediction_type == "flow")
    x_t = a * x0 + b * eps
    pred = {"eps": eps, "x0": x0, "v": a * eps - b * x0, "flow": eps - x0}[prediction_type]
    got_x0, got_eps = to_x0_eps(pred, x_t, t, schedule, prediction_type)
    # The eps form divides by alpha (0.0088 at t = 998): float32 error grows by that much.
    np.testing.assert_allclose(got_x0, x0, atol=2e-4)
    np.testing.assert_allclose(got_eps, eps, atol=2e-5)


# ---- single steps against numpy transcriptions of diffusers' step() ------------------------------

ACP = np.asarray(LINEAR.alphas_cumprod, np.float64)
X_T, X0_HAT, EPS_HAT, Z = np.asarray(jax.random.normal(jax.random.key(6), (4, 32)), np.float64)


@pytest.mark.parametrize("t,t_prev,eta", [(999, 979, 0.0), (500, 250, 0.7), (19, -1, 1.0)])
def test_ddim_step_matches_diffusers(t, t_prev, eta):
    a_t, a_prev = ACP[t], (ACP[t_prev] if t_prev >= 0 else 1.0)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance**0.5
    expected = a_prev**0.5 * X0_HAT + (1 - a_prev - std**2) ** 0.5 * EPS_HAT + std * Z
    got = ddim_step(X_T, X0_HAT, EPS_HAT, jnp.int32(t), jnp.int32(t_prev), LINEAR, eta=eta, noise=Z)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t,t_prev", [(999, 998), (600, 500), (0, -1)])
def test_ddpm_step_matches_diffusers(t, t_prev):
    a_t, a_prev = ACP[t], (ACP[t_prev] if t_prev >= 0 else 1.0)
    alpha, beta = a_t / a_prev, 1 - a_t / a_prev
    mean = a_prev**0.5 * beta / (1 - a_t) * X0_HAT + alpha**0.5 * (1 - a_prev) / (1 - a_t) * X_T
    expected = mean + ((1 - a_prev) / (1 - a_t) * beta) ** 0.5 * Z
    got = ddpm_step(X_T, X0_HAT, EPS_HAT, jnp.int32(t), jnp.int32(t_prev), LINEAR, noise=Z)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t,t_prev", [(999.0, 898.1), (40.5, 0.0), (0.0, -1.0)])
def test_euler_ancestral_v_step_matches_diffusers(t, t_prev):
    sigmas = np.sqrt((1 - ACP) / ACP)
    sigma = np.interp(t, np.arange(N), sigmas)
    sigma_to = 0.0 if t_prev < 0 else np.interp(t_prev, np.arange(N), sigmas)
    sample_ve, v = X_T * 3.0, EPS_HAT
    x0 = v * (-sigma / (sigma**2 + 1) ** 0.5) + sample_ve / (sigma**2 + 1)
    sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    expected = sample_ve + (sample_ve - x0) / sigma * (sigma_down - sigma) + Z * sigma_up

    x_in = sample_ve / np.sqrt(sigma**2 + 1)  # diffusers' scale_model_input
    got_x0, got_eps = to_x0_eps(v, x_in, jnp.float32(t), LINEAR, "v")
    got = euler_ancestral_step(
        sample_ve, got_x0, got_eps, jnp.float32(t), jnp.float32(t_prev), LINEAR, noise=Z
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
