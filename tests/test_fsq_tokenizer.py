"""FlashVideo's FSQ video tokenizer: FSQ grid and index maps, shapes from config, config errors, training."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.checks import ConfigError
from t2v_jax.data.loader import make_loader
from t2v_jax.models import fsq_tokenizer
from t2v_jax.train.stages import TokenizerStage
from t2v_jax.train.trainer import fit, make_rng, read_metrics
from tiny import load_config

LEVEL_SETS = ((8, 5, 5, 5), (7, 6), (2, 3, 4))


def _tiny_config(data_dir):
    config = load_config("flashvideo")
    config.data.update(dir=data_dir, train_size=64, test_size=16)
    config.tokenizer.update(channels=(4, 8), num_res_blocks=0, norm_num_groups=2, levels=(4, 3))
    config.train_tokenizer.update(num_steps=12, batch_size=4, learning_rate=1e-2, warmup_steps=1, log_every=1,
                           checkpoint_every=12, frames_per_video=3)
    return config


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_fsq_indices_and_codes_are_exact_inverses_over_all_codes(levels):
    fsq = fsq_tokenizer.FSQ(levels)
    assert fsq.codebook_size == int(np.prod(levels))
    indices = jnp.arange(fsq.codebook_size, dtype=jnp.int32)
    codes = fsq.indices_to_codes(indices)
    assert codes.shape == (fsq.codebook_size, len(levels)) and codes.dtype == jnp.float32
    np.testing.assert_array_equal(fsq.codes_to_indices(codes), indices)
    assert len(np.unique(np.asarray(codes), axis=0)) == fsq.codebook_size
    # Every code of the grid is some index's code: the maps are bijections onto the whole grid.
    half = np.array([level // 2 for level in levels])
    grid = np.array(list(itertools.product(*[range(level) for level in levels]))) - half
    np.testing.assert_array_equal(np.sort(fsq.codes_to_indices(grid / half)), np.asarray(indices))


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_quantised_values_lie_on_the_grid_and_use_every_level(levels):
    fsq = fsq_tokenizer.FSQ(levels)
    z = jnp.asarray(np.random.default_rng(0).normal(scale=3.0, size=(4096, len(levels))), jnp.float32)
    z = z.at[:2].set(jnp.array([[-1e6] * len(levels), [1e6] * len(levels)]))
    integers = np.asarray(jax.jit(fsq.quantize)(z)) * np.array([level // 2 for level in levels])
    np.testing.assert_allclose(integers, np.round(integers), atol=1e-6)
    for i, level in enumerate(levels):
        low = -(level // 2)
        expected = np.arange(low, low + level)  # even L: -L/2..L/2-1, odd L: -(L-1)/2..(L-1)/2
        np.testing.assert_array_equal(np.unique(np.round(integers[:, i])), expected)
    np.testing.assert_array_equal(jax.jit(fsq.quantize)(jnp.zeros((1, len(levels)))), 0.0)  # z = 0 is code 0


def test_straight_through_gradient_is_the_identity_through_rounding():
    x = jnp.linspace(-3.0, 3.0, 37)
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(fsq_tokenizer.round_ste(v)))(x), np.ones(37))
    fsq = fsq_tokenizer.FSQ((8, 5))
    z = jnp.asarray(np.random.default_rng(1).normal(size=(16, 2)), jnp.float32)
    half = jnp.array([4.0, 2.0])
    grad_quantize = jax.grad(lambda v: jnp.sum(fsq.quantize(v) * jnp.arange(1.0, 3.0)))(z)
    grad_bound = jax.grad(lambda v: jnp.sum(fsq.bound(v) / half * jnp.arange(1.0, 3.0)))(z)
    np.testing.assert_allclose(grad_quantize, grad_bound, rtol=1e-6)
    assert np.all(np.asarray(grad_quantize) > 0)


def test_encode_decode_shapes_dtypes_and_tokens_per_frame():
    cfg = fsq_tokenizer.default_config()
    cfg.update(channels=(4, 8, 8), norm_num_groups=2)
    tokenizer = fsq_tokenizer.VideoTokenizer(cfg)
    video = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 3, 16, 24, 3)), jnp.float32)

    @jax.jit  # one compile instead of hundreds of eagerly dispatched ops
    def run(video_bthwc):
        params = tokenizer.init(make_rng(0), video_bthwc)
        indices = tokenizer.apply(params, video_bthwc, method=tokenizer.encode)
        decoded = tokenizer.apply(params, indices, method=tokenizer.decode)
        return indices, decoded, *tokenizer.apply(params, video_bthwc)

    indices, decoded, recon, call_indices = run(video)
    assert fsq_tokenizer.token_grid(cfg, 16, 24) == (4, 6)
    assert indices.shape == (2, 3, 4, 6) and indices.dtype == jnp.int32
    assert fsq_tokenizer.tokens_per_frame(cfg, 16, 24) == indices.shape[2] * indices.shape[3] == 24
    assert 0 <= int(indices.min()) and int(indices.max()) < fsq_tokenizer.codebook_size(cfg) == 1000
    assert len(np.unique(np.asarray(indices))) > 1
    assert decoded.shape == video.shape and decoded.dtype == jnp.float32
    np.testing.assert_array_equal(call_indices, indices)
    np.testing.assert_allclose(recon, decoded, atol=1e-5)  # decoding indices == decoding the codes


def test_flashvideo_config_tokenizes_frames_into_a_4x4_grid_of_1000_codes():
    config = load_config("flashvideo")
    fsq_tokenizer.validate_config(config.tokenizer, config.data.canvas, config.data.canvas)
    assert fsq_tokenizer.tokens_per_frame(config.tokenizer, config.data.canvas, config.data.canvas) == 16
    assert fsq_tokenizer.codebook_size(config.tokenizer) == 1000


@pytest.mark.parametrize("field, value, height, message", [
    ("levels", (8, 1, 5), 16, "config.tokenizer.levels: (8, 1, 5) must be a non-empty tuple of integers >= 2"),
    ("levels", (), 16, "config.tokenizer.levels"),
    ("norm_num_groups", 5, 16, "config.tokenizer.norm_num_groups: 5 groups do not divide tokenizer.channels=(16, 32, 64)"),
    ("channels", (16, 32, 64), 18, "config.data.canvas: 18 px is not divisible by the tokenizer's x4"),
])
def test_validate_config_errors_name_the_field(field, value, height, message):
    cfg = fsq_tokenizer.default_config()
    cfg[field] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fsq_tokenizer.validate_config(cfg, height, 16)


def test_codebook_usage_and_perplexity():
    usage_fn = jax.jit(fsq_tokenizer.codebook_usage, static_argnums=1)
    usage, perplexity = usage_fn(jnp.array([[0, 1], [2, 3]]), 8)
    assert float(usage) == 0.5
    np.testing.assert_allclose(float(perplexity), 4.0, rtol=1e-6)
    usage, perplexity = usage_fn(jnp.zeros((2, 2), jnp.int32), 8)
    assert float(usage) == 1 / 8 and float(perplexity) == 1.0


def test_fit_vq_stage_lowers_the_reconstruction_loss(tmp_path):
    config = _tiny_config(str(tmp_path / "data"))
    with pytest.raises(ConfigError, match="config.data.canvas"):
        bad = _tiny_config(str(tmp_path / "data"))
        bad.tokenizer.channels = (4, 8, 8, 8, 8, 8)  # x32 downsampling of 16 px frames
        TokenizerStage(bad)
    iterator = iter(make_loader(config.data, "train", batch_size=config.train_tokenizer.batch_size, seed=0))
    state = fit(TokenizerStage(config), config.train_tokenizer, iterator, str(tmp_path / "run"), mesh_cfg=config.mesh,
                seed=0, progress=False)
    assert int(state.step) == 12
    metrics = read_metrics(str(tmp_path / "run"))
    losses = [m["loss"] for m in metrics]
    assert np.all(np.isfinite(losses)) and len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    assert 0 < metrics[-1]["codebook_usage"] <= 1 and metrics[-1]["perplexity"] >= 1
