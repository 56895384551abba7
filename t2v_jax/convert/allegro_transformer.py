"""diffusers `AllegroTransformer3DModel` safetensors -> `VideoDiT` params.

The block stack is one `nn.scan`, so per-layer tensors `transformer_blocks.{i}.*` are stacked on a
leading layer axis. The patch embedding is diffusers' per-frame Conv2d(kernel = stride = 2), which
equals our Dense on patchified tokens once its (out, in, kh, kw) weight is laid out as (kh, kw, in).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2v_jax.convert.safetensors_io import (SafetensorsCheckpoint, Stacked, Tensor, convert, flatten_tree,
                                            linear)
from t2v_jax.models import video_dit

_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "out": "to_out.0"}


def dit_config_from_diffusers(config_json: dict, *, dtype: str = "bfloat16") -> ml_collections.ConfigDict:
    """VideoDiT config from the checkpoint's `transformer/config.json`."""
    width = config_json["num_attention_heads"] * config_json["attention_head_dim"]
    if config_json.get("cross_attention_dim", width) != width:
        raise ValueError(f"cross_attention_dim={config_json['cross_attention_dim']} differs from the "
                         f"transformer width {width}; Allegro projects captions to the width")
    if not config_json.get("attention_bias", True):
        raise ValueError("attention_bias=False checkpoints are not supported: Allegro's attention has biases")
    if config_json.get("patch_size_t", 1) != 1:
        raise ValueError(f"patch_size_t={config_json['patch_size_t']}: diffusers' Allegro embeds "
                         "patches per frame (Conv2d), so only 1 is meaningful")
    config = video_dit.default_config()
    config.update(dict(
        num_layers=config_json["num_layers"],
        width=width,
        num_heads=config_json["num_attention_heads"],
        in_channels=config_json["in_channels"],
        out_channels=config_json["out_channels"],
        patch_thw=(1, config_json["patch_size"], config_json["patch_size"]),
        caption_channels=config_json["caption_channels"],
        rope_interpolation_scale=(config_json["interpolation_scale_t"], config_json["interpolation_scale_h"],
                                  config_json["interpolation_scale_w"]),
        dtype=dtype,
    ))
    return config


def _patch_kernel(weight_ochw):
    """Conv2d (out, in, kh, kw) -> Dense kernel over patchify's (kh, kw, in) features."""
    out_channels = weight_ochw.shape[0]
    return weight_ochw.transpose(2, 3, 1, 0).reshape(-1, out_channels)


def _dense(source: str, target: str) -> dict:
    return {f"{target}/kernel": Tensor(f"{source}.weight", linear), f"{target}/bias": Tensor(f"{source}.bias")}


def _stacked_dense(num_layers: int, source: str, target: str) -> dict:
    """`transformer_blocks.{i}.<source>` for every layer -> `blocks/<target>`."""
    blocks = [f"transformer_blocks.{i}.{source}" for i in range(num_layers)]
    return {f"blocks/{target}/kernel": Stacked(tuple(Tensor(f"{b}.weight", linear) for b in blocks)),
            f"blocks/{target}/bias": Stacked(tuple(Tensor(f"{b}.bias") for b in blocks))}


def dit_mapping(config) -> dict:
    """{VideoDiT param path: checkpoint tensor(s)} for `config`."""
    mapping = {
        "patch_embed/proj/kernel": Tensor("pos_embed.proj.weight", _patch_kernel),
        "patch_embed/proj/bias": Tensor("pos_embed.proj.bias"),
        "scale_shift_table": Tensor("scale_shift_table"),
        "blocks/scale_shift_table": Stacked(tuple(
            Tensor(f"transformer_blocks.{i}.scale_shift_table") for i in range(config.num_layers))),
    }
    mapping.update(_dense("proj_out", "proj_out"))
    mapping.update(_dense("adaln_single.linear", "adaln_single/linear"))
    for name in ("linear_1", "linear_2"):
        mapping.update(_dense(f"adaln_single.emb.timestep_embedder.{name}",
                              f"adaln_single/timestep_embedder/{name}"))
        mapping.update(_dense(f"caption_projection.{name}", f"caption_projection/{name}"))
    for attn in ("attn1", "attn2"):
        for ours, theirs in _ATTENTION_NAMES.items():
            mapping.update(_stacked_dense(config.num_layers, f"{attn}.{theirs}", f"{attn}/{ours}"))
    mapping.update(_stacked_dense(config.num_layers, "ff.net.0.proj", "ff/proj_in"))
    mapping.update(_stacked_dense(config.num_layers, "ff.net.2", "ff/proj_out"))
    return mapping


def dit_param_shapes(config) -> dict:
    """{param path: shape} of VideoDiT(config), traced on a one-patch input (no memory used)."""
    patch = tuple(config.patch_thw)
    model = video_dit.VideoDiT(config)
    x = jax.ShapeDtypeStruct((1, *patch, config.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    context = jax.ShapeDtypeStruct((1, 1, config.caption_channels), jnp.float32)
    variables = jax.eval_shape(lambda x, t, c: model.init(jax.random.PRNGKey(0), x, t, c), x, t, context)
    return {path: leaf.shape for path, leaf in flatten_tree(nn.unbox(variables)["params"]).items()}


def convert_dit(transformer_dir: str, config, *, dtype=np.float32, progress=None) -> dict:
    """Reads `transformer_dir` (safetensors, sharded or not) into VideoDiT params of `dtype`."""
    return convert(SafetensorsCheckpoint(transformer_dir), dit_mapping(config), dit_param_shapes(config),
                   dtype=dtype, progress=progress)
