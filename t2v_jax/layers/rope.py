"""Rotary position embeddings (RoPE), 1D and 3D.

Rotating q and k by position-dependent angles makes q.k depend only on the position offset,
which is why Allegro uses it for video tokens (one rotation per axis t, h, w) and LaVie for
its temporal attention. Two feature layouts exist in the wild and both are supported:

- rotate-half (GPT-NeoX, diffusers/Allegro): feature i pairs with i + d/2;
  cos/sin are `concat([cos(p f), cos(p f)])`.
- interleaved (GPT-J, complex pairs): feature 2i pairs with 2i + 1;
  cos/sin are `repeat(cos(p f), 2)`.

Position interpolation divides positions by a per-axis scale so that a model trained on a
short/small grid can be run on a longer/larger one (Allegro: (2.2, 2, 2) for 88 x 720p).
"""

import jax.numpy as jnp


def rope_frequencies(positions_l, dim: int, *, theta: float = 10000.0,
                     interpolation_scale: float = 1.0, interleaved: bool = False):
    """(cos_ld, sin_ld) for `positions_l` (any float or int positions, may be traced)."""
    if dim % 2:
        raise ValueError(f"RoPE needs an even feature dim, got {dim}")
    inv_freq_f = 1.0 / theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    positions_l = jnp.asarray(positions_l, jnp.float32) / interpolation_scale
    angles_lf = positions_l[:, None] * inv_freq_f[None, :]
    if interleaved:
        angles_ld = jnp.repeat(angles_lf, 2, axis=-1)
    else:
        angles_ld = jnp.concatenate([angles_lf, angles_lf], axis=-1)
    return jnp.cos(angles_ld), jnp.sin(angles_ld)


def rope_3d(grid_thw, head_dim: int, *, theta: float = 10000.0,
            interpolation_scale=(1.0, 1.0, 1.0), interleaved: bool = False):
    """Allegro's 3D RoPE: head_dim split in three equal chunks for (t, h, w), each its own 1D RoPE.

    Tokens are flattened t-major, then h, then w (as `patchify`); returns (cos_ld, sin_ld) with
    L = T*H*W, to be applied with `apply_rope(..., num_chunks=3)`.
    """
    if head_dim % 6:
        raise ValueError(f"3D RoPE needs head_dim divisible by 6 (three even chunks), got {head_dim}")
    chunk = head_dim // 3
    frames, height, width = grid_thw
    tables = [rope_frequencies(jnp.arange(size), chunk, theta=theta, interpolation_scale=scale,
                               interleaved=interleaved)
              for size, scale in zip((frames, height, width), interpolation_scale)]

    def combine(t_td, h_hd, w_wd):
        shape = (frames, height, width, chunk)
        parts = (jnp.broadcast_to(t_td[:, None, None, :], shape),
                 jnp.broadcast_to(h_hd[None, :, None, :], shape),
                 jnp.broadcast_to(w_wd[None, None, :, :], shape))
        return jnp.concatenate(parts, axis=-1).reshape(frames * height * width, head_dim)

    cos_ld = combine(*(cos for cos, _ in tables))
    sin_ld = combine(*(sin for _, sin in tables))
    return cos_ld, sin_ld


def _rotate(x, interleaved: bool):
    """The 90-degree partner of each feature pair: (x1, x2) -> (-x2, x1)."""
    if interleaved:
        pairs = x.reshape(x.shape[:-1] + (-1, 2))
        return jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    first, second = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-second, first], axis=-1)


def apply_rope(x_blhd, cos_ld, sin_ld, *, num_chunks: int = 1, interleaved: bool = False):
    """Rotates x (..., L, H, D) by the angles of (cos_ld, sin_ld), pairing features within each
    of `num_chunks` equal chunks of D (3 for `rope_3d`). Computed in float32.

    cos/sin narrower than D (L, R < D) rotate the first R features only and pass the rest through
    (partial rotary, as LaVie's temporal attention: R = 32 of each head)."""
    dim = x_blhd.shape[-1]
    rotary_dim = cos_ld.shape[-1]
    if cos_ld.shape[0] != x_blhd.shape[-3] or not 0 < rotary_dim <= dim:
        raise ValueError(f"cos/sin must have shape (L, R) with L={x_blhd.shape[-3]} and R <= D={dim}, "
                         f"got {cos_ld.shape}")
    if rotary_dim < dim:
        rotated = apply_rope(x_blhd[..., :rotary_dim], cos_ld, sin_ld, num_chunks=num_chunks,
                             interleaved=interleaved)
        return jnp.concatenate([rotated, x_blhd[..., rotary_dim:]], axis=-1)
    if dim % (2 * num_chunks):
        raise ValueError(f"head dim {dim} does not split into {num_chunks} even chunks")
    x = x_blhd.astype(jnp.float32)
    chunked = x.reshape(x.shape[:-1] + (num_chunks, dim // num_chunks))
    rotated = _rotate(chunked, interleaved).reshape(x.shape)
    out = x * cos_ld[:, None, :] + rotated * sin_ld[:, None, :]
    return out.astype(x_blhd.dtype)
