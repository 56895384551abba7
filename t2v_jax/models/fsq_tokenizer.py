"""FlashVideo's discrete video tokenizer: a per-frame conv autoencoder with finite scalar quantization.

FSQ (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple"): the encoder projects every
token to `len(levels)` scalars; scalar i is bounded to `levels[i]` integer values with tanh and rounded
with a straight-through gradient. The implicit codebook is the product grid, `prod(levels)` codes, with
no codebook loss, no commitment loss and no dead codes to revive. Bounding follows the paper's reference
code: `tanh(z + shift) * half_l - offset` with `half_l = (L - 1)(1 - eps) / 2`, and for even L an offset
of 1/2 and the reference code's shift `tan(offset / half_l)` (close to atanh(offset / half_l), which would
put z = 0 exactly on code 0 but is undefined for L = 2), so that rounding yields exactly L integers: {-L/2, ..., L/2 - 1} for even L, {-(L-1)/2, ..., (L-1)/2} for odd L. Codes are those
integers divided by L // 2, in [-1, 1]; a code's index is its mixed-radix number (dimension 0 the least
significant digit).

The tokenizer works on each frame independently (FlashVideo's RetNet models time), so a video
`(B, T, H, W, 3)` in [-1, 1] becomes `(B, T, h, w)` int32 token indices. Architecture: conv_in, then one
level per entry of `channels` with `num_res_blocks` `ResnetBlock2D`s each (the Allegro VAE's per-frame
blocks), a stride-2 conv between consecutive levels -- so `len(channels) - 1` downsamples and a spatial
compression of `2 ** (len(channels) - 1)` -- then GroupNorm, SiLU and a 1x1 projection to `len(levels)`
scalars. The decoder mirrors it with nearest-neighbour x2 upsampling plus a 3x3 conv between levels and
a 3x3 conv to RGB. Parameters carry the same logical axis names as the VAE's, so the sharding rules apply.
"""

import math
import numbers

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from t2v_jax.checks import require
from t2v_jax.layers.conv3d import constrain_video, frame_conv, per_frame
from t2v_jax.layers.norms import GroupNorm
from t2v_jax.models.video_vae import _NORM_EPS, ResnetBlock2D

FSQ_EPS = 1e-3  # the paper's margin that keeps tanh's bound strictly inside the outermost rounding interval


def default_config() -> ml_collections.ConfigDict:
    """CPU-sized tokenizer for 16x16 Bouncing-Digits frames: x4 space -> 4x4 tokens of 1000 codes.

    Fields:
      channels: channels of each resolution level of the encoder (the decoder uses them reversed); a
        stride-2 conv sits between consecutive levels, so the spatial compression is 2**(len(channels)-1).
      num_res_blocks: ResnetBlock2D per level (encoder and decoder alike).
      norm_num_groups: GroupNorm groups; must divide every entry of channels.
      levels: FSQ levels per code dimension, each >= 2; codebook size prod(levels). The paper's choices:
        (8, 6, 5) = 240, (8, 5, 5, 5) = 1000, (7, 5, 5, 5, 5) = 4375, (8, 8, 8, 6, 5) = 15360.
    """
    cfg = ml_collections.ConfigDict()
    cfg.channels = (16, 32, 64)
    cfg.num_res_blocks = 1
    cfg.norm_num_groups = 8
    cfg.levels = (8, 5, 5, 5)
    return cfg


def codebook_size(cfg) -> int:
    return math.prod(int(level) for level in cfg.levels)


def spatial_compression(cfg) -> int:
    return 2 ** (len(cfg.channels) - 1)


def token_grid(cfg, height: int, width: int) -> tuple[int, int]:
    """(h, w) tokens of one frame of height x width pixels."""
    factor = spatial_compression(cfg)
    return height // factor, width // factor


def tokens_per_frame(cfg, height: int, width: int) -> int:
    h, w = token_grid(cfg, height, width)
    return h * w


def validate_config(cfg, height: int, width: int) -> None:
    """Raises ConfigError naming the field (`config.tokenizer.*`, `config.data.canvas`/`width`) and what is allowed."""
    levels = tuple(cfg.levels)
    integers = all(isinstance(level, numbers.Integral) and level >= 2 for level in levels)
    require(len(levels) > 0 and integers, "tokenizer.levels",
             f"{levels} must be a non-empty tuple of integers >= 2, e.g. (8, 5, 5, 5) (1000 codes) or "
             "(7, 5, 5, 5, 5) (4375 codes)")
    require(codebook_size(cfg) < 2**31, "tokenizer.levels", f"{levels} give {codebook_size(cfg)} codes; indices are "
             "int32, so the product must stay below 2**31")
    channels = tuple(cfg.channels)
    require(len(channels) > 0 and all(c > 0 for c in channels), "tokenizer.channels",
             f"{channels} must be a non-empty tuple of positive channel counts")
    for c in channels:
        require(c % cfg.norm_num_groups == 0, "tokenizer.norm_num_groups",
                 f"{cfg.norm_num_groups} groups do not divide tokenizer.channels={channels}; allowed: common divisors "
                 f"{[g for g in range(1, min(channels) + 1) if all(x % g == 0 for x in channels)]}")
    require(cfg.num_res_blocks >= 0, "tokenizer.num_res_blocks", f"must be >= 0, got {cfg.num_res_blocks}")
    factor = spatial_compression(cfg)
    for field, size in (("data.canvas", height), ("data.width", width)):
        require(size > 0 and size % factor == 0, field,
                 f"{size} px is not divisible by the tokenizer's x{factor} downsampling "
                 f"(len(tokenizer.channels)={len(channels)} levels); allowed: positive multiples of {factor}")


def codebook_usage(indices, num_codes: int):
    """(fraction of the num_codes codes used, perplexity of the code histogram) over all tokens in `indices`."""
    counts = jnp.bincount(indices.reshape(-1), length=num_codes)
    probs = counts / jnp.maximum(counts.sum(), 1)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
    return jnp.mean(counts > 0), jnp.exp(entropy)


def round_ste(x):
    """Rounds to the nearest integer; the gradient passes straight through (identity)."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


class FSQ:
    """Finite scalar quantization over the last axis; pure functions, no parameters."""

    def __init__(self, levels):
        self.levels = tuple(int(level) for level in levels)
        self._levels = np.asarray(self.levels, np.float32)
        self._half_width = np.asarray([level // 2 for level in self.levels], np.float32)
        basis = [1]
        for level in self.levels[:-1]:
            basis.append(basis[-1] * level)
        self._basis = np.asarray(basis, np.int32)

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def bound(self, z):
        """Squashes z (..., dim) into the open interval whose rounding gives exactly `levels` integers."""
        half_l = (self._levels - 1.0) * (1.0 - FSQ_EPS) / 2.0
        offset = np.where(self._levels % 2 == 0, 0.5, 0.0).astype(np.float32)
        shift = np.tan(offset / half_l)
        return jnp.tanh(z + shift) * half_l - offset

    def quantize(self, z):
        """(..., dim) float -> codes (..., dim) on the grid {-1 .. 1}, straight-through gradient."""
        return round_ste(self.bound(z.astype(jnp.float32))) / self._half_width

    def codes_to_indices(self, codes):
        """(..., dim) codes -> (...) int32 indices in [0, codebook_size)."""
        digits = jnp.round(codes * self._half_width + self._half_width).astype(jnp.int32)
        return jnp.sum(digits * self._basis, axis=-1).astype(jnp.int32)

    def indices_to_codes(self, indices):
        """(...) int indices -> (..., dim) float32 codes; the exact inverse of codes_to_indices."""
        digits = (jnp.asarray(indices, jnp.int32)[..., None] // self._basis) % np.asarray(self.levels, np.int32)
        return (digits.astype(jnp.float32) - self._half_width) / self._half_width


class TokenEncoder(nn.Module):
    channels: tuple
    num_res_blocks: int
    num_groups: int
    code_dim: int

    @nn.compact
    def __call__(self, x_bthwc):
        x_bthwc = frame_conv(self.channels[0], 3, name="conv_in")(x_bthwc)
        for i, features in enumerate(self.channels):
            for j in range(self.num_res_blocks):
                x_bthwc = ResnetBlock2D(features, self.num_groups, name=f"down_{i}_res_{j}")(x_bthwc)
            if i < len(self.channels) - 1:
                x_bthwc = jnp.pad(x_bthwc, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
                x_bthwc = frame_conv(self.channels[i + 1], 3, strides=2, padding=0, name=f"down_{i}_conv")(x_bthwc)
            x_bthwc = constrain_video(x_bthwc)
        x_bthwc = nn.silu(per_frame(GroupNorm(self.num_groups, _NORM_EPS, name="norm_out"), x_bthwc))
        return frame_conv(self.code_dim, 1, name="conv_out")(x_bthwc)


class TokenDecoder(nn.Module):
    channels: tuple
    num_res_blocks: int
    num_groups: int

    @nn.compact
    def __call__(self, codes_bthwc):
        channels = tuple(reversed(self.channels))
        x_bthwc = frame_conv(channels[0], 3, name="conv_in")(codes_bthwc)
        for i, features in enumerate(channels):
            for j in range(self.num_res_blocks):
                x_bthwc = ResnetBlock2D(features, self.num_groups, name=f"up_{i}_res_{j}")(x_bthwc)
            if i < len(channels) - 1:
                x_bthwc = jnp.repeat(jnp.repeat(x_bthwc, 2, axis=2), 2, axis=3)
                x_bthwc = frame_conv(channels[i + 1], 3, name=f"up_{i}_conv")(x_bthwc)
            x_bthwc = constrain_video(x_bthwc)
        x_bthwc = nn.silu(per_frame(GroupNorm(self.num_groups, _NORM_EPS, name="norm_out"), x_bthwc))
        return frame_conv(3, 3, name="conv_out")(x_bthwc)


class VideoTokenizer(nn.Module):
    """Video in [-1, 1] `(B, T, H, W, 3)` <-> int32 token indices `(B, T, H/f, W/f)`, frame by frame."""

    config: ml_collections.ConfigDict

    def setup(self):
        cfg = self.config
        self.fsq = FSQ(cfg.levels)
        common = dict(channels=tuple(cfg.channels), num_res_blocks=cfg.num_res_blocks,
                      num_groups=cfg.norm_num_groups)
        self.encoder = TokenEncoder(code_dim=self.fsq.dim, **common)
        self.decoder = TokenDecoder(**common)

    def quantize(self, video_bthwc):
        """Video -> FSQ codes (B, T, h, w, len(levels)) with the straight-through gradient."""
        validate_config(self.config, *video_bthwc.shape[2:4])
        return self.fsq.quantize(self.encoder(video_bthwc))

    def decode_codes(self, codes_bthwc):
        return self.decoder(codes_bthwc)

    def encode(self, video_bthwc):
        """Video -> int32 indices (B, T, h, w) in [0, codebook_size)."""
        return self.fsq.codes_to_indices(self.quantize(video_bthwc))

    def decode(self, indices_bthw):
        """int indices (B, T, h, w) -> video (B, T, h*f, w*f, 3) in about [-1, 1]."""
        return self.decoder(self.fsq.indices_to_codes(indices_bthw))

    def __call__(self, video_bthwc):
        """(reconstruction, indices); the reconstruction is differentiable through the codes."""
        codes_bthwc = self.quantize(video_bthwc)
        return self.decoder(codes_bthwc), self.fsq.codes_to_indices(codes_bthwc)
