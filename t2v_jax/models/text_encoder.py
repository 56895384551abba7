"""Text conditioning: tokenizers and a T5 v1.1 encoder.

The default is small and byte-level, trained with the video model, so it needs no download and no
vocabulary file. `t5_v1_1_xxl_config()` gives Allegro's T5 v1.1 XXL encoder for weights converted from
Hugging Face (`t2v_jax.convert.t5`), and `T5Tokenizer` reads the checkpoint's own tokenizer files.
With converted weights the encoder matches `transformers.T5EncoderModel` at every position, padded ones
included (in rows with at least one real token): pre-norm RMSNorm (fp32 variance, no mean), unscaled
attention logits plus a bucketed relative position bias that block 0 computes and every block reuses,
gated tanh-GELU feed-forward, final norm.
Parameter names follow `transformers.T5EncoderModel` (`encoder.block.0.layer.0.SelfAttention.q.weight` ->
`block_0/layer_0/SelfAttention/q/kernel` transposed; `shared.weight` -> `shared/embedding`;
`encoder.final_layer_norm.weight` -> `final_layer_norm/scale`), so a converter is a rename.
"""

import importlib
import json
import os
import warnings
from typing import Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from t2v_jax.layers.attention import attention
from t2v_jax.layers.dense import dense
from t2v_jax.layers.norms import RMSNorm
from t2v_jax.layers.position_bias import RelativePositionBias


class ByteTokenizer:
    """UTF-8 bytes shifted past three specials: pad=0, eos=1, unk=2 (T5's ids), byte b -> b + 3.

    Every string is encodable, so `unk` is reserved only to keep T5's special-id layout. Captions longer
    than `max_length - 1` bytes are cut so that eos always fits.
    """

    PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
    OFFSET = 3
    vocab_size = 256 + OFFSET

    def __init__(self, max_length: int):
        if max_length < 1:
            raise ValueError(f"max_length={max_length} must be at least 1 (room for eos)")
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]):
        """Returns (ids_bl int32, mask_bl bool) numpy arrays; mask is True on real tokens and eos."""
        ids_bl = np.full((len(texts), self.max_length), self.PAD_ID, np.int32)
        for i, text in enumerate(texts):
            ids = [b + self.OFFSET for b in text.encode("utf-8")[: self.max_length - 1]] + [self.EOS_ID]
            ids_bl[i, : len(ids)] = ids
        return ids_bl, ids_bl != self.PAD_ID

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text needs, eos included, before any cut."""
        return [len(text.encode("utf-8")) + 1 for text in texts]

    def decode(self, ids_l) -> str:
        """Inverse of tokenisation up to eos; a multi-byte character cut by truncation is dropped."""
        out = bytearray()
        for token in np.asarray(ids_l).tolist():
            if token == self.EOS_ID:
                break
            if token >= self.OFFSET:
                out.append(token - self.OFFSET)
        return out.decode("utf-8", errors="ignore")


def _import_optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"reading this tokenizer needs the optional package {module!r}: "
                          f"pip install {module}") from error


def _special_token(path: str, key: str, default: str) -> str:
    """The token that the folder's transformers files name under `key` ("eos_token", "pad_token")."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file) as f:
                value = json.load(f).get(key)
            if value is not None:
                return value["content"] if isinstance(value, dict) else value
    return default


def _tokenizers_backend(file: str):
    """(text -> ids without specials, {token: id}) from a `tokenizer.json`."""
    tokenizer = _import_optional("tokenizers").Tokenizer.from_file(file)
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    return encode, tokenizer.get_vocab(with_added_tokens=True)


def _sentencepiece_backend(file: str):
    """(text -> ids, {piece: id}) from a sentencepiece `spiece.model`."""
    model = _import_optional("sentencepiece").SentencePieceProcessor(model_file=file)
    return model.encode, {model.id_to_piece(i): i for i in range(model.get_piece_size())}


class T5Tokenizer:
    """The tokenizer of a T5 checkpoint folder, giving the ids of `transformers.T5TokenizerFast` called
    with `truncation=True, padding="max_length"`: text ids, eos, then pad ids up to `max_length`.

    `from_dir` reads `tokenizer.json` with `tokenizers` when the folder has one (the very pipeline
    transformers runs, added tokens included), else `spiece.model` with `sentencepiece`. That second path
    knows nothing of transformers' added tokens, so a prompt that spells out `</s>` or `<extra_id_0>`
    gets the ids of those characters rather than the special id.
    """

    def __init__(self, encode, eos_id: int, pad_id: int, max_length: int):
        """`encode` maps a text to its token ids, without eos."""
        if max_length < 1:
            raise ValueError(f"max_length={max_length} must be at least 1 (room for eos)")
        self.encode, self.eos_id, self.pad_id, self.max_length = encode, eos_id, pad_id, max_length

    @classmethod
    def from_dir(cls, path: str, max_length: int = 512) -> "T5Tokenizer":
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            encode, vocab = _tokenizers_backend(os.path.join(path, "tokenizer.json"))
        elif os.path.isfile(os.path.join(path, "spiece.model")):
            encode, vocab = _sentencepiece_backend(os.path.join(path, "spiece.model"))
        else:
            raise FileNotFoundError(f"{path} has neither tokenizer.json nor spiece.model")
        ids = {}
        for key, default in (("eos_token", "</s>"), ("pad_token", "<pad>")):
            token = _special_token(path, key, default)
            if token not in vocab:
                raise ValueError(f"{path}: {key} {token!r} is not in the tokenizer's vocabulary")
            ids[key] = vocab[token]
        return cls(encode, ids["eos_token"], ids["pad_token"], max_length)

    def __call__(self, texts: Sequence[str]):
        """Returns (ids_bl int32, mask_bl bool) numpy arrays; mask is True on text tokens and eos.

        A prompt with more than `max_length - 1` tokens keeps its first ones and eos, with a warning."""
        ids_bl = np.full((len(texts), self.max_length), self.pad_id, np.int32)
        mask_bl = np.zeros((len(texts), self.max_length), bool)
        for i, text in enumerate(texts):
            ids = list(self.encode(text))
            if len(ids) > self.max_length - 1:
                warnings.warn(f"prompt {i} has {len(ids) + 1} tokens with eos, more than max_length="
                              f"{self.max_length}: its last {len(ids) + 1 - self.max_length} tokens are cut "
                              f"({text[:40]!r}...)")
                ids = ids[: self.max_length - 1]
            ids_bl[i, : len(ids) + 1] = ids + [self.eos_id]
            mask_bl[i, : len(ids) + 1] = True
        return ids_bl, mask_bl

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text needs, eos included, before any cut."""
        return [len(self.encode(text)) + 1 for text in texts]


class CLIPTokenizer:
    """Stable Diffusion's prompt tokenisation, from a checkpoint's `tokenizer/` folder through transformers'
    `CLIPTokenizer` (`padding="max_length"`): bos, text, eos, then pad ids up to `max_length` (77).

    The mask is True everywhere: SD's pipelines pass no attention mask, so their text encoder and UNet
    attend to the padding too, and the released UNets were trained on those states. Pipelines refuse a
    prompt longer than `max_length` rather than cut it (`token_counts` counts bos and eos)."""

    def __init__(self, tokenizer, max_length: int = 77):
        self.tokenizer, self.max_length = tokenizer, max_length

    @classmethod
    def from_dir(cls, path: str, max_length: int = 77) -> "CLIPTokenizer":
        if not os.path.isfile(os.path.join(path, "vocab.json")):
            raise FileNotFoundError(f"{path} is not a CLIP tokenizer folder: no vocab.json")
        transformers = _import_optional("transformers")
        return cls(transformers.CLIPTokenizer.from_pretrained(path), max_length)

    def __call__(self, texts: Sequence[str]):
        """Returns (ids_bl int32, mask_bl bool) numpy arrays."""
        ids_bl = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="np").input_ids.astype(np.int32)
        return ids_bl, np.ones(ids_bl.shape, bool)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text needs, bos and eos included, before any cut."""
        return [len(ids) for ids in self.tokenizer(list(texts)).input_ids]


def default_config() -> ml_collections.ConfigDict:
    """Small byte-level encoder trained with the video model.

    Fields: vocab_size; width (d_model); num_layers; num_heads x head_dim (d_kv); mlp_dim (d_ff of the
    gated-GELU feed-forward); num_buckets / max_distance of the relative position bias; layer_norm_eps
    (of every RMSNorm); dropout (T5 places it after the embedding, attention, feed-forward and final
    norm); attention_implementation (a `t2v_jax.layers.attention` kernel with bias support);
    dtype / param_dtype (compute / storage).
    """
    cfg = ml_collections.ConfigDict()
    cfg.vocab_size = ByteTokenizer.vocab_size
    cfg.width = 128
    cfg.num_layers = 2
    cfg.num_heads = 4
    cfg.head_dim = 32
    cfg.mlp_dim = 256
    cfg.num_buckets = 32
    cfg.max_distance = 128
    cfg.layer_norm_eps = 1e-6
    cfg.dropout = 0.0
    cfg.attention_implementation = "xla"
    cfg.dtype = "float32"
    cfg.param_dtype = "float32"
    return cfg


def t5_v1_1_xxl_config() -> ml_collections.ConfigDict:
    """google/t5-v1_1-xxl encoder (Allegro's text encoder): 4.7B parameters, kept in bfloat16."""
    cfg = default_config()
    cfg.vocab_size = 32128
    cfg.width = 4096
    cfg.num_layers = 24
    cfg.num_heads = 64
    cfg.head_dim = 64
    cfg.mlp_dim = 10240
    cfg.dropout = 0.1
    cfg.dtype = "bfloat16"
    cfg.param_dtype = "bfloat16"
    return cfg


def _t5_dense(features, axes, stddev, cfg, name):
    """T5's projections: no bias, kernel ~ normal(stddev), the config's dtypes."""
    return dense(features, axes, kernel_init=nn.initializers.normal(stddev), use_bias=False,
                 dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), name=name)


def _rms_norm(cfg, name):
    return RMSNorm(cfg.layer_norm_eps, jnp.dtype(cfg.param_dtype), name=name)


class T5SelfAttention(nn.Module):
    """T5 attention: no bias terms and no 1/sqrt(head_dim) on the logits (the q init absorbs it).

    Block 0 owns the relative position table and returns the bias (1, H, L, L) it built; later blocks
    are given it, as in `transformers`."""

    config: ml_collections.ConfigDict
    has_relative_attention_bias: bool = False

    @nn.compact
    def __call__(self, x_bld, mask_bl, bias_bhll):
        cfg = self.config
        inner = cfg.num_heads * cfg.head_dim

        def heads(y):
            return y.reshape(y.shape[:-1] + (cfg.num_heads, cfg.head_dim))

        q_stddev = (cfg.width * cfg.head_dim) ** -0.5
        q_blhd = heads(_t5_dense(inner, ("embed", "heads"), q_stddev, cfg, "q")(x_bld))
        k_blhd = heads(_t5_dense(inner, ("embed", "heads"), cfg.width**-0.5, cfg, "k")(x_bld))
        v_blhd = heads(_t5_dense(inner, ("embed", "heads"), cfg.width**-0.5, cfg, "v")(x_bld))
        if self.has_relative_attention_bias:
            bias_bhll = RelativePositionBias(cfg.num_heads, cfg.num_buckets, cfg.max_distance,
                                             param_dtype=jnp.dtype(cfg.param_dtype),
                                             name="relative_attention_bias")(x_bld.shape[1])
        o_blhd = attention(q_blhd, k_blhd, v_blhd, kv_mask_bs=mask_bl, bias_bhls=bias_bhll, scale=1.0,
                           implementation=cfg.attention_implementation)
        o_bld = o_blhd.reshape(o_blhd.shape[:-2] + (inner,))
        return _t5_dense(cfg.width, ("heads", "embed"), inner**-0.5, cfg, "o")(o_bld), bias_bhll


class T5LayerSelfAttention(nn.Module):
    config: ml_collections.ConfigDict
    has_relative_attention_bias: bool = False

    @nn.compact
    def __call__(self, x_bld, mask_bl, bias_bhll, deterministic):
        y_bld = _rms_norm(self.config, "layer_norm")(x_bld)
        y_bld, bias_bhll = T5SelfAttention(self.config, self.has_relative_attention_bias,
                                           name="SelfAttention")(y_bld, mask_bl, bias_bhll)
        return x_bld + nn.Dropout(self.config.dropout)(y_bld, deterministic=deterministic), bias_bhll


class T5DenseGatedActDense(nn.Module):
    """Gated-GELU feed-forward of T5 v1.1: wo(gelu_tanh(wi_0 x) * wi_1 x)."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x_bld, deterministic):
        cfg = self.config
        gate = _t5_dense(cfg.mlp_dim, ("embed", "mlp"), cfg.width**-0.5, cfg, "wi_0")(x_bld)
        h = nn.gelu(gate, approximate=True) * _t5_dense(cfg.mlp_dim, ("embed", "mlp"), cfg.width**-0.5, cfg,
                                                        "wi_1")(x_bld)
        h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        return _t5_dense(cfg.width, ("mlp", "embed"), cfg.mlp_dim**-0.5, cfg, "wo")(h)


class T5LayerFF(nn.Module):
    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x_bld, deterministic):
        y_bld = _rms_norm(self.config, "layer_norm")(x_bld)
        y_bld = T5DenseGatedActDense(self.config, name="DenseReluDense")(y_bld, deterministic)
        return x_bld + nn.Dropout(self.config.dropout)(y_bld, deterministic=deterministic)


class T5Block(nn.Module):
    config: ml_collections.ConfigDict
    has_relative_attention_bias: bool = False

    @nn.compact
    def __call__(self, x_bld, mask_bl, bias_bhll, deterministic):
        attention_layer = T5LayerSelfAttention(self.config, self.has_relative_attention_bias, name="layer_0")
        x_bld, bias_bhll = attention_layer(x_bld, mask_bl, bias_bhll, deterministic)
        return T5LayerFF(self.config, name="layer_1")(x_bld, deterministic), bias_bhll


class T5Encoder(nn.Module):
    """Token ids -> contextual embeddings; the position bias is computed once by block 0 and shared."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, ids_bl, mask_bl, *, deterministic=True):
        cfg = self.config
        embed = nn.Embed(cfg.vocab_size, cfg.width, dtype=jnp.dtype(cfg.dtype),
                         param_dtype=jnp.dtype(cfg.param_dtype),
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                     ("vocab", "embed")),
                         name="shared")
        mask_bl = jnp.asarray(mask_bl, bool)
        x_bld = nn.Dropout(cfg.dropout)(embed(ids_bl), deterministic=deterministic)
        bias_bhll = None
        for i in range(cfg.num_layers):
            x_bld, bias_bhll = T5Block(cfg, has_relative_attention_bias=i == 0, name=f"block_{i}")(
                x_bld, mask_bl, bias_bhll, deterministic)
            # Captions split over the batch axes; "text_length" stays whole under every preset.
            x_bld = nn.with_logical_constraint(x_bld, ("batch", "text_length", "embed"))
        x_bld = _rms_norm(cfg, "final_layer_norm")(x_bld)
        return nn.Dropout(cfg.dropout)(x_bld, deterministic=deterministic)
