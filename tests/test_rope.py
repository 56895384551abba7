"""RoPE: relative-position property, norm preservation, layouts, and Allegro's 3D numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.layers.rope import apply_rope, rope_3d, rope_frequencies

rope_3d_jit = jax.jit(rope_3d, static_argnums=(0, 1),
                      static_argnames=("theta", "interpolation_scale", "interleaved"))
apply_jit = jax.jit(apply_rope, static_argnames=("num_chunks", "interleaved"))


def vectors(seed, length, dim, heads=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(1, length, heads, dim)), jnp.float32)


def scores(x, y):
    """q.k per token pair for single-head (1, L, 1, D) inputs."""
    return np.einsum("ld,md->lm", np.asarray(x[0, :, 0], np.float64), np.asarray(y[0, :, 0], np.float64))


def reference_rotation(x_ld, positions_l, *, theta=10000.0, scale=1.0, interleaved=False):
    """RoPE from its definition, in float64 complex numbers: feature pair j (features j and j + d/2
    rotate-half, 2j and 2j + 1 interleaved) read as z = a + ib is multiplied by
    exp(i * position / scale * theta ** (-2j / d))."""
    x_ld = np.asarray(x_ld, np.float64)
    dim = x_ld.shape[-1]
    pairs = (slice(0, None, 2), slice(1, None, 2)) if interleaved else (slice(0, dim // 2), slice(dim // 2, None))
    angles_lf = np.outer(np.asarray(positions_l, np.float64) / scale, theta ** (-np.arange(dim // 2) * 2.0 / dim))
    z_lf = (x_ld[..., pairs[0]] + 1j * x_ld[..., pairs[1]]) * np.exp(1j * angles_lf)
    out_ld = np.empty_like(x_ld)
    out_ld[..., pairs[0]], out_ld[..., pairs[1]] = z_lf.real, z_lf.imag
    return out_ld


@pytest.mark.parametrize("interleaved", [False, True])
def test_1d_score_depends_only_on_offset(interleaved):
    dim, shift = 16, 5.5
    q, k = vectors(0, 1, dim), vectors(1, 1, dim)
    positions = jnp.asarray([0.0, 3.0, 7.0, 20.0])

    def rotated(x, p):
        cos, sin = rope_frequencies(jnp.asarray([p]), dim, interpolation_scale=2.5,
                                    interleaved=interleaved)
        return apply_rope(x, cos, sin, interleaved=interleaved)

    for p_q in positions:
        np.testing.assert_allclose(
            rotated(q, p_q)[0, :, 0],
            reference_rotation(q[0, :, 0], [p_q], scale=2.5, interleaved=interleaved), rtol=1e-5, atol=1e-5)
        for p_k in positions:
            base = scores(rotated(q, p_q), rotated(k, p_k))
            shifted = scores(rotated(q, p_q + shift), rotated(k, p_k + shift))
            np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-4)
            want = scores(reference_rotation(q[0, :, 0], [p_q], scale=2.5, interleaved=interleaved)[None, :, None],
                          reference_rotation(k[0, :, 0], [p_k], scale=2.5, interleaved=interleaved)[None, :, None])
            np.testing.assert_allclose(base, want, rtol=1e-4, atol=1e-4)
    near = scores(rotated(q, 0.0), rotated(k, 1.0))
    far = scores(rotated(q, 0.0), rotated(k, 9.0))
    assert abs(near - far).max() > 1e-2


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_3d_score_depends_only_on_offset_along_each_axis(axis):
    """Every token pair's score equals the definition's (one 1D rotation per axis on its third of the
    features), and shifting two distinct tokens together along one axis keeps their score."""
    grid, head_dim, scales = (4, 5, 6), 24, (2.2, 2.0, 2.0)
    cos, sin = rope_3d_jit(grid, head_dim, interpolation_scale=scales)
    length = int(np.prod(grid))
    q = jnp.broadcast_to(vectors(2, 1, head_dim), (1, length, 1, head_dim))
    k = jnp.broadcast_to(vectors(3, 1, head_dim), (1, length, 1, head_dim))
    s = scores(apply_jit(q, cos, sin, num_chunks=3), apply_jit(k, cos, sin, num_chunks=3))

    def index(thw):
        t, h, w = thw
        return (t * grid[1] + h) * grid[2] + w

    thw_l3 = np.stack(np.meshgrid(*(np.arange(n) for n in grid), indexing="ij"), axis=-1).reshape(-1, 3)
    chunk = head_dim // 3

    def reference(x):
        x_ld = np.broadcast_to(np.asarray(x[0, :, 0]), (length, head_dim))
        return np.concatenate([reference_rotation(x_ld[:, i * chunk:(i + 1) * chunk], thw_l3[:, i], scale=scales[i])
                               for i in range(3)], axis=-1)

    np.testing.assert_allclose(s, reference(q) @ reference(k).T, rtol=1e-4, atol=1e-4)
    pairs = [((0, 1, 2), (2, 3, 1)), ((1, 0, 0), (0, 3, 4)), ((2, 0, 4), (1, 1, 0))]
    step = np.eye(3, dtype=int)[axis]
    for a, b in pairs:
        a_shifted, b_shifted = tuple(np.add(a, step)), tuple(np.add(b, step))
        np.testing.assert_allclose(s[index(a_shifted), index(b_shifted)], s[index(a), index(b)],
                                   rtol=1e-4, atol=1e-4)
    moved = tuple(np.add((0, 1, 2), step))
    assert abs(s[index((0, 1, 2)), index(moved)] - s[index((0, 1, 2)), index((0, 1, 2))]) > 1e-3


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("num_chunks", [1, 3])
def test_rotation_preserves_norms(num_chunks, interleaved):
    grid, dim = (2, 3, 4), 12
    if num_chunks == 3:
        cos, sin = rope_3d_jit(grid, dim, interleaved=interleaved)
    else:
        cos, sin = rope_frequencies(jnp.arange(24) * 3.7, dim, interleaved=interleaved)
    x = vectors(4, 24, dim, heads=3)
    y = apply_jit(x, cos, sin, num_chunks=num_chunks, interleaved=interleaved)
    assert not np.allclose(y, x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def _half_to_interleaved(dim, num_chunks):
    """Feature permutation taking rotate-half pairs (i, i + d/2) to interleaved pairs (2i, 2i+1)
    within each chunk."""
    size = dim // num_chunks
    within = np.stack([np.arange(size // 2), np.arange(size // 2) + size // 2], axis=-1).reshape(-1)
    return np.concatenate([c * size + within for c in range(num_chunks)])


@pytest.mark.parametrize("num_chunks", [1, 3])
def test_interleaved_equals_rotate_half_after_permutation(num_chunks):
    dim, length = 12, 24
    x = vectors(5, length, dim, heads=2)
    perm = _half_to_interleaved(dim, num_chunks)
    if num_chunks == 3:
        half = rope_3d_jit((2, 3, 4), dim, theta=500.0)
        inter = rope_3d_jit((2, 3, 4), dim, theta=500.0, interleaved=True)
    else:
        positions = jnp.arange(length) + 0.5
        half = rope_frequencies(positions, dim)
        inter = rope_frequencies(positions, dim, interleaved=True)
    np.testing.assert_allclose(inter[0], half[0][:, perm], atol=1e-6)
    want = apply_jit(x, *half, num_chunks=num_chunks)[..., perm]
    got = apply_jit(x[..., perm], *inter, num_chunks=num_chunks, interleaved=True)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _allegro_reference(grid, head_dim, scales, theta=10000.0):
    """diffusers' get_3d_rotary_pos_embed_allegro + apply_rotary_emb_allegro tables, in numpy:
    linspace grids, dim // 3 per axis, cos/sin concatenated [f, f] per axis, gathered per token."""
    dim = head_dim // 3
    freqs = 1.0 / theta ** (np.arange(0, dim, 2)[: dim // 2] / dim)
    tables = []
    for size, scale in zip(grid, scales):
        positions = np.linspace(0, size * (size - 1) / size, size) / scale
        angles = np.outer(positions, freqs)
        tables.append((np.cos(np.concatenate([angles, angles], -1)),
                       np.sin(np.concatenate([angles, angles], -1))))
    t, h, w = np.meshgrid(*(np.arange(n) for n in grid), indexing="ij")
    t, h, w = t.reshape(-1), h.reshape(-1), w.reshape(-1)
    cos = np.concatenate([tables[0][0][t], tables[1][0][h], tables[2][0][w]], -1)
    sin = np.concatenate([tables[0][1][t], tables[1][1][h], tables[2][1][w]], -1)
    return cos, sin


def test_rope_3d_matches_allegro_tables():
    grid, head_dim, scales = (3, 4, 5), 18, (2.2, 2.0, 2.0)
    cos, sin = rope_3d_jit(grid, head_dim, interpolation_scale=scales)
    want_cos, want_sin = _allegro_reference(grid, head_dim, scales)
    np.testing.assert_allclose(cos, want_cos, atol=1e-6)
    np.testing.assert_allclose(sin, want_sin, atol=1e-6)
    token = (1 * 4 + 0) * 5 + 0
    np.testing.assert_allclose(cos[token, 0], np.cos(1 / 2.2), rtol=1e-6)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="divisible by 6"):
        rope_3d((2, 2, 2), 16)
    with pytest.raises(ValueError, match="even"):
        rope_frequencies(jnp.arange(3), 7)
    cos, sin = rope_frequencies(jnp.arange(4), 8)
    with pytest.raises(ValueError, match=r"\(L, R\) with L=5"):
        apply_rope(vectors(0, 5, 8), cos, sin)
