"""Numbers of the norms and 3D convs against plain numpy re-implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t2v_jax.layers.conv3d import CausalConv3d, TemporalConv, pad_time
from t2v_jax.layers.norms import GroupNorm, LayerNorm, RMSNorm


def _randomise(params, seed):
    """Non-trivial scale/bias so that a wrong affine step shows in the numbers."""
    leaves, treedef = jax.tree_util.tree_flatten(nn.unbox(params))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + 0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


def _np_params(params):
    return jax.tree_util.tree_map(np.asarray, params)["params"]


def test_layer_norm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32) * 3 + 1
    module = LayerNorm(eps=1e-6)
    params = _randomise(module.init(jax.random.key(0), x), 1)
    p = _np_params(params)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6) * p["scale"] + p["bias"]
    np.testing.assert_allclose(module.apply(params, x), ref, atol=1e-5)
    bare = LayerNorm(use_affine=False)
    assert bare.init(jax.random.key(0), x) == {}
    y = bare.apply({}, x)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(-1), 1, atol=1e-3)


def test_rms_norm_matches_numpy_and_keeps_dtype():
    x = np.random.default_rng(1).normal(size=(2, 5, 8)).astype(np.float32) + 2
    module = RMSNorm(eps=1e-6)
    params = _randomise(module.init(jax.random.key(0), x), 2)
    ref = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * _np_params(params)["scale"]
    np.testing.assert_allclose(module.apply(params, x), ref, atol=1e-5)
    assert module.apply(params, jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("per_frame", [True, False])
def test_group_norm_matches_numpy(per_frame):
    b, t, h, w, c, g = 2, 3, 4, 5, 8, 4
    x = np.random.default_rng(2).normal(size=(b, t, h, w, c)).astype(np.float32)
    x = x * np.arange(1, t + 1, dtype=np.float32)[None, :, None, None, None]  # frames differ in scale
    inp = x.reshape(b * t, h, w, c) if per_frame else x
    module = GroupNorm(num_groups=g, eps=1e-6)
    params = _randomise(module.init(jax.random.key(0), inp), 3)
    p = _np_params(params)
    xg = inp.reshape(inp.shape[:-1] + (g, c // g))
    axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
    ref = (xg - xg.mean(axes, keepdims=True)) / np.sqrt(xg.var(axes, keepdims=True) + 1e-6)
    ref = ref.reshape(inp.shape) * p["scale"] + p["bias"]
    np.testing.assert_allclose(module.apply(params, inp), ref, atol=1e-4)


def test_group_norm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="num_groups=4"):
        GroupNorm(num_groups=4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 6)))


def _np_conv3d(x, kernel, bias, strides=(1, 1, 1)):
    """Direct cross-correlation of an already padded (B, T, H, W, Ci) array, valid positions only."""
    kt, kh, kw = kernel.shape[:3]
    st, sh, sw = strides
    b, t, h, w, _ = x.shape
    ot, oh, ow = (t - kt) // st + 1, (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((b, ot, oh, ow, kernel.shape[-1]), np.float64)
    for i in range(kt):
        for j in range(kh):
            for k in range(kw):
                patch = x[:, i : i + st * ot : st, j : j + sh * oh : sh, k : k + sw * ow : sw]
                out += np.einsum("bthwi,io->bthwo", patch, kernel[i, j, k])
    return out + bias


def _conv_params(module, x, seed):
    params = _randomise(module.init(jax.random.key(seed), x), seed)
    p = _np_params(params)
    return params, p["kernel"].astype(np.float64), p["bias"].astype(np.float64)


def test_causal_conv_replicate_padding_matches_numpy():
    x = np.random.default_rng(3).normal(size=(2, 5, 6, 6, 3)).astype(np.float32)
    module = CausalConv3d(features=4, kernel_size=(3, 3, 3))
    params, kernel, bias = _conv_params(module, x, 4)
    padded = np.pad(x, [(0, 0), (2, 0), (0, 0), (0, 0), (0, 0)], mode="edge")
    padded = np.pad(padded, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])
    np.testing.assert_allclose(module.apply(params, x), _np_conv3d(padded, kernel, bias), atol=1e-4)


def test_causal_conv_does_not_see_the_future():
    x = jax.random.normal(jax.random.key(5), (1, 8, 6, 6, 3))
    module = CausalConv3d(features=4, kernel_size=(3, 3, 3), temporal_padding="zeros")
    params = module.init(jax.random.key(6), x)
    y = module.apply(params, x)
    t = 4
    x_future = x.at[:, t + 1 :].add(jax.random.normal(jax.random.key(7), x[:, t + 1 :].shape))
    y_future = module.apply(params, x_future)
    np.testing.assert_array_equal(y[:, : t + 1], y_future[:, : t + 1])
    assert float(jnp.abs(y[:, t + 1] - y_future[:, t + 1]).min()) > 0


def test_temporal_conv_replicate_and_zero_padding_match_numpy():
    x = np.random.default_rng(8).normal(size=(2, 6, 3, 4, 5)).astype(np.float32)
    for mode, np_mode in (("replicate", "edge"), ("zeros", "constant")):
        module = TemporalConv(features=5, temporal_padding=mode)
        params, kernel, bias = _conv_params(module, x, 9)
        padded = np.pad(x, [(0, 0), (1, 1), (0, 0), (0, 0), (0, 0)], mode=np_mode)
        np.testing.assert_allclose(module.apply(params, x), _np_conv3d(padded, kernel, bias), atol=1e-4)


def test_temporal_conv_valid_stride_halves_frames():
    x = np.random.default_rng(10).normal(size=(1, 6, 4, 4, 3)).astype(np.float32)
    module = TemporalConv(features=3, kernel_size=(2, 3, 3), strides=(2, 1, 1), temporal_padding="valid")
    params, kernel, bias = _conv_params(module, x, 11)
    padded = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])
    y = module.apply(params, x)
    assert y.shape == (1, 3, 4, 4, 3)
    np.testing.assert_allclose(y, _np_conv3d(padded, kernel, bias, strides=(2, 1, 1)), atol=1e-4)


def test_pad_time_rejects_unknown_mode():
    with pytest.raises(ValueError, match="reflect"):
        pad_time(jnp.zeros((1, 2, 1, 1, 1)), 1, 1, "reflect")
