"""CLIP's text transformer, the caption encoder of Stable Diffusion 1.x and of the x4 upscaler, and so of LaVie.

LaVie conditions its base and interpolation UNets on the last hidden state of SD 1.4's CLIP ViT-L/14 text
encoder (`clip_vit_l14_config()`), and its super-resolution UNet on that of the x4 upscaler's OpenCLIP
ViT-H/14 (`open_clip_vit_h14_config()`); weights come from a transformers `CLIPTextModel` through
`t2v_jax.convert.clip`. The architecture, as in `transformers.CLIPTextModel`: token embedding plus a
learned position embedding, pre-LayerNorm layers of causal self-attention (with biases, 1/sqrt(head_dim)
scale) and an MLP (quick-GELU for OpenAI's CLIP, the exact GELU for OpenCLIP's), then a final LayerNorm.
Only `last_hidden_state` is computed: SD reads the whole sequence, so the eos-pooled output and the text
projection are left out.

Parameter names follow transformers' module names (`encoder.layers.0.self_attn.q_proj.weight` ->
`layers_0/self_attn/query/kernel` transposed, `final_layer_norm.weight` -> `final_layer_norm/scale`), so
the converter is a rename plus the shared `Attention`'s projection names.
"""

import functools

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from t2v_jax.layers.attention import Attention
from t2v_jax.layers.feed_forward import FeedForward
from t2v_jax.layers.norms import LayerNorm


def default_config() -> ml_collections.ConfigDict:
    """A tiny encoder that runs on CPU in tests.

    Fields: vocab_size; width (hidden_size); num_layers; num_heads (head_dim = width / num_heads);
    mlp_dim (intermediate_size); activation (hidden_act: the MLP's `FeedForward` activation, "quick_gelu"
    for OpenAI's CLIP, "gelu" for OpenCLIP's); max_length (max_position_embeddings: the longest token
    sequence); layer_norm_eps (of every LayerNorm); attention_implementation (a `t2v_jax.layers.attention`
    kernel with causal support); dtype / param_dtype (compute / storage).
    """
    cfg = ml_collections.ConfigDict()
    cfg.vocab_size = 1000
    cfg.width = 64
    cfg.num_layers = 2
    cfg.num_heads = 4
    cfg.mlp_dim = 128
    cfg.activation = "quick_gelu"
    cfg.max_length = 16
    cfg.layer_norm_eps = 1e-5
    cfg.attention_implementation = "xla"
    cfg.dtype = "float32"
    cfg.param_dtype = "float32"
    return cfg


def clip_vit_l14_config() -> ml_collections.ConfigDict:
    """openai/clip-vit-large-patch14's text tower, as shipped in SD 1.4's `text_encoder/` (123M
    parameters, so float32 costs little; set dtype to bfloat16 to halve activation memory)."""
    cfg = default_config()
    cfg.vocab_size = 49408
    cfg.width = 768
    cfg.num_layers = 12
    cfg.num_heads = 12
    cfg.mlp_dim = 3072
    cfg.max_length = 77
    return cfg


def open_clip_vit_h14_config() -> ml_collections.ConfigDict:
    """OpenCLIP ViT-H/14's text tower as the x4 upscaler ships it in `text_encoder/` (23 of its 24 layers, as
    Stable Diffusion 2 reads the penultimate layer; exact GELU; 340M parameters)."""
    cfg = clip_vit_l14_config()
    cfg.update(width=1024, num_layers=23, num_heads=16, mlp_dim=4096, activation="gelu")
    return cfg


def _layer_norm(cfg, name):
    return LayerNorm(cfg.layer_norm_eps, param_dtype=jnp.dtype(cfg.param_dtype), name=name)


class CLIPEncoderLayer(nn.Module):
    """x + attn(ln1(x)), then x + mlp(ln2(x)); attention is causal, so a token never sees later ones."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x_bld, mask_bl):
        cfg = self.config
        attention = Attention(num_heads=cfg.num_heads, head_dim=cfg.width // cfg.num_heads,
                              implementation=cfg.attention_implementation, causal=True,
                              dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), name="self_attn")
        x_bld = x_bld + attention(_layer_norm(cfg, "layer_norm1")(x_bld), kv_mask_bs=mask_bl)
        mlp = FeedForward(cfg.mlp_dim, activation=cfg.activation, dtype=jnp.dtype(cfg.dtype),
                          param_dtype=jnp.dtype(cfg.param_dtype), name="mlp")
        return x_bld + mlp(_layer_norm(cfg, "layer_norm2")(x_bld))


class CLIPTextEncoder(nn.Module):
    """Token ids (B, L), L <= max_length -> last_hidden_state (B, L, width).

    `mask_bl` (True on real tokens) hides padded keys on top of the causal mask, as transformers'
    `attention_mask` does. Stable Diffusion passes none: its UNet was trained on states in which
    padding tokens are attended like any other, so leave it None to reproduce SD. With a mask, a query
    whose visible keys are all padding (left padding) gets zeros from attention, the shared `attention()`
    convention, and so differs from transformers: pad on the right, as CLIP's tokenizer does.
    """

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, ids_bl, mask_bl=None):
        cfg = self.config
        if cfg.width % cfg.num_heads:
            raise ValueError(f"width={cfg.width} is not divisible by num_heads={cfg.num_heads}")
        length = ids_bl.shape[1]
        if length > cfg.max_length:
            # The position lookup would clamp silently, giving later tokens the last position's embedding.
            raise ValueError(f"{length} tokens exceed max_length={cfg.max_length} learned positions")
        embed = functools.partial(nn.Embed, features=cfg.width, dtype=jnp.dtype(cfg.dtype),
                                  param_dtype=jnp.dtype(cfg.param_dtype))
        tokens = embed(cfg.vocab_size, embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("vocab", "embed")), name="token_embedding")
        positions = embed(cfg.max_length, embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, "embed")), name="position_embedding")
        x_bld = tokens(ids_bl) + positions(jnp.arange(length))[None]
        if mask_bl is not None:
            mask_bl = jnp.asarray(mask_bl, bool)
        for i in range(cfg.num_layers):
            x_bld = CLIPEncoderLayer(cfg, name=f"layers_{i}")(x_bld, mask_bl)
            # Captions split over the batch axes; "text_length" stays whole under every preset.
            x_bld = nn.with_logical_constraint(x_bld, ("batch", "text_length", "embed"))
        return _layer_norm(cfg, "final_layer_norm")(x_bld)
