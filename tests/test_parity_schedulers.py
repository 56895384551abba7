"""Sampler steps vs diffusers' schedulers: the same model outputs and noise must give the same next
sample (<= 1e-5) at every step of a whole run, and the same timesteps."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402

from t2v_jax.diffusion import samplers  # noqa: E402
from t2v_jax.diffusion.schedules import make_schedule, sigma_at  # noqa: E402

pytestmark = pytest.mark.ref

SHAPE = (2, 3, 4, 5)
PREDICTION_NAMES = {"eps": "epsilon", "v": "v_prediction"}


TRAILING = dict(timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True)


def _reference_scheduler(method, prediction_type, spacing):
    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  prediction_type=PREDICTION_NAMES[prediction_type])
    if method == "ddpm":
        return diffusers.DDPMScheduler(timestep_spacing=spacing["timestep_spacing"],
                                       steps_offset=spacing["steps_offset"], clip_sample=False,
                                       variance_type="fixed_small", **common)
    if method == "ddim":
        return diffusers.DDIMScheduler(clip_sample=False, **spacing, **common)
    return diffusers.EulerAncestralDiscreteScheduler(**common)  # Allegro's: defaults, "linspace"


def _model_output(x_t, reference, i, t, x0, prediction_type, rng):
    """A plausible denoiser output (right for a fixed x0, plus error) so samples stay O(1) over the run."""
    if isinstance(reference, diffusers.EulerAncestralDiscreteScheduler):
        sigma_karras = reference.sigmas[i]
        alpha, sigma = 1 / (1 + sigma_karras**2) ** 0.5, sigma_karras / (1 + sigma_karras**2) ** 0.5
        x_t = x_t * alpha
    else:
        acp = reference.alphas_cumprod[int(t)]
        alpha, sigma = acp**0.5, (1 - acp) ** 0.5
    eps = (x_t - alpha * x0) / sigma + 0.1 * torch.from_numpy(rng.standard_normal(SHAPE).astype(np.float32))
    return eps if prediction_type == "eps" else alpha * eps - sigma * x0


def _our_step(method, x_t, pred, t, t_prev, schedule, prediction_type, noise, eta):
    """One step of our sampler on the scheduler's own state, as `samplers.sample` takes it."""
    karras = method == "euler_ancestral"
    x_in = x_t / jnp.sqrt(1 + sigma_at(schedule, t) ** 2) if karras else x_t
    x0, eps = samplers.to_x0_eps(pred, x_in, t, schedule, prediction_type)
    if method == "ddim":
        return samplers.ddim_step(x_t, x0, eps, t, t_prev, schedule, eta=eta, noise=noise)
    step = {"ddpm": samplers.ddpm_step, "euler_ancestral": samplers.euler_ancestral_step}[method]
    return step(x_t, x0, eps, t, t_prev, schedule, noise=noise)


# Stable Diffusion's scheduler settings (LaVie samples with them): "leading" with steps_offset=1 and,
# for DDIM, set_alpha_to_one=False; "linspace" with step counts that do not divide 1000.
SD = dict(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False)
LINSPACE = dict(timestep_spacing="linspace", steps_offset=0, set_alpha_to_one=True)


@pytest.mark.parametrize("method,prediction_type,num_steps,eta,spacing", [
    ("ddpm", "eps", 50, 0.0, TRAILING),
    ("ddpm", "v", 20, 0.0, TRAILING),
    ("ddim", "eps", 50, 0.0, TRAILING),
    ("ddim", "v", 25, 1.0, TRAILING),
    ("euler_ancestral", "eps", 100, 0.0, TRAILING),
    ("euler_ancestral", "v", 30, 0.0, TRAILING),
    ("ddim", "eps", 50, 0.0, SD),
    ("ddim", "v", 30, 1.0, SD),
    ("ddim", "eps", 30, 0.0, LINSPACE),
    ("ddim", "v", 50, 0.0, dict(TRAILING, set_alpha_to_one=False)),
    ("ddpm", "eps", 50, 0.0, dict(SD, set_alpha_to_one=True)),
    ("ddpm", "v", 30, 0.0, LINSPACE),
])
def test_steps_match_diffusers(method, prediction_type, num_steps, eta, spacing):
    reference = _reference_scheduler(method, prediction_type, spacing)
    reference.set_timesteps(num_steps)
    schedule = make_schedule("linear", 1000)
    options = spacing if method in ("ddpm", "ddim") else {}
    t_n, t_prev_n = samplers.timesteps(method, num_steps, schedule, **options)
    np.testing.assert_allclose(np.asarray(t_n), reference.timesteps.numpy(), atol=1e-4)

    rng = np.random.default_rng(0)
    x0 = torch.from_numpy(rng.standard_normal(SHAPE).astype(np.float32))
    x_t = torch.from_numpy(rng.standard_normal(SHAPE).astype(np.float32)) * reference.init_noise_sigma
    for i, t in enumerate(reference.timesteps):
        pred = _model_output(x_t, reference, i, t, x0, prediction_type, rng)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(i))
        if method == "ddim":
            expected = reference.step(pred, t, x_t, eta=eta, variance_noise=noise).prev_sample
        else:
            if method == "euler_ancestral":
                reference.scale_model_input(x_t, t)  # advances nothing, but diffusers requires the call
            expected = reference.step(pred, t, x_t,
                                      generator=torch.Generator().manual_seed(i)).prev_sample
        got = _our_step(method, jnp.asarray(x_t.numpy()), jnp.asarray(pred.numpy()), t_n[i], t_prev_n[i],
                        schedule, prediction_type, jnp.asarray(noise.numpy()), eta)
        # Euler's Karras samples are x0 + sigma eps with sigma up to ~157, beyond what a float32 can
        # hold to 1e-5; they are compared in the unit-variance scale the denoiser sees.
        scale = float(1 + reference.sigmas[i + 1] ** 2) ** -0.5 if method == "euler_ancestral" else 1.0
        np.testing.assert_allclose(np.asarray(got) * scale, expected.numpy() * scale, atol=1e-5, rtol=0,
                                   err_msg=f"step {i} (t={float(t)})")
        x_t = expected


def test_low_res_noise_augmentation_matches_the_x4_upscale_pipeline():
    """LaVie's VSR (Stable Diffusion's x4 upscaler) noises its low-resolution input with the pipeline's
    `low_res_scheduler` (DDPM, scaled-linear betas 1e-4..0.02) at `noise_level` (LaVie: 50) before
    concatenating it to the latents; `add_noise` on the same schedule gives the same numbers."""
    from t2v_jax.diffusion.schedules import add_noise

    low_res_scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                                beta_start=0.0001, beta_end=0.02)
    schedule = make_schedule("scaled_linear", 1000, 0.0001, 0.02)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (3, 3, 8, 8)).astype(np.float32)
    noise = rng.standard_normal(image.shape).astype(np.float32)
    levels = np.array([50, 50, 350])
    expected = low_res_scheduler.add_noise(torch.from_numpy(image), torch.from_numpy(noise),
                                           torch.from_numpy(levels)).numpy()
    got = np.asarray(add_noise(schedule, image, noise, jnp.asarray(levels)))
    assert np.abs(got - image).max() > 0.1
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
