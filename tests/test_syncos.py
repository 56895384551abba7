"""SynCoS and its baselines on analytic denoisers: chunk layout and overlap averaging by hand, reduction to plain
DDIM with one chunk, one step of each mode and CSD against a numpy transcription, SVGD against the formula,
bad inputs named before anything is traced, and one compiled program per run."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.diffusion.samplers import sample
from t2v_jax.diffusion.schedules import make_schedule
from t2v_jax.pipelines.syncos import (
    StructuredPrompt,
    chunk_indices,
    chunk_starts,
    merge_chunks,
    owner_weights,
    split_chunks,
    svgd_direction,
    syncos_config,
    syncos_sample,
    validate_syncos_config,
)

LINEAR = make_schedule("linear", 1000)
FLOW = make_schedule("flow", 1000)


@pytest.mark.parametrize("num_frames, chunk, stride, expected", [
    (10, 4, 3, (0, 3, 6)), (16, 8, 8, (0, 8)), (12, 8, 8, (0, 4)), (8, 8, 3, (0,)), (9, 4, 2, (0, 2, 4, 5)),
])
def test_chunk_starts_cover_the_video_with_the_stride(num_frames, chunk, stride, expected):
    starts = chunk_starts(num_frames, chunk, stride)
    assert starts == expected
    assert starts[0] == 0 and starts[-1] + chunk == num_frames
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))
    assert all(b - a == stride for a, b in zip(starts[:-2], starts[1:-1]))
    index_nf = chunk_indices(num_frames, chunk, stride)
    assert set(index_nf.ravel().tolist()) == set(range(num_frames))


def test_overlap_averaging_by_hand():
    index_nf = chunk_indices(7, 3, 2)  # chunks [0, 3), [2, 5), [4, 7)
    constant = jnp.full((3, 2, 3, 1, 1, 1), 2.5)
    np.testing.assert_array_equal(merge_chunks(constant, index_nf, 7), np.full((2, 7, 1, 1, 1), 2.5))
    per_chunk = jnp.broadcast_to(jnp.array([0.0, 6.0, 12.0])[:, None, None, None, None, None], (3, 2, 3, 1, 1, 1))
    merged = merge_chunks(per_chunk, index_nf, 7)[0, :, 0, 0, 0]
    np.testing.assert_allclose(merged, [0, 0, 3, 6, 9, 12, 12])
    owners = merge_chunks(per_chunk, index_nf, 7, weights_nf=owner_weights(index_nf))[0, :, 0, 0, 0]
    np.testing.assert_allclose(owners, [0, 0, 0, 6, 6, 12, 12])  # nearest centre (1, 3, 5), earlier on a tie
    x_bthwc = jnp.arange(2 * 7, dtype=jnp.float32).reshape(2, 7, 1, 1, 1)
    np.testing.assert_array_equal(split_chunks(x_bthwc, index_nf)[1, :, :, 0, 0, 0], [[2, 3, 4], [9, 10, 11]])


def test_chunk_texts_take_the_majority_local_prompt():
    prompt = StructuredPrompt("a red 3", (("moving left", 0, 3), ("moving up", 3, 8)))
    assert prompt.chunk_texts(8, 4, 2) == ("a red 3 moving left", "a red 3 moving up", "a red 3 moving up")
    tie = StructuredPrompt("a red 3", [["moving left", 0, 4], ["moving up", 4, 8]])
    assert tie.chunk_texts(8, 4, 2)[1] == "a red 3 moving left"


def _nonlinear_denoiser(x, t_b, cond):
    scale = 1 + t_b.astype(jnp.float32)[:, None, None, None, None] / 1000
    return 0.5 * jnp.tanh(x * scale) + cond["emb"][:, None, None, None, :] + 0.1 * jnp.roll(x, 1, axis=1)


@pytest.mark.parametrize("mode, prediction_type", [
    ("co_denoise", "eps"), ("syncos", "eps"), ("independent", "eps"), ("syncos", "v"), ("syncos", "flow"),
])
def test_one_chunk_is_plain_ddim(mode, prediction_type):
    """Bit for bit op by op; compiled, XLA fuses the two programs differently (the fused x0 of `syncos` crosses
    the CSD while loop), so there they agree to float32 rounding."""
    schedule = FLOW if prediction_type == "flow" else LINEAR
    noise = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 2, 2, 3))
    cond = {"emb": jax.random.normal(jax.random.PRNGKey(1), (1, 2, 3))}
    uncond = {"emb": jnp.zeros((2, 3))}
    config = syncos_config(mode=mode, chunk_frames=4, stride=4, num_steps=4, t_min=1000, guidance_scale=3.0)
    run = functools.partial(syncos_sample, _nonlinear_denoiser, config=config, prediction_type=prediction_type)
    run_ddim = functools.partial(
        sample, _nonlinear_denoiser, method="flow_euler" if prediction_type == "flow" else "ddim", num_steps=4,
        prediction_type=prediction_type, guidance_scale=3.0)
    args = (schedule, noise, cond, uncond)
    ddim_args = (schedule, noise, jax.random.PRNGKey(3))
    ddim_kwargs = dict(cond=jax.tree.map(lambda c: c[0], cond), uncond=uncond)
    with jax.disable_jit():
        np.testing.assert_array_equal(run(*args, rng=jax.random.PRNGKey(2)), run_ddim(*ddim_args, **ddim_kwargs))
    np.testing.assert_allclose(jax.jit(run)(*args, rng=jax.random.PRNGKey(2)),
                               jax.jit(run_ddim)(*ddim_args, **ddim_kwargs), rtol=1e-5, atol=1e-5)


def _linear_denoiser(x, t_b, cond):
    """eps = a * (1 + t / 1000) * x, the slope a per chunk and video."""
    return cond[:, :, None, None, None] * (1 + t_b[:, None, None, None, None] / 1000) * x


def numpy_svgd(x_nd, g_nd):
    """CSD's update as written: (sum_j K_ji g_j - 2 gamma sum_j K_ij (x_i - x_j)) / N, median heuristic."""
    n = len(x_nd)
    d2 = np.array([[np.sum((x_nd[i] - x_nd[j]) ** 2) for j in range(n)] for i in range(n)])
    median = np.median(d2)
    gamma = np.log(n + 1) / median if median > 0 else 0.0
    k = np.exp(-gamma * d2)
    return np.stack([sum(k[j, i] * g_nd[j] - 2 * gamma * k[i, j] * (x_nd[i] - x_nd[j]) for j in range(n))
                     for i in range(n)]) / n


def _numpy_reference(mode, noise, slopes_nb, eps_base, *, t_min, csd_iterations, lr, starts, chunk):
    """Two trailing DDIM steps (999 -> 499 -> end) of each mode, written frame by frame in float64."""
    acp = np.asarray(LINEAR.alphas_cumprod, np.float64)
    x = np.asarray(noise, np.float64)
    eps_base = np.asarray(eps_base, np.float64)

    def average(per_chunk):  # list over chunks of (B, chunk, ...) -> overlap average (B, T, ...)
        total, count = np.zeros_like(x), np.zeros(x.shape[1])
        for s, value in zip(starts, per_chunk):
            total[:, s:s + chunk] += value
            count[s:s + chunk] += 1
        return total / count[None, :, None, None, None]

    for t, t_prev in ((999, 499), (499, -1)):
        alpha, sigma = np.sqrt(acp[t]), np.sqrt(1 - acp[t])
        acp_prev = acp[t_prev] if t_prev >= 0 else 1.0

        def eps_of(chunks):
            return [slopes_nb[n][:, None, None, None, None] * (1 + t / 1000) * c for n, c in enumerate(chunks)]

        chunks = [x[:, s:s + chunk] for s in starts]
        eps = eps_of(chunks)
        x0 = [(c - sigma * e) / alpha for c, e in zip(chunks, eps)]
        if mode == "co_denoise":
            x = average([np.sqrt(acp_prev) * a + np.sqrt(1 - acp_prev) * e for a, e in zip(x0, eps)])
            continue
        x0_fused, eps_fused = average(x0), average(eps)
        if t > t_min:
            for _ in range(csd_iterations):
                noisy = [alpha * x0_fused[:, s:s + chunk] + sigma * eps_base[:, s:s + chunk] for s in starts]
                scores = [e - eps_base[:, s:s + chunk] for e, s in zip(eps_of(noisy), starts)]
                phi = np.zeros((len(starts),) + noisy[0].shape)
                for b in range(x.shape[0]):
                    phi[:, b] = numpy_svgd(np.stack([p[b].ravel() for p in noisy]),
                                           np.stack([g[b].ravel() for g in scores])).reshape(phi[:, b].shape)
                x0_fused = x0_fused - lr * (1 - acp[t]) * average(list(phi))
            eps_fused = eps_base
        x = np.sqrt(acp_prev) * x0_fused + np.sqrt(1 - acp_prev) * eps_fused
    return x


@pytest.mark.parametrize("mode, csd_iterations", [("co_denoise", 0), ("syncos", 0), ("syncos", 2)])
def test_one_step_of_each_mode_matches_numpy(mode, csd_iterations):
    """Step 1 (t = 999 > t_min) fuses x_{t-1} (co_denoise) or x0, refines it and steps with eps_base (syncos);
    step 2 (t = 499 <= t_min) ends on the fused x0 of a prediction that depends on step 1."""
    starts, chunk = (0, 2, 4), 3
    noise = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 1, 2, 2))
    slopes_nb = jnp.array([[0.3, 0.45], [0.5, 0.35], [0.7, 0.55]])
    rng = jax.random.PRNGKey(5)
    config = syncos_config(mode=mode, chunk_frames=chunk, stride=2, num_steps=2, t_min=800,
                           csd_iterations=csd_iterations, csd_learning_rate=0.3, csd_optimizer="sgd")
    got = jax.jit(functools.partial(syncos_sample, _linear_denoiser, config=config, prediction_type="eps"))(
        LINEAR, noise, slopes_nb[:, :, None], None, rng=rng)
    eps_base = jax.random.normal(rng, noise.shape)
    want = _numpy_reference(mode, noise, np.asarray(slopes_nb, np.float64), eps_base, t_min=800,
                            csd_iterations=csd_iterations, lr=0.3, starts=starts, chunk=chunk)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if mode == "syncos":
        co_denoise = _numpy_reference("co_denoise", noise, np.asarray(slopes_nb, np.float64), eps_base, t_min=800,
                                      csd_iterations=0, lr=0.3, starts=starts, chunk=chunk)
        assert np.abs(want - co_denoise).max() > 1e-2


def test_svgd_matches_the_formula():
    rng = np.random.default_rng(0)
    x_nd, g_nd = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    np.testing.assert_allclose(svgd_direction(jnp.asarray(x_nd, jnp.float32), jnp.asarray(g_nd, jnp.float32)),
                               numpy_svgd(x_nd, g_nd), rtol=1e-5, atol=1e-6)
    pair = svgd_direction(jnp.asarray(x_nd[:2], jnp.float32), jnp.asarray(g_nd[:2], jnp.float32))
    np.testing.assert_allclose(pair, numpy_svgd(x_nd[:2], g_nd[:2]), rtol=1e-5, atol=1e-6)
    one = svgd_direction(jnp.asarray(x_nd[:1], jnp.float32), jnp.asarray(g_nd[:1], jnp.float32))
    np.testing.assert_allclose(one, g_nd[:1], rtol=1e-6)


@pytest.mark.parametrize("local, num_frames, field", [
    ((("left", 0, 3), ("up", 4, 8)), 8, r"local\[1\]\.start: .*gap"),
    ((("left", 0, 5), ("up", 4, 8)), 8, r"local\[1\]\.start: .*overlaps"),
    ((("left", 0, 6),), 8, r"local\[0\]\.end: .*gap"),
    ((("left", 0, 9),), 8, r"local\[0\]\.end: .*outside"),
    ((("left", -1, 8),), 8, r"local\[0\]\.start: .*outside"),
    ((("left", 0, 0), ("up", 0, 8)), 8, r"local\[0\]\.end: .*empty"),
    ((("", 0, 8),), 8, r"local\[0\]\.text"),
    ((), 8, r"StructuredPrompt\.local: .*empty"),
])
def test_bad_structured_prompts_name_the_field(local, num_frames, field):
    with pytest.raises(ValueError, match=field):
        StructuredPrompt("a red 3", local).validate(num_frames)


def test_empty_global_prompt_is_named():
    with pytest.raises(ValueError, match="global_prompt"):
        StructuredPrompt(" ", (("left", 0, 8),)).validate(8)


def _counting_denoiser():
    calls = []

    def denoise(x, t_b, cond):
        calls.append(x.shape)
        return 0.5 * x + cond[:, :, None, None, None]

    return denoise, calls


@pytest.mark.parametrize("overrides, field", [
    (dict(chunk_frames=10), r"syncos\.chunk_frames: 10 is longer"),
    (dict(chunk_frames=4, stride=5), r"syncos\.stride: 5 is larger"),
    (dict(chunk_frames=4, stride=0), r"syncos\.stride"),
    (dict(mode="sliding"), r"syncos\.mode"),
])
def test_bad_chunking_fails_before_tracing(overrides, field):
    denoise, calls = _counting_denoiser()
    config = syncos_config(num_steps=2, **overrides)
    with pytest.raises(ValueError, match=field):
        validate_syncos_config(config, 8)
    with pytest.raises(ValueError, match=field):
        jax.jit(functools.partial(syncos_sample, denoise, config=config, prediction_type="eps"))(
            LINEAR, jnp.zeros((1, 8, 1, 1, 1)), jnp.zeros((3, 1, 1)), None, rng=jax.random.PRNGKey(0))
    assert not calls


def test_conditions_need_one_per_chunk():
    denoise, calls = _counting_denoiser()
    config = syncos_config(chunk_frames=4, stride=2, num_steps=2)
    with pytest.raises(ValueError, match=r"cond_chunks: .*\(3, 1\)"):
        syncos_sample(denoise, LINEAR, jnp.zeros((1, 8, 1, 1, 1)), jnp.zeros((2, 1, 1)), None, config=config,
                      prediction_type="eps", rng=jax.random.PRNGKey(0))
    assert not calls


@pytest.mark.parametrize("mode, traces", [("independent", 1), ("co_denoise", 1), ("syncos", 2)])
def test_one_program_whatever_the_step_count(mode, traces):
    """The denoiser is traced once per call site (the step, and CSD's loop), however many steps: the steps are
    a scan, the CSD iterations a while loop, and one call per step denoises every chunk of every video."""
    for num_steps in (3, 6):
        denoise, calls = _counting_denoiser()
        config = syncos_config(mode=mode, chunk_frames=4, stride=2, num_steps=num_steps, csd_iterations=3)
        jaxpr = str(jax.make_jaxpr(functools.partial(syncos_sample, denoise, config=config, prediction_type="eps"))(
            LINEAR, jnp.zeros((2, 8, 1, 1, 1)), jnp.zeros((3, 2, 1)), jnp.zeros((2, 1)), rng=jax.random.PRNGKey(0)))
        assert "scan" in jaxpr
        assert ("while" in jaxpr) == (mode == "syncos")
        assert len(calls) == traces
        assert all(shape[0] == 2 * 3 * 2 for shape in calls)  # CFG x chunks x videos in one call
