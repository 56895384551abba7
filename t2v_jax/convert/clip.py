"""transformers `CLIPTextModel` weights -> `CLIPTextEncoder` params.

Our parameter names follow transformers' modules, so the mapping is a rename (q/k/v/out_proj -> the
shared `Attention`'s query/key/value/out) plus the Linear transpose; the MLP's activation comes from
`hidden_act` (OpenAI's quick-GELU in SD 1.4, the exact GELU of OpenCLIP in the x4 upscaler). The source is a
safetensors file or folder (`save_pretrained`'s output, a `text_encoder/` folder) or an in-memory state
dict, e.g. `model.state_dict()` or `torch.load` of a `pytorch_model.bin`; both go through the shared
`convert`, so every missing, unused or mis-shaped tensor is named in one `ConversionError` before any is
copied.

Tensor names come in two layouts: checkpoints written by transformers 4 (the ones on the Hub, SD 1.4's
included) prefix them with `text_model.`, while transformers 5's `CLIPTextModel.state_dict()` has no
prefix. The converter uses whichever the source holds. `embeddings.position_ids` is an arange buffer, not
a weight (older transformers saved it; the model computes positions itself), so it is ignored by name.
"""

import os
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2v_jax.convert.safetensors_io import (SafetensorsCheckpoint, StateDictCheckpoint, Tensor, convert, flatten_tree,
                                           linear, read_config_json)
from t2v_jax.models import clip_text

HUB_PREFIX = "text_model."
_ATTENTION_NAMES = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
# transformers' `hidden_act` -> the `FeedForward` activation computing the same function.
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}


def clip_text_config_from_hf(config_json: dict, *, dtype: str = "float32") -> ml_collections.ConfigDict:
    """CLIPTextEncoder config from a transformers `CLIPTextConfig` dict (SD's `text_encoder/config.json`);
    missing fields take transformers' defaults. `dtype` is both the compute and the parameter dtype."""
    activation = config_json.get("hidden_act", "quick_gelu")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"hidden_act={activation!r} is not supported; CLIPTextEncoder implements "
                         f"{sorted(_ACTIVATIONS)} (OpenAI's CLIP in SD 1.x, OpenCLIP's in SD 2 and the x4 upscaler)")
    config = clip_text.default_config()
    config.update(dict(
        vocab_size=config_json.get("vocab_size", 49408),
        width=config_json.get("hidden_size", 512),
        num_layers=config_json.get("num_hidden_layers", 12),
        num_heads=config_json.get("num_attention_heads", 8),
        mlp_dim=config_json.get("intermediate_size", 2048),
        activation=_ACTIVATIONS[activation],
        max_length=config_json.get("max_position_embeddings", 77),
        layer_norm_eps=config_json.get("layer_norm_eps", 1e-5),
        dtype=dtype,
        param_dtype=dtype,
    ))
    return config


def read_clip_text_config(checkpoint_dir: str, *, dtype: str = "float32") -> ml_collections.ConfigDict:
    """`clip_text_config_from_hf` of `checkpoint_dir/config.json`."""
    return clip_text_config_from_hf(read_config_json(checkpoint_dir), dtype=dtype)


def _dense(source: str, target: str) -> dict:
    return {f"{target}/kernel": Tensor(f"{source}.weight", linear), f"{target}/bias": Tensor(f"{source}.bias")}


def _norm(source: str, target: str) -> dict:
    return {f"{target}/scale": Tensor(f"{source}.weight"), f"{target}/bias": Tensor(f"{source}.bias")}


def clip_text_mapping(config, *, prefix: str = HUB_PREFIX) -> dict:
    """{CLIPTextEncoder param path: checkpoint tensor} for `config`; `prefix` starts every tensor name
    (`HUB_PREFIX` for Hub checkpoints, "" for transformers 5's state dict)."""
    mapping = {
        "token_embedding/embedding": Tensor(f"{prefix}embeddings.token_embedding.weight"),
        "position_embedding/embedding": Tensor(f"{prefix}embeddings.position_embedding.weight"),
    }
    mapping.update(_norm(f"{prefix}final_layer_norm", "final_layer_norm"))
    for i in range(config.num_layers):
        ours, theirs = f"layers_{i}", f"{prefix}encoder.layers.{i}"
        for name, source in _ATTENTION_NAMES.items():
            mapping.update(_dense(f"{theirs}.self_attn.{source}", f"{ours}/self_attn/{name}"))
        for theirs_name, name in (("fc1", "proj_in"), ("fc2", "proj_out")):
            mapping.update(_dense(f"{theirs}.mlp.{theirs_name}", f"{ours}/mlp/{name}"))
        for name in ("layer_norm1", "layer_norm2"):
            mapping.update(_norm(f"{theirs}.{name}", f"{ours}/{name}"))
    return mapping


def clip_text_param_shapes(config) -> dict:
    """{param path: shape} of CLIPTextEncoder(config), traced on one token (no memory used)."""
    model = clip_text.CLIPTextEncoder(config)
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    variables = jax.eval_shape(lambda i: model.init(jax.random.PRNGKey(0), i), ids)
    return {path: leaf.shape for path, leaf in flatten_tree(nn.unbox(variables)["params"]).items()}


def convert_clip_text(source, config, *, dtype=None, progress=None) -> dict:
    """CLIPTextEncoder params of `dtype` (default `config.param_dtype`) from `source`: a safetensors file
    or folder path, or a state dict {name: torch tensor or array}. Apply them as
    `CLIPTextEncoder(config).apply({"params": params}, ids_bl)`."""
    checkpoint = StateDictCheckpoint(source) if isinstance(source, Mapping) else SafetensorsCheckpoint(os.fspath(source))
    prefix = HUB_PREFIX if any(name.startswith(HUB_PREFIX) for name in checkpoint.keys()) else ""
    position_ids = f"{prefix}embeddings.position_ids"
    return convert(checkpoint, clip_text_mapping(config, prefix=prefix), clip_text_param_shapes(config),
                   dtype=np.dtype(jnp.dtype(dtype or config.param_dtype)),
                   ignore_unused=lambda name: name == position_ids, progress=progress)
