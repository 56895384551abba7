"""Allegro's VideoVAE (diffusers `AutoencoderKLAllegro`) in Flax, channels-last, with tiled encode/decode.

Architecture, as in Allegro: every block runs per-frame 2D ResNet blocks (GroupNorm per frame), each
followed by a temporal block of four (3,1,1) convolutions with replicate padding; a block may then halve
time (strided (2,3,3) conv) and/or halve space (strided 3x3 conv). The decoder mirrors the encoder with
one extra layer per block, doubling time by predicting two frames per frame and space by nearest
upsampling. The encoder predicts the mean and log-variance of a diagonal Gaussian latent.

Parameter names follow diffusers so that a converter is a rename plus transposes
(`t2v_jax.convert.allegro_vae`): `encoder/down_blocks_0/resnets_0/norm1/scale` <-
`encoder.down_blocks.0.resnets.0.norm1.weight`; inside a temporal block `conv1..conv4` hold the `Conv3d`
of `convN.{2|3}` and `norm1..norm4` its `GroupNorm` (`convN.0`);
`mid_block/attentions_0/attention/{query,key,value,out}` hold `to_q/to_k/to_v/to_out.0`;
`downsamplers_0` / `upsamplers_0` hold `downsamplers.0.conv` / `upsamplers.0.conv`.

Differences from diffusers: no dropout (Allegro uses 0.1 in its temporal blocks when training); the last
conv of every temporal block starts at zero, as in Allegro's original code, so each temporal block starts
as the identity; untiled encode/decode exist (diffusers raises NotImplementedError without tiling).

Tiling follows diffusers' `tiled_encode` / `tiled_decode`: tiles start every `tile - overlap`, each
tile's output is multiplied by linear ramps over its overlaps (`_prepare_for_blend`) and summed; the
encoder's outputs are blended before `quant_conv`, and `post_quant_conv` runs before the decoder
tiles. Where diffusers' tiles cover the video exactly with overlaps of at most half a tile (Allegro's
24/8-frame, 320/120/80-px tiles on 88 x 720 x 1280 and 40 x 720 x 1280) the numbers are the same.
Elsewhere diffusers' output is broken and this one is not: diffusers leaves an uncovered tail at zero
(368 x 640: the last 48 rows and 80 columns) or makes no tile at all for a video smaller than one;
here a last tile is aligned to the end, or the tile shrinks to the video, and the blend weights are
renormalised to sum to one. GroupNorm statistics span a whole frame (2D parts) or a whole tile in time
(temporal blocks), so a tiled result differs from the untiled one, as in diffusers.
"""

import itertools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn
from jax import lax

from t2v_jax.layers.attention import Attention
from t2v_jax.layers.conv3d import TemporalConv, constrain_video, frame_conv, pad_time, per_frame
from t2v_jax.layers.norms import GroupNorm

_NORM_EPS = 1e-6
_TEMPORAL_NORM_EPS = 1e-5  # torch.nn.GroupNorm's default: Allegro's temporal blocks do not set eps
_LOGVAR_RANGE = (-30.0, 20.0)


def default_config() -> ml_collections.ConfigDict:
    """CPU-sized VAE for 32x32, 16-frame Bouncing-Digits videos: x4 space, x2 time -> (8, 8, 8, 4) latents.

    Fields:
      block_out_channels: channels of each encoder block (the decoder uses them reversed).
      layers_per_block: ResNet+temporal layers per encoder block (decoder blocks get one more).
      latent_channels: channels of the latent; the encoder predicts twice as many (mean and logvar).
      temporal_downsample / spatial_downsample: per block, whether the block halves time / height and
        width at its end; the last block never does. The decoder mirrors spatial_downsample.
      temporal_upsample: per decoder block, whether it doubles time at its end (diffusers'
        `temporal_upsample_blocks`); None mirrors temporal_downsample.
      temporal_layers: False drops every temporal block and temp_conv_in/out: a per-frame image VAE
        (Stable Diffusion's AutoencoderKL layout, which LaVie uses) that trains on single frames
        with no clip edges to mistrain; it cannot down- or upsample time.
      norm_num_groups: GroupNorm groups; must divide every entry of block_out_channels.
      mid_attention: per-frame spatial self-attention in the mid blocks (as in Allegro).
      attention_implementation: kernel name for `t2v_jax.layers.attention`.
      scaling_factor: latents are multiplied by it after encoding and divided by it before decoding, so the
        diffusion model sees roughly unit variance; set it to 1/std of trained latents (Allegro: 0.13).
      tile_frames, tile_size: pixel-space tile length in frames and tile height=width in pixels.
      tile_overlap_frames, tile_overlap: pixel-space overlap of neighbouring tiles in frames and
        (height, width) pixels; blended linearly. All tile numbers must divide by the compression ratios.
        Diffusers: tile_frames=24, tile_overlap_frames=8, tile_overlap=(120, 80) are fixed in
        `AutoencoderKLAllegro.__init__`, tile_size is its `sample_size`.
    """
    cfg = ml_collections.ConfigDict()
    cfg.block_out_channels = (32, 64, 64)
    cfg.layers_per_block = 1
    cfg.latent_channels = 4
    cfg.temporal_downsample = (True, False, False)
    cfg.spatial_downsample = (True, True, False)
    cfg.temporal_upsample = None
    cfg.temporal_layers = True
    cfg.norm_num_groups = 8
    cfg.mid_attention = True
    cfg.attention_implementation = "xla"
    cfg.scaling_factor = 1.0
    cfg.tile_frames = 16
    cfg.tile_size = 32
    cfg.tile_overlap_frames = 4
    cfg.tile_overlap = (8, 8)
    return cfg


def allegro_config() -> ml_collections.ConfigDict:
    """Allegro's released VAE (x4 time, x8 space) with diffusers' tile layout (24 x 320 x 320 px)."""
    cfg = default_config()
    cfg.block_out_channels = (128, 256, 512, 512)
    cfg.layers_per_block = 2
    cfg.latent_channels = 4
    cfg.temporal_downsample = (True, True, False, False)
    cfg.spatial_downsample = (True, True, True, False)
    cfg.temporal_upsample = (False, True, True, False)
    cfg.norm_num_groups = 32
    cfg.scaling_factor = 0.13
    cfg.tile_frames = 24
    cfg.tile_size = 320
    cfg.tile_overlap_frames = 8
    cfg.tile_overlap = (120, 80)
    return cfg


def temporal_compression(cfg) -> int:
    return 2 ** sum(bool(d) for d in cfg.temporal_downsample)


def spatial_compression(cfg) -> int:
    return 2 ** sum(bool(d) for d in cfg.spatial_downsample)


def temporal_upsample(cfg) -> tuple[bool, ...]:
    """Per decoder block, whether it doubles time: `cfg.temporal_upsample`, or the encoder's flags mirrored."""
    if cfg.get("temporal_upsample") is None:
        n = len(cfg.block_out_channels)
        return tuple(i < n - 1 and bool(cfg.temporal_downsample[n - 2 - i]) for i in range(n))
    return tuple(bool(flag) for flag in cfg.temporal_upsample)


def validate_config(cfg) -> None:
    """Raises ValueError naming the field when the config cannot build a working VAE."""
    n = len(cfg.block_out_channels)
    for field in ("temporal_downsample", "spatial_downsample"):
        flags = tuple(cfg[field])
        if len(flags) != n:
            raise ValueError(
                f"{field} has {len(flags)} entries; needs one per block ({n}, block_out_channels)")
        if flags[-1]:
            raise ValueError(f"{field}[-1] must be False: the last block does not downsample")
    upsample = temporal_upsample(cfg)
    if len(upsample) != n or sum(upsample) != sum(bool(d) for d in cfg.temporal_downsample):
        raise ValueError(f"temporal_upsample={upsample} needs one entry per block ({n}) "
                         f"and as many True as temporal_downsample={tuple(cfg.temporal_downsample)}, so "
                         "that decoding restores the frame count")
    if not cfg.get("temporal_layers", True) and any(upsample):
        raise ValueError(f"temporal_layers=False cannot change the frame count: temporal_downsample="
                         f"{tuple(cfg.temporal_downsample)} and temporal_upsample={upsample} must be all False")
    for channels in cfg.block_out_channels:
        if channels % cfg.norm_num_groups:
            raise ValueError(f"norm_num_groups={cfg.norm_num_groups} must divide block_out_channels "
                             f"{tuple(cfg.block_out_channels)}")
    rt, rs = temporal_compression(cfg), spatial_compression(cfg)
    overlap = tuple(cfg.tile_overlap)
    if len(overlap) != 2:
        raise ValueError(f"tile_overlap={overlap} must be (height, width) in pixels")
    checks = (("tile_frames", cfg.tile_frames, rt, None), ("tile_size", cfg.tile_size, rs, None),
              ("tile_overlap_frames", cfg.tile_overlap_frames, rt, cfg.tile_frames),
              ("tile_overlap", overlap[0], rs, cfg.tile_size),
              ("tile_overlap", overlap[1], rs, cfg.tile_size))
    for field, value, ratio, tile in checks:
        if value % ratio or value < 0 or (tile is None and value == 0):
            kind = "positive" if tile is None else "non-negative"
            raise ValueError(f"{field}={cfg[field]} must be a {kind} multiple of the compression ratio "
                             f"{ratio}")
        if tile is not None and value >= tile:
            raise ValueError(f"{field}={cfg[field]} must be smaller than the tile ({tile})")


def check_frames(cfg, num_frames: int) -> None:
    """Raises ValueError unless `num_frames` is a positive multiple of the temporal compression."""
    rt = temporal_compression(cfg)
    if num_frames < 1 or num_frames % rt:
        raise ValueError(f"{num_frames} frames: the VAE (temporal_downsample="
                         f"{tuple(cfg.temporal_downsample)}) accepts positive multiples of {rt} frames")


def check_resolution(cfg, height: int, width: int) -> None:
    """Raises ValueError unless height and width are positive multiples of the spatial compression."""
    rs = spatial_compression(cfg)
    if min(height, width) < 1 or height % rs or width % rs:
        raise ValueError(f"{height}x{width} pixels: the VAE (spatial_downsample="
                         f"{tuple(cfg.spatial_downsample)}) accepts heights and widths that are positive "
                         f"multiples of {rs}")


def interleave_frames(h_bthwc):
    """(B, T, H, W, 2C) -> (B, 2T, H, W, C): frame 2t+s is channel half s of frame t (Allegro's upsample)."""
    b, t, h, w, c2 = h_bthwc.shape
    h_bthw2c = h_bthwc.reshape(b, t, h, w, 2, c2 // 2)
    return jnp.moveaxis(h_bthw2c, 4, 2).reshape(b, 2 * t, h, w, c2 // 2)


class ResnetBlock2D(nn.Module):
    """Per-frame pre-norm ResNet block (diffusers `ResnetBlock2D` without time embedding)."""

    features: int
    num_groups: int

    @nn.compact
    def __call__(self, x_bthwc):
        h = nn.silu(per_frame(GroupNorm(self.num_groups, _NORM_EPS, name="norm1"), x_bthwc))
        h = frame_conv(self.features, 3, name="conv1")(h)
        h = nn.silu(per_frame(GroupNorm(self.num_groups, _NORM_EPS, name="norm2"), h))
        h = frame_conv(self.features, 3, name="conv2")(h)
        if x_bthwc.shape[-1] != self.features:
            x_bthwc = frame_conv(self.features, 1, name="conv_shortcut")(x_bthwc)
        return x_bthwc + h


class TemporalBlock(nn.Module):
    """Allegro's temporal residual block: four GroupNorm-SiLU-conv layers over time, replicate padding.

    mode "same" keeps the frame count with (3,1,1) kernels; "down" halves it with a strided (2,3,3)
    conv (the residual takes every other frame); "up" doubles it by predicting two frames per frame
    (the residual repeats each frame). GroupNorm statistics span all frames, as in PyTorch, with
    torch's default eps (1e-5), not the 1e-6 of the rest of the VAE. Allegro pads time *before* each
    GroupNorm-SiLU-conv layer, so the statistics count the repeated edge frames twice; so does this.
    """

    features: int
    num_groups: int
    mode: str = "same"

    @nn.compact
    def __call__(self, x_bthwc):
        k = 1 if self.mode == "same" else 3

        def norm_act(i, h_bthwc):
            return nn.silu(GroupNorm(self.num_groups, _TEMPORAL_NORM_EPS, name=f"norm{i}")(h_bthwc))

        def padded_layer(i, h_bthwc):
            init = nn.initializers.zeros if i == 4 else nn.initializers.lecun_normal()
            h_bthwc = norm_act(i, pad_time(h_bthwc, 1, 1, "replicate"))
            return TemporalConv(self.features, (3, k, k), temporal_padding="valid", kernel_init=init,
                                name=f"conv{i}")(h_bthwc)

        if self.mode == "down":
            identity = x_bthwc[:, ::2]
            h = TemporalConv(self.features, (2, k, k), (2, 1, 1), "valid", name="conv1")(norm_act(1, x_bthwc))
        elif self.mode == "up":
            identity = jnp.repeat(x_bthwc, 2, axis=1)
            h = interleave_frames(TemporalConv(2 * self.features, (1, k, k), name="conv1")(norm_act(1, x_bthwc)))
        else:
            identity = x_bthwc
            h = padded_layer(1, x_bthwc)
        for i in (2, 3, 4):
            h = padded_layer(i, h)
        return identity + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame, residual (the VAE mid-block attention)."""

    num_groups: int
    implementation: str = "xla"

    @nn.compact
    def __call__(self, x_bthwc):
        b, t, h, w, c = x_bthwc.shape
        y = per_frame(GroupNorm(self.num_groups, _NORM_EPS, name="group_norm"), x_bthwc)
        y_nlc = Attention(num_heads=1, head_dim=c, implementation=self.implementation, name="attention")(
            y.reshape(b * t, h * w, c))
        return x_bthwc + y_nlc.reshape(x_bthwc.shape)


class MidBlock(nn.Module):
    features: int
    num_groups: int
    use_attention: bool
    attention_implementation: str
    temporal_layers: bool = True

    @nn.compact
    def __call__(self, x_bthwc):
        x_bthwc = ResnetBlock2D(self.features, self.num_groups, name="resnets_0")(x_bthwc)
        if self.temporal_layers:
            x_bthwc = TemporalBlock(self.features, self.num_groups, name="temp_convs_0")(x_bthwc)
        if self.use_attention:
            x_bthwc = SpatialSelfAttention(self.num_groups, self.attention_implementation,
                                           name="attentions_0")(x_bthwc)
        x_bthwc = ResnetBlock2D(self.features, self.num_groups, name="resnets_1")(x_bthwc)
        if self.temporal_layers:
            x_bthwc = TemporalBlock(self.features, self.num_groups, name="temp_convs_1")(x_bthwc)
        return x_bthwc


class DownBlock(nn.Module):
    features: int
    num_layers: int
    num_groups: int
    temporal_downsample: bool
    spatial_downsample: bool
    temporal_layers: bool = True

    @nn.compact
    def __call__(self, x_bthwc):
        for i in range(self.num_layers):
            x_bthwc = ResnetBlock2D(self.features, self.num_groups, name=f"resnets_{i}")(x_bthwc)
            if self.temporal_layers:
                x_bthwc = TemporalBlock(self.features, self.num_groups, name=f"temp_convs_{i}")(x_bthwc)
        if self.temporal_downsample:
            x_bthwc = TemporalBlock(self.features, self.num_groups, "down", name="temp_convs_down")(x_bthwc)
        if self.spatial_downsample:
            x_bthwc = jnp.pad(x_bthwc, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
            x_bthwc = frame_conv(self.features, 3, strides=2, padding=0, name="downsamplers_0")(x_bthwc)
        return x_bthwc


class UpBlock(nn.Module):
    features: int
    num_layers: int
    num_groups: int
    temporal_upsample: bool
    spatial_upsample: bool
    temporal_layers: bool = True

    @nn.compact
    def __call__(self, x_bthwc):
        for i in range(self.num_layers):
            x_bthwc = ResnetBlock2D(self.features, self.num_groups, name=f"resnets_{i}")(x_bthwc)
            if self.temporal_layers:
                x_bthwc = TemporalBlock(self.features, self.num_groups, name=f"temp_convs_{i}")(x_bthwc)
        if self.temporal_upsample:
            x_bthwc = TemporalBlock(self.features, self.num_groups, "up", name="temp_conv_up")(x_bthwc)
        if self.spatial_upsample:
            x_bthwc = jnp.repeat(jnp.repeat(x_bthwc, 2, axis=2), 2, axis=3)
            x_bthwc = frame_conv(self.features, 3, name="upsamplers_0")(x_bthwc)
        return x_bthwc


def _temporal_residual(x_bthwc, name, enabled=True):
    """Allegro's `temp_conv_in/out`: x + (3,1,1) conv with zero padding; the identity without temporal layers."""
    if not enabled:
        return x_bthwc
    return x_bthwc + TemporalConv(x_bthwc.shape[-1], temporal_padding="zeros", name=name)(x_bthwc)


class Encoder(nn.Module):
    block_out_channels: Sequence[int]
    layers_per_block: int
    out_channels: int
    num_groups: int
    temporal_downsample: Sequence[bool]
    spatial_downsample: Sequence[bool]
    mid_attention: bool
    attention_implementation: str
    temporal_layers: bool = True

    @nn.compact
    def __call__(self, x_bthwc):
        temporal = self.temporal_layers
        x_bthwc = frame_conv(self.block_out_channels[0], 3, name="conv_in")(x_bthwc)
        x_bthwc = _temporal_residual(x_bthwc, "temp_conv_in", temporal)
        for i, features in enumerate(self.block_out_channels):
            x_bthwc = constrain_video(DownBlock(features, self.layers_per_block, self.num_groups,
                                           self.temporal_downsample[i], self.spatial_downsample[i],
                                           temporal, name=f"down_blocks_{i}")(x_bthwc))
        x_bthwc = MidBlock(self.block_out_channels[-1], self.num_groups, self.mid_attention,
                           self.attention_implementation, temporal, name="mid_block")(x_bthwc)
        x_bthwc = nn.silu(per_frame(GroupNorm(self.num_groups, _NORM_EPS, name="conv_norm_out"), x_bthwc))
        x_bthwc = _temporal_residual(x_bthwc, "temp_conv_out", temporal)
        return frame_conv(self.out_channels, 3, name="conv_out")(x_bthwc)


class Decoder(nn.Module):
    """Mirror of the encoder: up block i undoes the spatial downsampling at the end of encoder block n-2-i
    and doubles time where `temporal_upsample[i]`."""

    block_out_channels: Sequence[int]
    layers_per_block: int
    out_channels: int
    num_groups: int
    temporal_upsample: Sequence[bool]
    spatial_downsample: Sequence[bool]
    mid_attention: bool
    attention_implementation: str
    temporal_layers: bool = True

    @nn.compact
    def __call__(self, z_bthwc):
        temporal = self.temporal_layers
        channels = tuple(reversed(self.block_out_channels))
        n = len(channels)
        x_bthwc = frame_conv(channels[0], 3, name="conv_in")(z_bthwc)
        x_bthwc = _temporal_residual(x_bthwc, "temp_conv_in", temporal)
        x_bthwc = constrain_video(MidBlock(channels[0], self.num_groups, self.mid_attention,
                                      self.attention_implementation, temporal, name="mid_block")(x_bthwc))
        for i, features in enumerate(channels):
            mirrored = n - 2 - i
            x_bthwc = constrain_video(UpBlock(features, self.layers_per_block + 1, self.num_groups,
                                         bool(self.temporal_upsample[i]),
                                         mirrored >= 0 and bool(self.spatial_downsample[mirrored]),
                                         temporal, name=f"up_blocks_{i}")(x_bthwc))
        x_bthwc = nn.silu(per_frame(GroupNorm(self.num_groups, _NORM_EPS, name="conv_norm_out"), x_bthwc))
        x_bthwc = _temporal_residual(x_bthwc, "temp_conv_out", temporal)
        return frame_conv(self.out_channels, 3, name="conv_out")(x_bthwc)


def sample_latent(mean_bthwc, logvar_bthwc, rng):
    """Reparameterised draw from the diagonal Gaussian posterior."""
    noise = jax.random.normal(rng, mean_bthwc.shape, mean_bthwc.dtype)
    return mean_bthwc + jnp.exp(0.5 * logvar_bthwc) * noise


def kl_divergence(mean_bthwc, logvar_bthwc):
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all non-batch axes -> (B,)."""
    terms = jnp.square(mean_bthwc) + jnp.exp(logvar_bthwc) - 1.0 - logvar_bthwc
    return 0.5 * terms.reshape(terms.shape[0], -1).sum(-1)


class VideoVAE(nn.Module):
    """Video in [-1, 1] `(B, T, H, W, 3)` <-> unscaled latents `(B, T/rt, H/rs, W/rs, latent_channels)`."""

    config: ml_collections.ConfigDict

    def setup(self):
        cfg = self.config
        validate_config(cfg)
        common = dict(block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                      num_groups=cfg.norm_num_groups, spatial_downsample=tuple(cfg.spatial_downsample),
                      mid_attention=cfg.mid_attention, attention_implementation=cfg.attention_implementation,
                      temporal_layers=cfg.get("temporal_layers", True))
        self.encoder = Encoder(out_channels=2 * cfg.latent_channels,
                               temporal_downsample=tuple(cfg.temporal_downsample), **common)
        self.decoder = Decoder(out_channels=3, temporal_upsample=temporal_upsample(cfg), **common)
        self.quant_conv = frame_conv(2 * cfg.latent_channels, 1)
        self.post_quant_conv = frame_conv(cfg.latent_channels, 1)

    def encode(self, video_bthwc):
        """Returns the posterior's (mean, logvar)."""
        return self.moments(self.encoder(video_bthwc))

    def moments(self, h_bthwc):
        """Encoder output -> (mean, logvar) through quant_conv, logvar clipped to [-30, 20] as in diffusers.

        Separate from `encode` because tiled encoding blends encoder outputs and runs this once after."""
        mean_bthwc, logvar_bthwc = jnp.split(self.quant_conv(h_bthwc), 2, axis=-1)
        return mean_bthwc, jnp.clip(logvar_bthwc, *_LOGVAR_RANGE)

    def decode(self, z_bthwc):
        return self.decoder(self.post_quant_conv(z_bthwc))

    def __call__(self, video_bthwc, *, sample_posterior=True):
        """Reconstruction for training; draws the latent with the "sample" rng stream."""
        mean_bthwc, logvar_bthwc = self.encode(video_bthwc)
        z_bthwc = mean_bthwc
        if sample_posterior:
            z_bthwc = sample_latent(mean_bthwc, logvar_bthwc, self.make_rng("sample"))
        return self.decode(z_bthwc), mean_bthwc, logvar_bthwc


def tile_starts(size: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Starts of `tile`-long tiles covering [0, size): every `tile - overlap` as in diffusers, plus a last
    tile aligned to the end where those do not reach it."""
    if size <= tile:
        return (0,)
    return tuple(range(0, size - tile, tile - overlap)) + (size - tile,)


def _blend_weights(starts, tile):
    """Per-tile 1D weights (n, tile): diffusers' `_prepare_for_blend` ramps (0, 1/ov, ...) up over the
    overlap with the previous tile and (1, 1 - 1/ov, ...) down over the next, normalised to sum to one.

    Where neighbours overlap by at most half a tile the ramps already sum to one and the normalisation
    changes nothing (diffusers' numbers); it matters next to an end-aligned last tile and for wider
    overlaps, where diffusers' ramps overlap inside a tile and do not sum to one."""
    weights = np.ones((len(starts), tile), np.float64)
    for i, start in enumerate(starts):
        if i > 0:
            ov = starts[i - 1] + tile - start
            weights[i, :ov] *= np.arange(ov) / ov
        if i < len(starts) - 1:
            ov = start + tile - starts[i + 1]
            weights[i, tile - ov:] *= 1.0 - np.arange(ov) / ov
    total = np.zeros(starts[-1] + tile)
    for start, w in zip(starts, weights):
        total[start:start + tile] += w
    return np.stack([w / total[s:s + tile] for s, w in zip(starts, weights)]).astype(np.float32)


def tiled_apply(fn: Callable, x_bthwc, *, tile_thw, overlap_thw, in_unit_thw, out_unit_thw):
    """Runs `fn` on overlapping (T, H, W) tiles of `x_bthwc` and blends the outputs linearly at the seams.

    Sizes are counted in grid cells: one cell is `in_unit_thw` input elements and `out_unit_thw` output
    elements per axis (decode: (1,1,1) -> (rt,rs,rs); encode the reverse). The blend ramps span the
    overlap in output elements, as diffusers' do. Tiles are static-shaped, so one `lax.scan` over tiles
    slices, runs `fn` and accumulates; memory holds one tile's activations at a time.
    """
    b, t, h, w, c = x_bthwc.shape
    grid = (t // in_unit_thw[0], h // in_unit_thw[1], w // in_unit_thw[2])
    tile = tuple(min(k, g) for k, g in zip(tile_thw, grid))
    starts = [tile_starts(g, k, o) for g, k, o in zip(grid, tile, overlap_thw)]
    if all(len(s) == 1 for s in starts):
        return fn(x_bthwc)
    in_tile = tuple(k * u for k, u in zip(tile, in_unit_thw))
    out_tile = tuple(k * u for k, u in zip(tile, out_unit_thw))
    weights = [_blend_weights([s * u for s in st], k) for st, k, u in zip(starts, out_tile, out_unit_thw)]
    index = np.array(list(itertools.product(*(range(len(s)) for s in starts))))
    xs = dict(
        in_start=np.stack([np.asarray(s)[index[:, a]] * in_unit_thw[a] for a, s in enumerate(starts)], -1),
        out_start=np.stack([np.asarray(s)[index[:, a]] * out_unit_thw[a] for a, s in enumerate(starts)], -1),
        w_t=weights[0][index[:, 0]], w_h=weights[1][index[:, 1]], w_w=weights[2][index[:, 2]],
    )
    out_shape = jax.eval_shape(fn, jax.ShapeDtypeStruct((b,) + in_tile + (c,), x_bthwc.dtype))
    full = (b,) + tuple(g * u for g, u in zip(grid, out_unit_thw)) + (out_shape.shape[-1],)

    def step(acc, tile_xs):
        in_start, out_start = (0, *tile_xs["in_start"], 0), (0, *tile_xs["out_start"], 0)
        y = fn(lax.dynamic_slice(x_bthwc, in_start, (b,) + in_tile + (c,)))
        w_t, w_h, w_w = tile_xs["w_t"], tile_xs["w_h"], tile_xs["w_w"]
        weight_thw = w_t[:, None, None] * w_h[None, :, None] * w_w[None, None, :]
        y = y * weight_thw[None, ..., None].astype(y.dtype)
        acc = lax.dynamic_update_slice(acc, lax.dynamic_slice(acc, out_start, y.shape) + y, out_start)
        return acc, None

    acc, _ = lax.scan(step, jnp.zeros(full, out_shape.dtype), jax.tree_util.tree_map(jnp.asarray, xs))
    return acc


def _grid_tiles(cfg):
    """Tile and overlap of the config in latent grid cells."""
    rt, rs = temporal_compression(cfg), spatial_compression(cfg)
    tile = (cfg.tile_frames // rt, cfg.tile_size // rs, cfg.tile_size // rs)
    overlap = (cfg.tile_overlap_frames // rt, cfg.tile_overlap[0] // rs, cfg.tile_overlap[1] // rs)
    return tile, overlap, (rt, rs, rs)


def vae_moments(vae: VideoVAE, params, video_bthwc, *, tiled=True):
    """Video in [-1, 1] -> the posterior's unscaled (mean, logvar), each (B, T/rt, H/rs, W/rs, latent).

    Tiled as diffusers' `tiled_encode`: the encoder runs per tile, its outputs are blended, then
    quant_conv runs once. Pure and traceable: call it inside the caller's `jax.jit`.
    """
    cfg = vae.config
    validate_config(cfg)
    check_frames(cfg, video_bthwc.shape[1])
    check_resolution(cfg, *video_bthwc.shape[2:4])

    def encoder(v_bthwc):
        return vae.apply(params, v_bthwc, method=lambda module, v: module.encoder(v))

    if tiled:
        tile, overlap, unit = _grid_tiles(cfg)
        h_bthwc = tiled_apply(encoder, video_bthwc, tile_thw=tile, overlap_thw=overlap, in_unit_thw=unit,
                              out_unit_thw=(1, 1, 1))
    else:
        h_bthwc = encoder(video_bthwc)
    return vae.apply(params, h_bthwc, method=VideoVAE.moments)


def vae_encode(vae: VideoVAE, params, video_bthwc, *, rng=None, tiled=True):
    """Video in [-1, 1] -> latents * scaling_factor (a posterior sample when `rng` is given, else the mean).

    Pure and traceable: call it inside the caller's `jax.jit`.
    """
    mean_bthwc, logvar_bthwc = vae_moments(vae, params, video_bthwc, tiled=tiled)
    return latents_from_moments(vae, mean_bthwc, logvar_bthwc, rng=rng)


def latents_from_moments(vae: VideoVAE, mean_bthwc, logvar_bthwc, *, rng=None):
    """Posterior moments (from `vae_moments`, or a cache of them) -> latents * scaling_factor: a sample
    when `rng` is given, else the mean."""
    z_bthwc = mean_bthwc if rng is None else sample_latent(mean_bthwc, logvar_bthwc, rng)
    return z_bthwc * vae.config.scaling_factor


def vae_decode(vae: VideoVAE, params, latents_bthwc, *, tiled=True):
    """Scaled latents -> video in about [-1, 1]; the only place that divides by scaling_factor.

    Tiled as diffusers' `tiled_decode`: post_quant_conv runs once, then the decoder per tile."""
    cfg = vae.config
    validate_config(cfg)
    z_bthwc = vae.apply(params, latents_bthwc / cfg.scaling_factor,
                        method=lambda module, z: module.post_quant_conv(z))

    def decoder(z_tile):
        return vae.apply(params, z_tile, method=lambda module, z: module.decoder(z))

    if not tiled:
        return decoder(z_bthwc)
    tile, overlap, unit = _grid_tiles(cfg)
    return tiled_apply(decoder, z_bthwc, tile_thw=tile, overlap_thw=overlap, in_unit_thw=(1, 1, 1),
                       out_unit_thw=unit)
