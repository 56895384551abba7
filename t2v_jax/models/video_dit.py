"""Allegro's VideoDiT: a diffusion transformer with full 3D attention over video latent tokens.

Pipeline (diffusers `AllegroTransformer3DModel`, channels-last):
latents (B, T, H, W, C) -> PatchEmbed3D -> N x block -> final AdaLN -> Dense -> unpatchify.
Each block: LayerNorm (no affine) -> modulate -> 3D self-attention with 3D RoPE -> gated residual;
cross-attention to the projected caption (key-padding mask, no norm, as Allegro) -> residual;
LayerNorm -> modulate -> tanh-GELU MLP -> gated residual. Conditioning is AdaLN-single: one
timestep MLP for the whole network, plus a learned (6, width) table per block.

Blocks are one `nn.scan` over a stacked layer axis (one compiled block, parameters with a
leading "layers" axis) wrapped in `nn.remat` with a policy from the config, so depth costs
neither compile time nor activation memory beyond the chosen policy. `scan_unroll` layers run per
loop iteration: the parameters keep their stacked layout whatever its value.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from t2v_jax.layers.attention import Attention
from t2v_jax.layers.dense import dense
from t2v_jax.layers.feed_forward import FeedForward
from t2v_jax.layers.embeddings import AdaLNSingle, PatchEmbed3D, modulate, position_embedding_3d, unpatchify
from t2v_jax.layers.norms import LayerNorm
from t2v_jax.layers.rope import rope_3d

REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# What `absolute_position` may add to the patch tokens besides RoPE: nothing (Allegro) or fixed 3D sinusoids.
ABSOLUTE_POSITIONS = ("none", "sincos")

# Allegro's RoPE position interpolation (t, h, w) per released resolution.
ALLEGRO_ROPE_SCALES = {
    "88x720p": (2.2, 2.0, 2.0),
    "40x720p": (1.0, 2.0, 2.0),
    "40x360p": (1.0, 1.0, 1.0),
}


def default_config() -> ml_collections.ConfigDict:
    """CPU-sized VideoDiT (4 layers, width 96 = 4 heads x 24) for the quickstart and tests.

    Two options Allegro does not use (its configs keep them off): `absolute_position="sincos"` adds
    fixed 3D sinusoidal positions to the patch tokens, on top of RoPE; `pooled_text=True` adds a
    projection of the caption's masked mean to the embedded timestep that drives AdaLN-single.
    `scan_unroll` (how many layers one iteration of the block scan runs; the same numbers whatever
    its value): num_layers or more removes the loop, whose per-layer parameter slices and gradient
    stacking make a 4-layer width-96 training step 1.5x slower on 2 CPU cores.
    """
    return ml_collections.ConfigDict(dict(
        num_layers=4,
        width=96,
        num_heads=4,
        in_channels=4,
        out_channels=4,
        patch_thw=(1, 2, 2),
        caption_channels=128,
        mlp_ratio=4.0,
        rope_theta=10000.0,
        rope_interpolation_scale=(1.0, 1.0, 1.0),
        absolute_position="none",
        pooled_text=False,
        attention="xla",
        remat_policy="none",
        scan_unroll=1,
        dtype="float32",
        param_dtype="float32",
    ))


def allegro_config(resolution: str = "88x720p") -> ml_collections.ConfigDict:
    """Allegro 2.8B (diffusers AllegroTransformer3DModel defaults): 32 layers, 24 heads x 96
    (width 2304), patch (1, 2, 2), 4 latent channels, T5 v1.1 XXL captions (4096 channels)."""
    if resolution not in ALLEGRO_ROPE_SCALES:
        raise ValueError(f"resolution {resolution!r} is unknown; choose one of {sorted(ALLEGRO_ROPE_SCALES)}")
    config = default_config()
    config.update(dict(num_layers=32, width=2304, num_heads=24, caption_channels=4096,
                       rope_interpolation_scale=ALLEGRO_ROPE_SCALES[resolution], attention="auto",
                       remat_policy="dots_with_no_batch_dims_saveable", dtype="bfloat16"))
    return config


def head_dim(config) -> int:
    """Per-head width; the config states width and heads, as the sharding and FLOP maths need."""
    if config.width % config.num_heads:
        raise ValueError(f"dit.num_heads={config.num_heads} does not divide dit.width={config.width}")
    return config.width // config.num_heads


def _dtypes(config):
    return jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)


def _table_init(width: int):
    """PixArt's scale-shift tables: standard normal / sqrt(width)."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) / width ** 0.5
    return init


class CaptionProjection(nn.Module):
    """Text-encoder features -> width: Dense -> tanh-GELU -> Dense (PixArtAlphaTextProjection)."""

    width: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, context_bld):
        h = dense(self.width, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype,
                  name="linear_1")(context_bld)
        h = nn.gelu(h, approximate=True)
        return dense(self.width, ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype,
                     name="linear_2")(h)


class DiTBlock(nn.Module):
    """One Allegro transformer block; the (carry, output) return is the `nn.scan` contract.

    `memory_bmd` (MALT's memory of this layer) joins the self-attention's keys and values, normalised as the
    tokens are but without modulation or position. With `emit_hidden` the block also returns its input
    tokens, which a recurrent memory reads (MALT), else None."""

    config: Any
    emit_hidden: bool = False

    @nn.compact
    def __call__(self, x_bld, context_bsd, context_mask_bs, modulation_b6w, cos_ld, sin_ld, memory_bmd=None):
        cfg = self.config
        dtype, param_dtype = _dtypes(cfg)
        width = cfg.width
        table_6w = self.param("scale_shift_table",
                              nn.with_logical_partitioning(_table_init(width), (None, "embed")),
                              (6, width), param_dtype)
        mod_b6w = (table_6w[None] + modulation_b6w).astype(dtype)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            mod_b6w[:, i, None, :] for i in range(6))
        attention = functools.partial(Attention, num_heads=cfg.num_heads, head_dim=head_dim(cfg),
                                      implementation=cfg.attention, dtype=dtype,
                                      param_dtype=param_dtype)

        input_bld = x_bld
        norm1 = LayerNorm(eps=1e-6, use_affine=False, name="norm1")
        h_bld = modulate(norm1(x_bld), shift_msa, scale_msa)
        memory_bmd = None if memory_bmd is None else norm1(memory_bmd.astype(dtype))
        x_bld = x_bld + gate_msa * attention(name="attn1")(h_bld, rope=(cos_ld, sin_ld, 3), memory_bmd=memory_bmd)
        # PixArt zero-initialises the cross-attention output so training starts unconditioned.
        x_bld = x_bld + attention(out_kernel_init=nn.initializers.zeros_init(), name="attn2")(
            x_bld, context_bsd, kv_mask_bs=context_mask_bs)
        h_bld = modulate(LayerNorm(eps=1e-6, use_affine=False, name="norm2")(x_bld), shift_mlp, scale_mlp)
        h_bld = FeedForward(int(width * cfg.mlp_ratio), dtype=dtype, param_dtype=param_dtype,
                            name="ff")(h_bld)
        x_bld = x_bld + gate_mlp * h_bld
        return nn.with_logical_constraint(x_bld, ("batch", "length", "embed")), (input_bld if self.emit_hidden
                                                                                 else None)


def block_stack(config, *, memory: bool = False):
    """The scanned (and, unless remat_policy is "none", rematerialised) DiTBlock class; with `memory`, each
    layer also takes its own slice of a (layers, B, M, width) memory."""
    if config.remat_policy not in REMAT_POLICIES:
        raise ValueError(f"remat_policy {config.remat_policy!r} is unknown; choose one of "
                         f"{list(REMAT_POLICIES)}")
    block = DiTBlock
    if config.remat_policy != "none":
        block = nn.remat(block, policy=REMAT_POLICIES[config.remat_policy], prevent_cse=False)
    return nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=(nn.broadcast,) * 5 + ((0,) if memory else ()), length=config.num_layers,
                   unroll=min(config.get("scan_unroll", 1), config.num_layers),
                   metadata_params={nn.PARTITION_NAME: "layers"})


class VideoDiT(nn.Module):
    """Denoiser: (noisy latents, timesteps in [0, 1000), caption features, caption mask) -> prediction.

    What the prediction means (eps, v, flow) is the diffusion config's business. `deterministic`
    is part of the shared denoiser signature; Allegro has no dropout, so it changes nothing here.
    `memory_lbmd` (layers, B, M, width): tokens each layer's self-attention also attends to (MALT's
    memory, `models/malt.py`); `return_hidden` returns every layer's input tokens (layers, B, L, width)
    instead of the prediction, for a memory to read.
    """

    config: Any

    @nn.compact
    def __call__(self, x_bthwc, t_b, context_bld, context_mask_bl=None, *, deterministic: bool = True,
                 memory_lbmd=None, return_hidden: bool = False):
        cfg = self.config
        dtype, param_dtype = _dtypes(cfg)
        width = cfg.width
        patch = tuple(cfg.patch_thw)
        _, frames, height, width_px, _ = x_bthwc.shape
        grid_thw = (frames // patch[0], height // patch[1], width_px // patch[2])

        tokens_bld = PatchEmbed3D(width, patch, dtype=dtype, param_dtype=param_dtype,
                                  name="patch_embed")(x_bthwc.astype(dtype))
        if cfg.get("absolute_position", "none") == "sincos":
            tokens_bld = tokens_bld + position_embedding_3d(grid_thw, width).astype(dtype)[None]
        tokens_bld = nn.with_logical_constraint(tokens_bld, ("batch", "length", "embed"))
        context_bsd = CaptionProjection(width, dtype=dtype, param_dtype=param_dtype,
                                        name="caption_projection")(context_bld.astype(dtype))
        if context_mask_bl is not None:
            context_mask_bl = jnp.asarray(context_mask_bl).astype(bool)
        pooled_bw = None
        if cfg.get("pooled_text", False):
            # Global attributes (digit, colour, direction) reach every block's modulation, not only
            # the tokens that attend to the right caption byte.
            weights_bs = (jnp.ones(context_bsd.shape[:2], dtype) if context_mask_bl is None
                          else context_mask_bl.astype(dtype))
            mean_bw = (jnp.einsum("bs,bsw->bw", weights_bs, context_bsd)
                       / jnp.maximum(weights_bs.sum(-1, keepdims=True), 1.0))
            pooled_bw = dense(width, ("embed", "mlp"), dtype=dtype, param_dtype=param_dtype,
                              name="pooled_text")(mean_bw)
        modulation_b6w, embedded_t_bw = AdaLNSingle(width, dtype=dtype, param_dtype=param_dtype,
                                                    name="adaln_single")(t_b, pooled_bw)
        cos_ld, sin_ld = rope_3d(grid_thw, head_dim(cfg), theta=cfg.rope_theta,
                                 interpolation_scale=tuple(cfg.rope_interpolation_scale))
        memory_args = () if memory_lbmd is None else (memory_lbmd,)
        tokens_bld, hidden_lbld = block_stack(cfg, memory=memory_lbmd is not None)(
            cfg, emit_hidden=return_hidden, name="blocks")(
            tokens_bld, context_bsd, context_mask_bl, modulation_b6w, cos_ld, sin_ld, *memory_args)
        if return_hidden:
            return hidden_lbld

        table_2w = self.param("scale_shift_table",
                              nn.with_logical_partitioning(_table_init(width), (None, "embed")),
                              (2, width), param_dtype)
        shift_scale_b2w = (table_2w[None] + embedded_t_bw[:, None]).astype(dtype)
        h_bld = modulate(LayerNorm(eps=1e-6, use_affine=False, name="norm_out")(tokens_bld),
                         shift_scale_b2w[:, 0:1], shift_scale_b2w[:, 1:2])
        out_bln = dense(patch[0] * patch[1] * patch[2] * cfg.out_channels, ("embed", None),
                        kernel_init=nn.initializers.zeros_init(), dtype=dtype, param_dtype=param_dtype,
                        name="proj_out")(h_bld)
        return unpatchify(out_bln, grid_thw, patch, cfg.out_channels).astype(x_bthwc.dtype)
