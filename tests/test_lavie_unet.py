"""LaVie's UNet: joint image-video frames, per-frame captions and config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.checks import ConfigError
from t2v_jax.models import lavie_unet
from t2v_jax.models.lavie_unet import LaVieUNet, frame_contexts

_VIDEO, _IMAGES = 3, 2


def _randomise(params, rng):
    """Every parameter random, so the temporal output projections are no longer zero."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(rng, len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.fixture(scope="module")
def model():
    cfg = lavie_unet.default_config()
    cfg.update(block_out_channels=(16, 16), num_heads=2, cross_attention_dim=8, norm_num_groups=4, in_channels=4,
               out_channels=4)
    unet = LaVieUNet(cfg)
    x = jnp.zeros((1, _VIDEO + _IMAGES, 4, 4, 4))
    context = jnp.zeros((1, 1 + _IMAGES, 3, 8))
    # Only the shapes: every parameter is drawn anew below (tracing takes 1 s, compiling the init 17 s).
    shapes = jax.eval_shape(lambda rng: unet.init(rng, x, jnp.zeros((1,)), context,
                                                  jnp.ones((1, 1 + _IMAGES, 3), bool), num_images=_IMAGES),
                            jax.random.key(0))
    params = _randomise(shapes, jax.random.key(1))
    return jax.jit(unet.apply, static_argnames="num_images"), params


def _inputs(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, _VIDEO + _IMAGES, 4, 4, 4)).astype(np.float32)
    context = rng.standard_normal((1, 1 + _IMAGES, 3, 8)).astype(np.float32)
    return x, context, np.ones((1, 1 + _IMAGES, 3), bool)


def test_image_frames_are_independent_of_the_video_and_of_each_other(model):
    apply, params = model
    x, context, mask = _inputs(0)
    base = np.asarray(apply(params, x, jnp.array([500.0]), context, mask, num_images=_IMAGES))
    changed_video = x.copy()
    changed_video[:, 0] += 1.0
    out = np.asarray(apply(params, changed_video, jnp.array([500.0]), context, mask, num_images=_IMAGES))
    # The video frames see each other through temporal attention; the images see neither them nor each other.
    assert np.abs(out[:, 1:_VIDEO] - base[:, 1:_VIDEO]).max() > 1e-3
    np.testing.assert_allclose(out[:, _VIDEO:], base[:, _VIDEO:], atol=1e-5)
    changed_caption = context.copy()
    changed_caption[:, 1] += 1.0
    out = np.asarray(apply(params, x, jnp.array([500.0]), changed_caption, mask, num_images=_IMAGES))
    # Caption 1 belongs to the first image only.
    assert np.abs(out[:, _VIDEO] - base[:, _VIDEO]).max() > 1e-3
    np.testing.assert_allclose(out[:, :_VIDEO], base[:, :_VIDEO], atol=1e-5)
    np.testing.assert_allclose(out[:, _VIDEO + 1:], base[:, _VIDEO + 1:], atol=1e-5)


def test_frame_contexts_give_the_video_caption_to_video_frames():
    context = jnp.arange(1 * 3 * 2 * 1, dtype=jnp.float32).reshape(1, 3, 2, 1)
    per_frame, mask = frame_contexts(context, jnp.ones((1, 3, 2), bool), frames=5, num_images=2)
    np.testing.assert_array_equal(np.asarray(per_frame[:, :, 0]), [[0, 1]] * 3 + [[2, 3], [4, 5]])
    assert mask.shape == (5, 2)
    with pytest.raises(ValueError, match="1 \\+ 1 captions"):
        frame_contexts(context, jnp.ones((1, 3, 2), bool), frames=5, num_images=1)


@pytest.mark.parametrize("field,value,message", [
    ("num_heads", 3, "unet.num_heads"),
    ("norm_num_groups", 5, "unet.norm_num_groups"),
    ("attention_levels", (True,), "unet.attention_levels"),
    ("rotary_dim", 3, "unet.rotary_dim"),
])
def test_config_errors_name_the_field(field, value, message):
    cfg = lavie_unet.default_config()
    cfg[field] = value
    with pytest.raises(ConfigError, match=message):
        lavie_unet.validate_config(cfg)
