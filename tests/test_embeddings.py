"""Timestep embedding numbers (diffusers), AdaLN-single, patchify round trip, PatchEmbed3D."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.layers.embeddings import (AdaLNSingle, PatchEmbed3D, TimestepEmbedder, modulate,
                                       patchify, timestep_embedding, unpatchify)


def diffusers_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift, max_period=10000):
    """diffusers.models.embeddings.get_timestep_embedding, transcribed to float64 numpy."""
    half = dim // 2
    exponent = -math.log(max_period) * np.arange(half) / (half - downscale_freq_shift)
    emb = np.asarray(t, np.float64)[:, None] * np.exp(exponent)[None, :]
    emb = np.concatenate([np.sin(emb), np.cos(emb)], axis=-1)
    if flip_sin_to_cos:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb


@pytest.mark.parametrize("dim,flip,shift", [(256, True, 0.0), (320, True, 0.0), (64, False, 1.0),
                                            (33, True, 1.0)])
def test_timestep_embedding_matches_diffusers(dim, flip, shift):
    t = np.array([0.0, 1.0, 17.5, 999.0])
    got = timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert got.shape == (4, dim) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, diffusers_timestep_embedding(t, dim, flip, shift), atol=2e-4)


def test_timestep_embedding_hand_computed_values():
    got = np.asarray(timestep_embedding(jnp.asarray([1.0]), 4, flip_sin_to_cos=False,
                                        downscale_freq_shift=1.0))[0]
    np.testing.assert_allclose(got, [math.sin(1.0), math.sin(1e-4), math.cos(1.0), math.cos(1e-4)],
                               rtol=1e-6)
    got = np.asarray(timestep_embedding(jnp.asarray([2.0]), 4))[0]
    np.testing.assert_allclose(got, [math.cos(2.0), math.cos(0.02), math.sin(2.0), math.sin(0.02)],
                               rtol=1e-6)


@pytest.mark.ref
def test_timestep_embedding_against_installed_diffusers():
    torch = pytest.importorskip("torch")
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = np.array([0.0, 3.0, 500.25, 999.0], np.float32)
    want = embeddings.get_timestep_embedding(torch.from_numpy(t), 256, flip_sin_to_cos=True,
                                             downscale_freq_shift=0).numpy()
    np.testing.assert_allclose(timestep_embedding(jnp.asarray(t), 256), want, atol=1e-4)


def test_adaln_single_matches_manual_math():
    width, batch = 8, 3
    t = jnp.asarray([0.0, 10.0, 999.0])
    module = AdaLNSingle(width, frequency_dim=16)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), t)["params"])
    modulation, emb = jax.jit(module.apply)({"params": params}, t)
    assert modulation.shape == (batch, 6, width) and emb.shape == (batch, width)

    def dense(p, x):
        return x @ np.asarray(p["kernel"]) + np.asarray(p["bias"])

    def silu(x):
        return x / (1 + np.exp(-x))

    mlp = params["timestep_embedder"]
    freq = diffusers_timestep_embedding(np.asarray(t), 16, True, 0.0)
    want_emb = dense(mlp["linear_2"], silu(dense(mlp["linear_1"], freq)))
    np.testing.assert_allclose(emb, want_emb, rtol=1e-5, atol=1e-5)
    want_mod = dense(params["linear"], silu(want_emb)).reshape(batch, 6, width)
    np.testing.assert_allclose(modulation, want_mod, rtol=1e-5, atol=1e-5)
    assert not np.allclose(modulation[0], modulation[2])


def test_timestep_embedder_uses_its_frequency_dim():
    module = TimestepEmbedder(width=6, frequency_dim=10)
    variables = module.init(jax.random.key(1), jnp.zeros((2,)))
    assert variables["params"]["linear_1"]["kernel"].value.shape == (10, 6)


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 1, 3), (2, 2, 2)])
def test_patchify_unpatchify_invert_each_other(patch):
    shape = (2, 4, 6, 6, 3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    tokens = patchify(x, patch)
    grid = (4 // patch[0], 6 // patch[1], 6 // patch[2])
    assert tokens.shape == (2, int(np.prod(grid)), int(np.prod(patch)) * 3)
    np.testing.assert_array_equal(unpatchify(tokens, grid, patch, 3), x)
    np.testing.assert_array_equal(patchify(unpatchify(tokens, grid, patch, 3), patch), tokens)


def test_patchify_token_and_feature_order():
    """Token l = (t, h, w) t-major; features (pt, ph, pw, c) with c fastest (Allegro's order)."""
    patch, shape = (1, 2, 2), (1, 2, 4, 6, 2)
    x = np.arange(np.prod(shape)).reshape(shape)
    tokens = np.asarray(patchify(jnp.asarray(x), patch))
    t, h, w = 1, 1, 2
    token = (t * 2 + h) * 3 + w
    want = x[0, t, 2 * h:2 * h + 2, 2 * w:2 * w + 2, :].reshape(-1)
    np.testing.assert_array_equal(tokens[0, token], want)
    with pytest.raises(ValueError, match="does not divide"):
        patchify(jnp.asarray(x), (1, 3, 2))


def test_patch_embed_equals_strided_conv():
    patch, width = (1, 2, 2), 5
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2, 4, 4, 3)), jnp.float32)
    module = PatchEmbed3D(width, patch)
    params = nn.meta.unbox(module.init(jax.random.key(2), x)["params"])
    out = jax.jit(module.apply)({"params": params}, x)
    kernel = params["proj"]["kernel"].reshape(patch + (3, width))
    conv = jax.lax.conv_general_dilated(x, kernel, window_strides=patch, padding="VALID",
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    conv = conv + params["proj"]["bias"]
    np.testing.assert_allclose(out, conv.reshape(2, -1, width), rtol=1e-5, atol=1e-5)


def test_modulate():
    x, shift, scale = jnp.asarray(2.0), jnp.asarray(0.5), jnp.asarray(-0.25)
    assert float(modulate(x, shift, scale)) == 2.0 * 0.75 + 0.5
    assert float(modulate(x, 0.0, 0.0)) == 2.0


def test_position_embedding_3d_is_each_axis_sinusoid_of_its_index():
    from t2v_jax.layers.embeddings import position_embedding_3d, timestep_embedding

    grid, width = (3, 4, 5), 50
    table = np.asarray(position_embedding_3d(grid, width)).reshape(*grid, width)
    sizes = (18, 16, 16)
    index = (2, 1, 3)
    start = 0
    for axis, (size, position) in enumerate(zip(sizes, index)):
        expected = np.asarray(timestep_embedding(np.array([position], np.float32), size))[0]
        np.testing.assert_allclose(table[index][start:start + size], expected, rtol=1e-6)
        start += size
    flat = table.reshape(-1, width)
    assert len(np.unique(np.round(flat, 5), axis=0)) == np.prod(grid)  # every token its own position
