"""LaVie's text-to-video UNet (Wang et al. 2023; Vchitect/LaVie, base/models): Stable Diffusion 1.x's
UNet run per frame, with a temporal self-attention in every transformer block.

Widths and levels come from the config, so the CPU size and the released size (SD-1.4's 320/640/1280/1280)
are the same code. Every convolution and GroupNorm is per frame (no temporal convolutions). Transformer
blocks sit in the levels `attention_levels` marks and in the mid block; each runs spatial
self-attention -> cross-attention -> temporal self-attention -> feed-forward (GEGLU), pre-LayerNorm
residuals.

Temporal attention attends over the frames at each spatial position, with RoPE on the first
`rotary_dim` (32) channels of each head only, in interleaved pairs, positions 0..F-1, theta 10000
(LaVie's `rotary_embedding_torch.RotaryEmbedding(32)`), plus a T5-style bucketed relative position
bias per layer (32 buckets, max distance 32, bidirectional). LaVie scales q by 1/sqrt(dim_head) before
rotating it; a rotation is linear, so scaling the logits instead, as `attention()` does, gives the same
numbers. The output projection starts at zero, so a new temporal layer leaves a pretrained image model
unchanged: with every temporal output projection at zero this UNet is diffusers' `UNet2DConditionModel`
applied to each frame (tests/test_parity_lavie.py).

Super-resolution (Vchitect/LaVie, vsr/models): Stable Diffusion's x4 upscaler UNet (`vsr_config`) inflated the
same way, with what its image model adds (`use_linear_projection`, per-level `only_cross_attention`, the noise level
embedded as a class label, `num_class_embeds`) and LaVie's temporal convolutions: a `TemporalModule` (LaVie's
`TemporalModule3D`: ResNet (5,1,1)/(3,1,1) temporal convs -> ResNet 3x3 per frame -> zero-initialised 1x1
`shift_conv`, residual) after every down level, the mid block and every up level, and a (3,1,1)/(3,1,1) temporal ResNet
(`resblock_temporal`) at the start of every transformer. There LaVie's inflated ResNets normalise over all frames of
a clip (torch's GroupNorm on (B, C, F, H, W)): `norm_over_frames`.

Joint image-video training (LaVie section 3.2): `num_images` still images follow the video frames of
each sample, each with its own caption; spatial layers see all frames, temporal attention only the
video frames.

Parameter names follow diffusers with `.` -> `/` and list indices joined by `_`
(`down_blocks_0/attentions_0/transformer_blocks_0/attn_temp/attention/query` <-
`down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q`), so `convert/lavie.py` is a rename
plus transposes.
"""

import functools
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from t2v_jax.checks import DTYPES, one_of, require
from t2v_jax.layers.attention import Attention, check_implementation
from t2v_jax.layers.conv3d import TemporalConv, constrain_video, frame_conv, per_frame
from t2v_jax.layers.dense import dense
from t2v_jax.layers.embeddings import TimestepEmbedder
from t2v_jax.layers.feed_forward import FeedForward
from t2v_jax.layers.norms import GroupNorm, LayerNorm
from t2v_jax.layers.position_bias import RelativePositionBias
from t2v_jax.layers.rope import rope_frequencies

_TRANSFORMER_NORM_EPS = 1e-6  # Transformer2DModel's GroupNorm
_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which diffusers' blocks keep
_TEMPORAL_NORM_EPS = 1e-6  # LaVie VSR's ResnetBlock3D / ResnetBlock3DCNN default, which its temporal blocks keep
_TEMPORAL_MODULE_KERNEL = 5  # TemporalModule3D's first temporal conv, (5, 1, 1)
TEMPORAL_ATTENTION_NAMES = ("attn_temp", "attn_temporal")  # LaVie base/interpolation, LaVie VSR


def default_config() -> ml_collections.ConfigDict:
    """CPU size, for 4x4 latents of 8 channels (Bouncing Digits 16x16 through the per-frame VAE).

    Fields:
      in_channels / out_channels: latent channels in and out (the interpolation model takes twice
        as many in: the noisy latent and the repeated keyframes).
      block_out_channels: channels of each level; every level but the last halves height and width.
      attention_levels: per level, whether its blocks carry transformer blocks (SD-1.x: all but the
        last); the mid block always does.
      layers_per_block: ResNet (+ transformer) layers per down level; up levels have one more.
      num_heads: attention heads at every level (SD-1.x's `attention_head_dim=8` means 8 heads);
        the head width is the level's channels / num_heads.
      cross_attention_dim: width of the text embeddings.
      norm_num_groups / norm_eps: the ResNet GroupNorms.
      rotary_dim: channels of each temporal-attention head RoPE rotates (0: none).
      temporal_position_bias: the learned relative position bias in temporal attention.
      sparse_causal: spatial self-attention reads the first and previous frames' tokens instead of the
        frame's own (LaVie's interpolation model).
      temporal_after_ff: temporal attention after the feed-forward instead of before it (interpolation).
      attention: the kernel (`layers/attention.py`); dtype: compute dtype.
    Super-resolution (LaVie VSR, SD x4 upscaler); the defaults leave the base and interpolation models as they are:
      use_linear_projection: the transformers' proj_in/proj_out are Linear layers instead of 1x1 convs.
      only_cross_attention: per level (empty: none), the first attention of its transformers attends to the text
        instead of the frame (the mid block never does).
      num_class_embeds: size of the class-label embedding added to the time embedding (0: none); the upscaler
        embeds the noise level of its low-resolution input with it (`class_labels_b`).
      down_temporal_idx / mid_temporal / up_temporal_idx: the down levels, the mid block and the up levels (0 =
        the deepest) followed by a `TemporalModule` (LaVie's names).
      transformer_temporal_conv: a temporal ResNet (`resblock_temporal`) at the start of every transformer.
      temporal_norm_num_groups: the GroupNorms of those temporal blocks (LaVie: 32).
      temporal_attention_name: "attn_temp" (base, interpolation) or "attn_temporal" (VSR), the checkpoint's name of
        the temporal attention (and of its norm, "norm_temp" / "norm_temporal").
      norm_over_frames: the ResNets' and the output GroupNorms take statistics over all video frames of a clip, as
        LaVie VSR's inflated blocks do; the transformers' GroupNorm stays per frame. (LaVie's base UNet applies
        torch's GroupNorm to (B, C, F, H, W) tensors in the same places; the base and interpolation configs here
        keep per-frame norms.)
    """
    cfg = ml_collections.ConfigDict()
    cfg.in_channels = 8
    cfg.out_channels = 8
    cfg.block_out_channels = (32, 64)
    cfg.attention_levels = (True, True)
    cfg.layers_per_block = 1
    cfg.num_heads = 4
    cfg.cross_attention_dim = 64
    cfg.norm_num_groups = 8
    cfg.norm_eps = 1e-5
    cfg.rotary_dim = 32
    cfg.temporal_position_bias = True
    cfg.sparse_causal = False
    cfg.temporal_after_ff = False
    cfg.attention = "xla"
    cfg.dtype = "float32"
    cfg.use_linear_projection = False
    cfg.only_cross_attention = ()
    cfg.num_class_embeds = 0
    cfg.down_temporal_idx = ()
    cfg.mid_temporal = False
    cfg.up_temporal_idx = ()
    cfg.transformer_temporal_conv = False
    cfg.temporal_norm_num_groups = 32
    cfg.temporal_attention_name = "attn_temp"
    cfg.norm_over_frames = False
    return cfg


def sd14_config() -> ml_collections.ConfigDict:
    """LaVie's base UNet: Stable Diffusion 1.4's (860M parameters before the temporal layers)."""
    cfg = default_config()
    cfg.update(in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
               attention_levels=(True, True, True, False), layers_per_block=2, num_heads=8,
               cross_attention_dim=768, norm_num_groups=32)
    return cfg


def interpolation_config(base_cfg) -> ml_collections.ConfigDict:
    """LaVie's interpolation UNet from a base config: the noisy latent and the repeated keyframe latents in
    (2 x channels), sparse-causal spatial attention, temporal attention after the feed-forward, without
    RoPE or position bias."""
    cfg = base_cfg.copy_and_resolve_references()
    cfg.update(in_channels=2 * base_cfg.out_channels, sparse_causal=True, temporal_after_ff=True, rotary_dim=0,
               temporal_position_bias=False)
    return cfg


def _vsr_layout(cfg) -> ml_collections.ConfigDict:
    """LaVie VSR's structure on `cfg`'s widths: the first level without transformers, text-only first attention
    in every attention level but the last, Linear transformer projections, the noise-level embedding, a
    `TemporalModule` after every level and the mid block, temporal ResNets in the transformers, ResNet norms over
    all frames."""
    levels = len(cfg.block_out_channels)
    cfg.update(attention_levels=(False,) + (True,) * (levels - 1), use_linear_projection=True,
               only_cross_attention=(True,) * (levels - 1) + (False,), num_class_embeds=1000,
               down_temporal_idx=tuple(range(levels)), mid_temporal=True, up_temporal_idx=tuple(range(levels)),
               transformer_temporal_conv=True, temporal_attention_name="attn_temporal", norm_over_frames=True)
    return cfg


def vsr_config() -> ml_collections.ConfigDict:
    """LaVie's super-resolution UNet (vsr/configs/unet_3d_config.json): Stable Diffusion's x4 upscaler
    (channels 256/512/512/1024, 8 heads, OpenCLIP-H text 1024 wide, in: 4 latent + 3 RGB channels, the noise level
    as one of 1000 class labels) with LaVie's temporal layers."""
    cfg = default_config()
    cfg.update(in_channels=7, out_channels=4, block_out_channels=(256, 512, 512, 1024), layers_per_block=2,
               num_heads=8, cross_attention_dim=1024, norm_num_groups=32)
    return _vsr_layout(cfg)


def small_vsr_config(latent_channels: int = 4, block_out_channels=(32, 32, 64), *, num_heads: int = 4,
                     cross_attention_dim: int = 64, norm_num_groups: int = 8) -> ml_collections.ConfigDict:
    """A CPU-size VSR UNet of the released layout (`vsr_config`): `latent_channels` + 3 RGB channels in, the
    temporal blocks' GroupNorms with `norm_num_groups` groups like the rest."""
    cfg = default_config()
    cfg.update(in_channels=latent_channels + 3, out_channels=latent_channels,
               block_out_channels=tuple(block_out_channels), num_heads=num_heads,
               cross_attention_dim=cross_attention_dim, norm_num_groups=norm_num_groups,
               temporal_norm_num_groups=norm_num_groups)
    return _vsr_layout(cfg)


def _temporal_widths(cfg) -> set:
    """Widths of the levels that carry temporal blocks (their GroupNorms need `temporal_norm_num_groups`)."""
    channels = tuple(cfg.block_out_channels)
    widths = {channels[i] for i in cfg.get("down_temporal_idx", ())}
    widths |= {channels[::-1][i] for i in cfg.get("up_temporal_idx", ())}
    if cfg.get("mid_temporal", False):
        widths.add(channels[-1])
    if cfg.get("transformer_temporal_conv", False):
        widths |= {width for width, attention in zip(channels, cfg.attention_levels) if attention} | {channels[-1]}
    return widths


def validate_config(cfg, prefix: str = "unet") -> None:
    """ConfigError naming the field for widths, heads and groups that do not fit together."""
    levels = len(cfg.block_out_channels)
    require(levels >= 1, f"{prefix}.block_out_channels", "needs at least one level")
    require(len(cfg.attention_levels) == levels, f"{prefix}.attention_levels",
            f"needs one entry per level ({levels}), got {len(cfg.attention_levels)}")
    require(cfg.layers_per_block >= 1, f"{prefix}.layers_per_block", f"must be positive, got {cfg.layers_per_block}")
    for channels in cfg.block_out_channels:
        require(channels % cfg.norm_num_groups == 0, f"{prefix}.norm_num_groups",
                f"{cfg.norm_num_groups} groups do not divide the level width {channels}")
        require(cfg.num_heads > 0 and channels % cfg.num_heads == 0, f"{prefix}.num_heads",
                f"{cfg.num_heads} heads do not divide the level width {channels}")
    require(cfg.rotary_dim >= 0 and cfg.rotary_dim % 2 == 0, f"{prefix}.rotary_dim",
            f"must be an even number >= 0, got {cfg.rotary_dim}")
    only_cross = tuple(cfg.get("only_cross_attention", ()))
    require(len(only_cross) in (0, levels), f"{prefix}.only_cross_attention",
            f"needs one entry per level ({levels}) or none, got {len(only_cross)}")
    require(cfg.get("num_class_embeds", 0) >= 0, f"{prefix}.num_class_embeds",
            f"must be >= 0 (0: no class embedding), got {cfg.get('num_class_embeds', 0)}")
    for field in ("down_temporal_idx", "up_temporal_idx"):
        for index in cfg.get(field, ()):
            require(0 <= index < levels, f"{prefix}.{field}", f"{index} is not a level index (0..{levels - 1})")
    groups = cfg.get("temporal_norm_num_groups", 32)
    for width in sorted(_temporal_widths(cfg)):
        require(groups > 0 and width % groups == 0, f"{prefix}.temporal_norm_num_groups",
                f"{groups} groups do not divide the width {width} of a level with temporal blocks")
    one_of(cfg.get("temporal_attention_name", "attn_temp"), f"{prefix}.temporal_attention_name",
           TEMPORAL_ATTENTION_NAMES)
    check_implementation(cfg.attention, f"{prefix}.attention")
    one_of(cfg.dtype, f"{prefix}.dtype", DTYPES)


def spatial_compression(cfg) -> int:
    """The UNet halves height and width at every level but the last: latents must divide by this."""
    return 2 ** (len(cfg.block_out_channels) - 1)


def video_group_norm(norm, x_bthwc, *, over_frames: bool, num_images: int = 0):
    """`norm` (a GroupNorm) per frame, or with `over_frames` with statistics over all video frames of each clip, as
    torch's GroupNorm computes them on LaVie's (B, C, F, H, W) tensors; the last `num_images` frames (still images
    of joint training) are then normalised each on its own, with the same parameters."""
    if not over_frames:
        return per_frame(norm, x_bthwc)
    video_frames = x_bthwc.shape[1] - num_images
    video_bthwc = norm(x_bthwc[:, :video_frames])
    if not num_images:
        return video_bthwc
    return jnp.concatenate([video_bthwc, per_frame(norm, x_bthwc[:, video_frames:])], axis=1)


class ResnetBlock(nn.Module):
    """diffusers' `ResnetBlock2D` per frame: GroupNorm-SiLU-conv twice, the time embedding projected and
    added between, a 1x1 shortcut when the width changes.

    `over_frames`: GroupNorm statistics over all video frames of a clip (LaVie's inflated `ResnetBlock3D`).
    `temporal_kernel` k > 0: LaVie VSR's `ResnetBlock3DCNN`, whose convs run over time only, (k, 1, 1) then
    (3, 1, 1), zero-padded at both ends. `temb_bd=None`: no time embedding (no `time_emb_proj`). `zero_out`
    (temporal convs only): conv2 starts at zero, so a new block is the identity.
    """

    features: int
    num_groups: int
    eps: float
    over_frames: bool = False
    temporal_kernel: int = 0
    zero_out: bool = False

    @nn.compact
    def __call__(self, x_bthwc, temb_bd=None, num_images: int = 0):
        if self.zero_out and not self.temporal_kernel:
            raise ValueError("ResnetBlock: zero_out is for the temporal convs (temporal_kernel > 0)")

        def norm_act(name, h):
            norm = GroupNorm(self.num_groups, self.eps, name=name)
            return nn.silu(video_group_norm(norm, h, over_frames=self.over_frames, num_images=num_images))

        def conv(name, kernel, **init):
            if self.temporal_kernel:
                return TemporalConv(self.features, (kernel, 1, 1), temporal_padding="zeros", name=name, **init)
            return frame_conv(self.features, kernel, name=name)

        h = conv("conv1", self.temporal_kernel or 3)(norm_act("norm1", x_bthwc))
        if temb_bd is not None:
            temb = nn.Dense(self.features, name="time_emb_proj")(nn.silu(temb_bd))
            h = h + temb[:, None, None, None, :]
        zero = dict(kernel_init=nn.initializers.zeros_init()) if self.zero_out else {}
        h = conv("conv2", 3, **zero)(norm_act("norm2", h))
        if x_bthwc.shape[-1] != self.features:
            x_bthwc = conv("conv_shortcut", 1)(x_bthwc)
        return x_bthwc + h


class TemporalModule(nn.Module):
    """LaVie VSR's `TemporalModule3D` on the video frames of (B, F, H, W, C) (the still images of joint training
    pass unchanged): x + shift_conv(ResnetBlock3D(ResnetBlock3DCNN(x, temb), temb)). The first ResNet convolves
    over time, (5, 1, 1) then (3, 1, 1), the second per frame, 3x3; both normalise over all frames
    (`temporal_norm_num_groups`, eps 1e-6) and take the time embedding. `shift_conv`, a 1x1 conv per frame,
    starts at zero, so a new module is the identity. LaVie's configuration leaves
    out the module's temporal transformer (`attention_block_types` ["", ""]) and its video condition."""

    cfg: Any
    features: int

    @nn.compact
    def __call__(self, x_bthwc, temb_bd, num_images: int = 0):
        groups = self.cfg.get("temporal_norm_num_groups", 32)
        video_frames = x_bthwc.shape[1] - num_images
        resnet = functools.partial(ResnetBlock, self.features, groups, _TEMPORAL_NORM_EPS, over_frames=True)
        h = resnet(temporal_kernel=_TEMPORAL_MODULE_KERNEL, name="resblocks_3d_t")(x_bthwc[:, :video_frames], temb_bd)
        h = resnet(name="resblocks_3d_s")(h, temb_bd)
        h = frame_conv(self.features, 1, kernel_init=nn.initializers.zeros_init(), name="shift_conv")(h)
        return constrain_video(x_bthwc.at[:, :video_frames].add(h))


class TemporalAttention(nn.Module):
    """(N, F, C) -> (N, F, C): self-attention over F frames for each of N = batch x height x width
    positions. q/k/v without bias, the output with one (LaVie's `TemporalAttention`); `rotary_dim=0`
    turns RoPE off and `position_bias=False` the bias (LaVie's interpolation model)."""

    num_heads: int
    head_dim: int
    rotary_dim: int = 32
    position_bias: bool = True
    num_buckets: int = 32
    max_distance: int = 32
    implementation: str = "xla"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_nfc):
        frames = x_nfc.shape[1]
        bias_1hff = None
        if self.position_bias:
            bias_1hff = RelativePositionBias(self.num_heads, self.num_buckets, self.max_distance,
                                             param_dtype=self.param_dtype, name="time_rel_pos_bias")(frames)
        rope = None
        if self.rotary_dim:
            cos_fr, sin_fr = rope_frequencies(jnp.arange(frames), min(self.rotary_dim, self.head_dim),
                                              interleaved=True)
            rope = (cos_fr, sin_fr, 1)
        return Attention(self.num_heads, self.head_dim, implementation=self.implementation, use_bias=False,
                         out_bias=True, rope_interleaved=True, out_kernel_init=nn.initializers.zeros_init(),
                         dtype=self.dtype, param_dtype=self.param_dtype, name="attention")(
            x_nfc, bias_bhls=bias_1hff, rope=rope)


def sparse_causal_keys(x_bflc):
    """(B, F, L, C) -> (B, F, 2L, C): what each frame's sparse-causal spatial attention reads, the tokens
    of the first frame and of the previous one (frame 0: the first twice), as LaVie's interpolation
    model (after Tune-A-Video) attends."""
    previous = jnp.maximum(jnp.arange(x_bflc.shape[1]) - 1, 0)
    first_bflc = jnp.broadcast_to(x_bflc[:, :1], x_bflc.shape)
    return jnp.concatenate([first_bflc, x_bflc[:, previous]], axis=2)


class TransformerBlock(nn.Module):
    """Spatial self-attention -> cross-attention -> temporal self-attention -> GEGLU feed-forward, each
    pre-LayerNorm and residual, on the tokens (B*F, H*W, C) of every frame. The interpolation model's
    variant (`sparse_causal`, `temporal_after_ff`) attends spatially to the first and previous frames
    and runs its temporal attention last. With `only_cross_attention` (the x4 upscaler's) the first attention
    attends to the text too."""

    cfg: Any
    num_heads: int
    head_dim: int
    only_cross_attention: bool = False

    @nn.compact
    def __call__(self, x_nlc, context_nsd, context_mask_ns, *, frames: int, num_images: int):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        attend = dict(num_heads=self.num_heads, head_dim=self.head_dim, implementation=cfg.attention,
                      use_bias=False, out_bias=True, dtype=dtype)
        norm = lambda name: LayerNorm(_LAYER_NORM_EPS, name=name)  # noqa: E731
        n, positions, channels = x_nlc.shape
        h_nlc = norm("norm1")(x_nlc)
        if self.only_cross_attention:
            x_nlc = x_nlc + Attention(**attend, name="attn1")(h_nlc, context_nsd, kv_mask_bs=context_mask_ns)
        else:
            keys = None
            if cfg.get("sparse_causal", False):
                keys = sparse_causal_keys(h_nlc.reshape(n // frames, frames, positions, channels))
                keys = keys.reshape(n, 2 * positions, channels)
            x_nlc = x_nlc + Attention(**attend, name="attn1")(h_nlc, keys)
        x_nlc = x_nlc + Attention(**attend, name="attn2")(norm("norm2")(x_nlc), context_nsd,
                                                          kv_mask_bs=context_mask_ns)

        attention_name = cfg.get("temporal_attention_name", "attn_temp")
        norm_name = "norm" + attention_name[len("attn"):]

        def temporal(x_nlc):
            video_frames = frames - num_images
            x_bflc = x_nlc.reshape(n // frames, frames, positions, channels)
            video_nfc = jnp.swapaxes(x_bflc[:, :video_frames], 1, 2).reshape(-1, video_frames, channels)
            temporal_nfc = TemporalAttention(self.num_heads, self.head_dim, cfg.rotary_dim, cfg.temporal_position_bias,
                                             implementation=cfg.attention, dtype=dtype, name=attention_name)(
                norm(norm_name)(video_nfc))
            temporal_bflc = jnp.swapaxes(temporal_nfc.reshape(n // frames, positions, video_frames, channels), 1, 2)
            return x_bflc.at[:, :video_frames].add(temporal_bflc).reshape(n, positions, channels)

        after_ff = cfg.get("temporal_after_ff", False)
        if not after_ff:
            x_nlc = temporal(x_nlc)
        x_nlc = x_nlc + FeedForward(4 * channels, activation="geglu", dtype=dtype, name="ff")(norm("norm3")(x_nlc))
        return temporal(x_nlc) if after_ff else x_nlc


class SpatioTemporalTransformer(nn.Module):
    """diffusers' `Transformer2DModel` (GroupNorm, 1x1 conv in, one block, 1x1 conv out, residual) with
    LaVie's temporal block, on (B, F, H, W, C) frames. `use_linear_projection`: Linear in/out instead of the
    1x1 convs. `transformer_temporal_conv` (LaVie VSR): first a temporal ResNet over the video frames
    (`resblock_temporal`: (3, 1, 1) convs, norms over all frames, no time embedding), whose output is also the
    residual. LaVie initialises its last conv at random; here it starts at zero, so that a new one is the
    identity and a converted image model is unchanged."""

    cfg: Any
    num_heads: int
    only_cross_attention: bool = False

    @nn.compact
    def __call__(self, x_bthwc, context_nsd, context_mask_ns, num_images: int):
        cfg = self.cfg
        b, t, h, w, c = x_bthwc.shape
        if cfg.get("transformer_temporal_conv", False):
            video_frames = t - num_images
            groups = cfg.get("temporal_norm_num_groups", 32)
            video_bthwc = ResnetBlock(c, groups, _TEMPORAL_NORM_EPS, over_frames=True, temporal_kernel=3, zero_out=True,
                                      name="resblock_temporal")(x_bthwc[:, :video_frames])
            x_bthwc = jnp.concatenate([video_bthwc, x_bthwc[:, video_frames:]], axis=1)
        y = per_frame(GroupNorm(cfg.norm_num_groups, _TRANSFORMER_NORM_EPS, name="norm"), x_bthwc)
        linear = cfg.get("use_linear_projection", False)
        project = lambda name: (dense(c, ("conv_in", "conv_out"), name=name) if linear  # noqa: E731
                                else frame_conv(c, 1, name=name))
        y = project("proj_in")(y)
        y_nlc = TransformerBlock(cfg, self.num_heads, c // self.num_heads, self.only_cross_attention,
                                 name="transformer_blocks_0")(
            y.reshape(b * t, h * w, c), context_nsd, context_mask_ns, frames=t, num_images=num_images)
        y = project("proj_out")(y_nlc.reshape(b, t, h, w, c))
        return x_bthwc + y


def frame_contexts(context_bld, context_mask_bl, frames: int, num_images: int):
    """Per-frame text conditioning (B*F, L, D), (B*F, L).

    Without images `context_bld` is (B, L, D), one caption per video. With `num_images` it is
    (B, 1 + num_images, L, D): the video's caption for its F - num_images video frames, then one caption
    per image frame (and the mask likewise, (B, 1 + num_images, L))."""
    if context_bld.ndim == 3:
        context_bld, context_mask_bl = context_bld[:, None], context_mask_bl[:, None]
    captions = context_bld.shape[1]
    if captions != 1 + num_images:
        raise ValueError(f"{num_images} image frames need 1 + {num_images} captions per sample, got {captions}")
    repeats = jnp.array([frames - num_images] + [1] * num_images)
    total = frames
    context_bfld = jnp.repeat(context_bld, repeats, axis=1, total_repeat_length=total)
    mask_bfl = jnp.repeat(context_mask_bl, repeats, axis=1, total_repeat_length=total)
    return (context_bfld.reshape((-1,) + context_bfld.shape[2:]), mask_bfl.reshape((-1,) + mask_bfl.shape[2:]))


class Resample(nn.Module):
    """diffusers' `Downsample2D` (3x3 conv, stride 2, padding 1) or `Upsample2D` (nearest x2, 3x3 conv),
    per frame; its conv is named `conv` as there."""

    features: int
    mode: str

    @nn.compact
    def __call__(self, x_bthwc):
        if self.mode == "down":
            return frame_conv(self.features, 3, strides=2, padding=1, name="conv")(x_bthwc)
        x_bthwc = jnp.repeat(jnp.repeat(x_bthwc, 2, axis=2), 2, axis=3)
        return frame_conv(self.features, 3, name="conv")(x_bthwc)


class UNetLevel(nn.Module):
    """One down or up level (diffusers' CrossAttnDownBlock2D / DownBlock2D / CrossAttnUpBlock2D /
    UpBlock2D): ResNet (+ transformer) layers, then a resampler. A down level returns its outputs for
    the skips; an up level takes `skips`, one per layer, and concatenates the last one first."""

    cfg: Any
    features: int
    num_layers: int
    attention: bool
    resample: str | None
    only_cross_attention: bool = False

    @nn.compact
    def __call__(self, h, temb_bd, context, skips=()):
        cfg = self.cfg
        outputs = []
        for layer in range(self.num_layers):
            if skips:
                h = jnp.concatenate([h, skips[-1 - layer]], axis=-1)
            h = ResnetBlock(self.features, cfg.norm_num_groups, cfg.norm_eps, cfg.get("norm_over_frames", False),
                            name=f"resnets_{layer}")(h, temb_bd, context[-1])
            if self.attention:
                h = SpatioTemporalTransformer(cfg, cfg.num_heads, self.only_cross_attention,
                                              name=f"attentions_{layer}")(h, *context)
            outputs.append(h)
        if self.resample is not None:
            sampler = Resample(self.features, self.resample, name=f"{self.resample}samplers_0")
            h = sampler(h)
            outputs.append(h)
        return constrain_video(h), outputs


class MidBlock(nn.Module):
    """diffusers' `UNetMidBlock2DCrossAttn`: ResNet, transformer, ResNet."""

    cfg: Any
    features: int

    @nn.compact
    def __call__(self, h, temb_bd, context):
        cfg = self.cfg
        resnet = lambda name: ResnetBlock(self.features, cfg.norm_num_groups, cfg.norm_eps,  # noqa: E731
                                          cfg.get("norm_over_frames", False), name=name)
        h = resnet("resnets_0")(h, temb_bd, context[-1])
        h = SpatioTemporalTransformer(cfg, cfg.num_heads, name="attentions_0")(h, *context)
        return constrain_video(resnet("resnets_1")(h, temb_bd, context[-1]))


class LaVieUNet(nn.Module):
    """(B, F, H, W, C_in) noisy latents, timesteps (B,), text (B, L, D) + mask (B, L) -> (B, F, H, W, C_out).

    `num_images` (static): the last that many frames are still images with their own captions
    (`frame_contexts`), for joint image-video training; sampling uses 0. `class_labels_b` (B,) int: the class
    labels a model with `num_class_embeds` needs (the VSR model's noise level), embedded and added to the time
    embedding.
    """

    cfg: Any

    @nn.compact
    def __call__(self, x_bthwc, t_b, context_bld, context_mask_bl, num_images: int = 0, class_labels_b=None):
        cfg = self.cfg
        channels = tuple(cfg.block_out_channels)
        last = len(channels) - 1
        batch = x_bthwc.shape[0]
        context = (*frame_contexts(context_bld, context_mask_bl, x_bthwc.shape[1], num_images), num_images)
        temb_bd = TimestepEmbedder(4 * channels[0], frequency_dim=channels[0], name="time_embedding")(
            jnp.broadcast_to(t_b, (batch,)))
        num_class_embeds = cfg.get("num_class_embeds", 0)
        if num_class_embeds:
            if class_labels_b is None:
                raise ValueError(f"this UNet embeds class labels (num_class_embeds={num_class_embeds}): pass "
                                 "class_labels_b (the VSR model's noise level)")
            table_init = nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed"))
            temb_bd = temb_bd + nn.Embed(num_class_embeds, temb_bd.shape[-1], embedding_init=table_init,
                                         name="class_embedding")(jnp.broadcast_to(class_labels_b, (batch,)))
        elif class_labels_b is not None:
            raise ValueError("class_labels_b given to a UNet without a class embedding (num_class_embeds=0)")

        def temporal(name, width, h):
            return TemporalModule(cfg, width, name=name)(h, temb_bd, num_images)

        h = frame_conv(channels[0], 3, name="conv_in")(x_bthwc)
        skips = [h]
        only_cross = tuple(cfg.get("only_cross_attention", ())) or (False,) * len(channels)
        for level, width in enumerate(channels):
            h, outputs = UNetLevel(cfg, width, cfg.layers_per_block, cfg.attention_levels[level],
                                   "down" if level < last else None, only_cross[level],
                                   name=f"down_blocks_{level}")(h, temb_bd, context)
            skips.extend(outputs)  # LaVie VSR's skips are taken before its temporal modules
            if level in cfg.get("down_temporal_idx", ()):
                h = temporal(f"down_temporal_blocks_{level}", width, h)
        h = MidBlock(cfg, channels[-1], name="mid_block")(h, temb_bd, context)
        if cfg.get("mid_temporal", False):
            h = temporal("mid_temporal_block", channels[-1], h)
        for up_level, width in enumerate(reversed(channels)):
            level = last - up_level
            num_layers = cfg.layers_per_block + 1
            skips, level_skips = skips[:-num_layers], tuple(skips[-num_layers:])
            h, _ = UNetLevel(cfg, width, num_layers, cfg.attention_levels[level], "up" if level > 0 else None,
                             only_cross[level], name=f"up_blocks_{up_level}")(h, temb_bd, context, level_skips)
            if up_level in cfg.get("up_temporal_idx", ()):
                h = temporal(f"up_temporal_blocks_{up_level}", width, h)
        h = nn.silu(video_group_norm(GroupNorm(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out"), h,
                                     over_frames=cfg.get("norm_over_frames", False), num_images=num_images))
        return frame_conv(cfg.out_channels, 3, name="conv_out")(h)
