"""Hugging Face `T5EncoderModel` safetensors -> `T5Encoder` params.

Our parameter names already follow transformers', so the mapping is a rename plus the Linear transpose.
The config comes from the checkpoint's own `config.json` (`t5_config_from_hf`), so a converted encoder
has the bucket count, norm epsilon and sizes that the weights were trained with.

`encoder.embed_tokens.weight` is transformers' tied copy of `shared.weight`: whichever of the two the
file holds is read, and the other is left unused. A full encoder-decoder checkpoint also converts: its
`decoder.*` and `lm_head.weight` tensors are skipped, as `T5EncoderModel.from_pretrained` skips them.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2v_jax.convert.safetensors_io import (SafetensorsCheckpoint, Tensor, convert, flatten_tree, linear,
                                           read_config_json)
from t2v_jax.models import text_encoder

_EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight")


def t5_config_from_hf(config_json: dict, *, dtype: str = "bfloat16") -> ml_collections.ConfigDict:
    """T5Encoder config from a transformers T5 `config.json` (missing fields take transformers'
    defaults); `dtype` is both the compute and the parameter dtype."""
    feed_forward = config_json.get("feed_forward_proj", "relu")
    if feed_forward != "gated-gelu":
        raise ValueError(f"feed_forward_proj={feed_forward!r} is not supported: T5Encoder implements the "
                         "'gated-gelu' feed-forward of T5 v1.1 (wi_0, wi_1, wo)")
    config = text_encoder.default_config()
    config.update(dict(
        vocab_size=config_json["vocab_size"],
        width=config_json["d_model"],
        num_layers=config_json["num_layers"],
        num_heads=config_json["num_heads"],
        head_dim=config_json["d_kv"],
        mlp_dim=config_json["d_ff"],
        num_buckets=config_json.get("relative_attention_num_buckets", 32),
        max_distance=config_json.get("relative_attention_max_distance", 128),
        layer_norm_eps=config_json.get("layer_norm_epsilon", 1e-6),
        dropout=config_json.get("dropout_rate", 0.1),
        dtype=dtype,
        param_dtype=dtype,
    ))
    return config


def read_t5_config(checkpoint_dir: str, *, dtype: str = "bfloat16") -> ml_collections.ConfigDict:
    """`t5_config_from_hf` of `checkpoint_dir/config.json`."""
    return t5_config_from_hf(read_config_json(checkpoint_dir), dtype=dtype)


def t5_mapping(config, *, embedding: str = "shared.weight") -> dict:
    """{T5Encoder param path: checkpoint tensor} for `config`; `embedding` names the token table."""
    mapping = {
        "shared/embedding": Tensor(embedding),
        "final_layer_norm/scale": Tensor("encoder.final_layer_norm.weight"),
        "block_0/layer_0/SelfAttention/relative_attention_bias/embedding":
            Tensor("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    }
    for i in range(config.num_layers):
        ours, theirs = f"block_{i}/layer_", f"encoder.block.{i}.layer."
        for name in ("q", "k", "v", "o"):
            mapping[f"{ours}0/SelfAttention/{name}/kernel"] = Tensor(f"{theirs}0.SelfAttention.{name}.weight",
                                                                     linear)
        for name in ("wi_0", "wi_1", "wo"):
            mapping[f"{ours}1/DenseReluDense/{name}/kernel"] = Tensor(
                f"{theirs}1.DenseReluDense.{name}.weight", linear)
        for layer in ("0", "1"):
            mapping[f"{ours}{layer}/layer_norm/scale"] = Tensor(f"{theirs}{layer}.layer_norm.weight")
    return mapping


def t5_param_shapes(config) -> dict:
    """{param path: shape} of T5Encoder(config), traced on one token (no memory used)."""
    model = text_encoder.T5Encoder(config)
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    mask = jax.ShapeDtypeStruct((1, 1), jnp.bool_)
    variables = jax.eval_shape(lambda i, m: model.init(jax.random.PRNGKey(0), i, m), ids, mask)
    return {path: leaf.shape for path, leaf in flatten_tree(nn.unbox(variables)["params"]).items()}


def convert_t5(checkpoint_dir: str, config, *, dtype=None, progress=None) -> dict:
    """Reads `checkpoint_dir` (safetensors, sharded or not) into T5Encoder params of `dtype`
    (default `config.param_dtype`); apply them as `T5Encoder(config).apply({"params": params}, ...)`."""
    checkpoint = SafetensorsCheckpoint(checkpoint_dir)
    embedding = next((name for name in _EMBEDDING_NAMES if name in checkpoint), _EMBEDDING_NAMES[0])

    def ignore_unused(name: str) -> bool:
        return name in _EMBEDDING_NAMES or name.startswith("decoder.") or name == "lm_head.weight"

    return convert(checkpoint, t5_mapping(config, embedding=embedding), t5_param_shapes(config),
                   dtype=np.dtype(jnp.dtype(dtype or config.param_dtype)), ignore_unused=ignore_unused,
                   progress=progress)
