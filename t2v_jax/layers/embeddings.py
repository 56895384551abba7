"""Timestep embeddings, AdaLN-single conditioning and 3D patch embedding for diffusion transformers.

The numbers follow diffusers (`get_timestep_embedding`, `TimestepEmbedding`,
`AdaLayerNormSingle`) so that converted PixArt/Allegro weights reproduce the original outputs.
Parameter names match the diffusers module names for the same reason.
"""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from t2v_jax.layers.dense import dense


def timestep_embedding(t_b, dim: int, *, max_period: float = 10000, flip_sin_to_cos: bool = True,
                       downscale_freq_shift: float = 0.0):
    """Sinusoidal embedding of (possibly fractional) timesteps, as diffusers' get_timestep_embedding.

    frequencies exp(-ln(max_period) * i / (dim/2 - downscale_freq_shift)); [sin, cos] halves,
    swapped to [cos, sin] by `flip_sin_to_cos`; odd `dim` gets a zero last column. Always float32:
    timesteps up to 1000 lose their fractional part in bfloat16.
    """
    half = dim // 2
    exponent_h = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
    angles_bh = jnp.asarray(t_b, jnp.float32)[:, None] * jnp.exp(exponent_h)[None, :]
    sin_bh, cos_bh = jnp.sin(angles_bh), jnp.cos(angles_bh)
    emb_bd = jnp.concatenate([cos_bh, sin_bh] if flip_sin_to_cos else [sin_bh, cos_bh], axis=-1)
    if dim % 2:
        emb_bd = jnp.pad(emb_bd, ((0, 0), (0, 1)))
    return emb_bd


def position_embedding_3d(grid_thw, width: int):
    """Fixed sinusoidal absolute positions (L, width) for a t-major (t, h, w) token grid: the width is
    split in three nearly equal parts, each the `timestep_embedding` of the token's index on one axis.

    RoPE gives attention relative offsets only, and with few positions per axis and a small head most
    of its frequencies barely turn; an additive absolute signal tells every token where it is.
    """
    sizes = (width - 2 * (width // 3), width // 3, width // 3)
    t, h, w = (jnp.arange(n, dtype=jnp.float32) for n in grid_thw)
    t_ld, h_ld, w_ld = (timestep_embedding(positions, size) for positions, size in zip((t, h, w), sizes))
    nt, nh, nw = grid_thw
    return jnp.concatenate([
        jnp.broadcast_to(t_ld[:, None, None], (nt, nh, nw, sizes[0])),
        jnp.broadcast_to(h_ld[None, :, None], (nt, nh, nw, sizes[1])),
        jnp.broadcast_to(w_ld[None, None, :], (nt, nh, nw, sizes[2])),
    ], axis=-1).reshape(nt * nh * nw, width)


class TimestepEmbedder(nn.Module):
    """sinusoid(t) -> Dense -> SiLU -> Dense (diffusers TimestepEmbedding after Timesteps)."""

    width: int
    frequency_dim: int = 256
    flip_sin_to_cos: bool = True
    downscale_freq_shift: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t_b):
        freq_bf = timestep_embedding(t_b, self.frequency_dim, flip_sin_to_cos=self.flip_sin_to_cos,
                                     downscale_freq_shift=self.downscale_freq_shift)
        h_bw = dense(self.width, (None, "mlp"), dtype=self.dtype, param_dtype=self.param_dtype,
                     name="linear_1")(freq_bf)
        return dense(self.width, ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype,
                     name="linear_2")(nn.silu(h_bw))


class AdaLNSingle(nn.Module):
    """PixArt-alpha/Allegro AdaLN-single: one timestep MLP shared by all blocks.

    Returns (modulation_b6w, embedded_timestep_bw): the six rows of modulation are shift, scale
    and gate for self-attention, then shift, scale and gate for the MLP; each block adds its own
    learned (6, width) table. The embedded timestep feeds the final layer's (2, width) table.
    """

    width: int
    frequency_dim: int = 256
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t_b, condition_bw=None):
        """`condition_bw`, when given, is added to the embedded timestep (a pooled caption, say), so
        every block's modulation sees it."""
        emb_bw = TimestepEmbedder(self.width, self.frequency_dim, dtype=self.dtype,
                                  param_dtype=self.param_dtype, name="timestep_embedder")(t_b)
        if condition_bw is not None:
            emb_bw = emb_bw + condition_bw.astype(emb_bw.dtype)
        modulation = dense(6 * self.width, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype,
                           name="linear")(nn.silu(emb_bw))
        return modulation.reshape(-1, 6, self.width), emb_bw


def patchify(x_bthwc, patch_thw):
    """(B, T, H, W, C) -> (B, L, pt*ph*pw*C); tokens t-major then h then w, features (pt, ph, pw, c)
    with c fastest, the order Allegro's proj_out/unpatchify uses."""
    batch, frames, height, width, channels = x_bthwc.shape
    pt, ph, pw = patch_thw
    if frames % pt or height % ph or width % pw:
        raise ValueError(f"patch {tuple(patch_thw)} does not divide the input (T, H, W)="
                         f"{(frames, height, width)}")
    x = x_bthwc.reshape(batch, frames // pt, pt, height // ph, ph, width // pw, pw, channels)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(batch, (frames // pt) * (height // ph) * (width // pw), pt * ph * pw * channels)


def unpatchify(tokens_bln, grid_thw, patch_thw, channels: int):
    """Inverse of `patchify`: (B, T'*H'*W', pt*ph*pw*C) -> (B, T'pt, H'ph, W'pw, C)."""
    batch = tokens_bln.shape[0]
    gt, gh, gw = grid_thw
    pt, ph, pw = patch_thw
    x = tokens_bln.reshape(batch, gt, gh, gw, pt, ph, pw, channels)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(batch, gt * pt, gh * ph, gw * pw, channels)


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3D patches -> width; a Dense on patchified tokens equals a strided Conv3d
    with kernel = stride = patch (Allegro's per-frame 2x2 conv when pt = 1)."""

    width: int
    patch_thw: tuple
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bthwc):
        tokens_bln = patchify(x_bthwc, self.patch_thw)
        return dense(self.width, (None, "embed"), dtype=self.dtype, param_dtype=self.param_dtype,
                     name="proj")(tokens_bln)


def modulate(x, shift, scale):
    """AdaLN modulation; (1 + scale) so that a zero modulation is the identity."""
    return x * (1 + scale) + shift
