"""ByteTokenizer, T5Tokenizer and T5Encoder: ids, masks, T5's bucket formula and a numpy forward pass.

The comparisons with transformers are in test_parity_t5.py."""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t2v_jax.layers.position_bias import relative_position_bucket
from t2v_jax.models.text_encoder import ByteTokenizer, T5Encoder, T5Tokenizer, default_config, t5_v1_1_xxl_config


def test_tokenizer_round_trip_padding_and_mask():
    tokenizer = ByteTokenizer(max_length=24)
    texts = ["a red 3 moving left", "héllo ✓", ""]
    ids, mask = tokenizer(texts)
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (3, 24)
    assert [tokenizer.decode(row) for row in ids] == texts
    np.testing.assert_array_equal(ids[0, :3], [ord("a") + 3, ord(" ") + 3, ord("r") + 3])
    for row, m, text in zip(ids, mask, texts):
        n = len(text.encode("utf-8"))
        assert row[n] == ByteTokenizer.EOS_ID and (row[n + 1 :] == ByteTokenizer.PAD_ID).all()
        np.testing.assert_array_equal(m, np.arange(24) <= n)
    assert ids.max() < ByteTokenizer.vocab_size == 259


def test_tokenizer_truncation_keeps_eos():
    ids, mask = ByteTokenizer(max_length=5)(["abcdefgh", "ab"])
    np.testing.assert_array_equal(ids[0], [100, 101, 102, 103, ByteTokenizer.EOS_ID])
    np.testing.assert_array_equal(mask, [[True] * 5, [True, True, True, False, False]])
    with pytest.raises(ValueError, match="max_length"):
        ByteTokenizer(0)


@pytest.mark.parametrize("file,module", [("spiece.model", "sentencepiece"), ("tokenizer.json", "tokenizers")])
def test_t5_tokenizer_names_the_missing_package(tmp_path, monkeypatch, file, module):
    (tmp_path / file).write_text("")
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=f"pip install {module}"):
        T5Tokenizer.from_dir(str(tmp_path))


def test_t5_tokenizer_needs_a_vocabulary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        T5Tokenizer.from_dir(str(tmp_path))


@pytest.fixture
def spiece_dir(tmp_path):
    """A folder with a tiny sentencepiece model that has T5's special ids: pad 0, eos 1, unk 2."""
    spm = pytest.importorskip("sentencepiece")
    sentences = ["a red three moves left", "a blue seven moves up"] * 8
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_prefix=str(tmp_path / "spiece"),
                                   vocab_size=40, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    return tmp_path


def test_t5_tokenizer_pads_truncates_and_warns(spiece_dir):
    tokenizer = T5Tokenizer.from_dir(str(spiece_dir), max_length=6)
    texts = ["a red", "a red three moves left, a blue seven moves up"]
    short, long = (len(tokenizer.encode(text)) + 1 for text in texts)
    with pytest.warns(UserWarning, match=f"prompt 1 has {long} tokens.*last {long - 6} tokens are cut"):
        ids_bl, mask_bl = tokenizer(texts)
    assert ids_bl.dtype == np.int32 and mask_bl.dtype == bool and ids_bl.shape == (2, 6)
    np.testing.assert_array_equal(ids_bl[0, short - 1:], [1] + [0] * (6 - short))
    np.testing.assert_array_equal(mask_bl[0], np.arange(6) < short)
    assert ids_bl[1, -1] == 1 and mask_bl[1].all()
    with pytest.raises(ValueError, match="max_length"):
        T5Tokenizer.from_dir(str(spiece_dir), max_length=0)


def test_t5_tokenizer_takes_special_tokens_from_the_folder(spiece_dir):
    (spiece_dir / "special_tokens_map.json").write_text('{"eos_token": {"content": "<unk>"}}')
    ids_bl, _ = T5Tokenizer.from_dir(str(spiece_dir), max_length=4)(["a"])
    assert 2 in ids_bl[0].tolist() and 1 not in ids_bl[0].tolist()
    (spiece_dir / "special_tokens_map.json").write_text('{"pad_token": "[PAD]"}')
    with pytest.raises(ValueError, match=r"pad_token '\[PAD\]' is not in"):
        T5Tokenizer.from_dir(str(spiece_dir))


def _np_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """transformers' T5Attention._relative_position_bucket, line by line in numpy."""
    relative_buckets = np.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).astype(np.int64) * num_buckets
        relative_position = np.abs(relative_position)
    else:
        relative_position = -np.minimum(relative_position, np.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    with np.errstate(divide="ignore", invalid="ignore"):
        large = max_exact + (
            np.log(relative_position.astype(np.float32) / max_exact)
            / math.log(max_distance / max_exact) * (num_buckets - max_exact)
        ).astype(np.int64)
    large = np.minimum(large, np.full_like(large, num_buckets - 1))
    return relative_buckets + np.where(is_small, relative_position, large)


@pytest.mark.parametrize("bidirectional,num_buckets,max_distance",
                         [(True, 32, 128), (False, 32, 128), (True, 16, 40)])
def test_relative_position_bucket_matches_t5(bidirectional, num_buckets, max_distance):
    rel = np.arange(-300, 301, dtype=np.int64)
    ours = relative_position_bucket(jnp.asarray(rel, jnp.int32), bidirectional=bidirectional,
                                    num_buckets=num_buckets, max_distance=max_distance)
    ref = _np_bucket(rel, bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(np.asarray(ours), ref)
    assert len(np.unique(ref)) == num_buckets - bidirectional  # bidirectional T5 never uses num_buckets/2


def _randomise(params, seed):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


@pytest.fixture(scope="module")
def encoder():
    cfg = default_config()
    model = T5Encoder(cfg)
    ids, mask = ByteTokenizer(16)(["x"])
    params = _randomise(nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, mask)), 1)
    return cfg, model, params, jax.jit(model.apply)


def _np_t5(p, ids, mask, cfg):
    """Reference forward pass: RMSNorm pre-norm, unscaled logits + shared bucket bias, gated tanh-GELU."""
    def rms(x, scale):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * scale

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    b, l = ids.shape
    h, d = cfg.num_heads, cfg.head_dim
    x = p["shared"]["embedding"][ids]
    pos = np.arange(l)
    buckets = _np_bucket(pos[None, :] - pos[:, None], True, cfg.num_buckets, cfg.max_distance)
    table = p["block_0"]["layer_0"]["SelfAttention"]["relative_attention_bias"]["embedding"]
    bias = table[buckets].transpose(2, 0, 1)[None]  # (1, h, l, l)
    for i in range(cfg.num_layers):
        a = p[f"block_{i}"]["layer_0"]
        y = rms(x, a["layer_norm"]["scale"])
        q, k, v = (y @ a["SelfAttention"][n]["kernel"] for n in "qkv")
        q, k, v = (t.reshape(b, l, h, d).transpose(0, 2, 1, 3) for t in (q, k, v))
        logits = q @ k.transpose(0, 1, 3, 2) + bias
        logits = np.where(mask[:, None, None, :], logits, -1e30)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        o = (probs @ v).transpose(0, 2, 1, 3).reshape(b, l, h * d)
        x = x + o @ a["SelfAttention"]["o"]["kernel"]
        f = p[f"block_{i}"]["layer_1"]
        y = rms(x, f["layer_norm"]["scale"])
        dense = f["DenseReluDense"]
        y = gelu(y @ dense["wi_0"]["kernel"]) * (y @ dense["wi_1"]["kernel"])
        x = x + y @ dense["wo"]["kernel"]
    return rms(x, p["final_layer_norm"]["scale"])


def test_t5_encoder_matches_numpy_reference(encoder):
    cfg, model, params, apply = encoder
    ids, mask = ByteTokenizer(16)(["a blue 7 moving up", "hi"])
    ours = np.asarray(apply(params, ids, mask))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
    ref = _np_t5(p, ids, mask, cfg)
    assert ours.shape == (2, 16, cfg.width)
    np.testing.assert_allclose(ours[mask], ref[mask], atol=2e-4, rtol=2e-4)


def test_padding_does_not_change_real_tokens(encoder):
    cfg, model, params, apply = encoder
    texts = ["a red 3 moving left", "a green 8 moving down fast"]
    short_ids, short_mask = ByteTokenizer(32)(texts)
    long_ids, long_mask = ByteTokenizer(48)(texts)
    short = np.asarray(apply(params, short_ids, short_mask))
    long = np.asarray(apply(params, long_ids, long_mask))
    alone = np.asarray(apply(params, short_ids[:1], short_mask[:1]))
    for i in range(2):
        n = short_mask[i].sum()
        np.testing.assert_allclose(long[i, :n], short[i, :n], atol=1e-5)
    np.testing.assert_allclose(alone[0, : short_mask[0].sum()], short[0, : short_mask[0].sum()], atol=1e-5)


def test_different_captions_give_different_embeddings(encoder):
    cfg, model, params, apply = encoder
    ids, mask = ByteTokenizer(32)(["a red 3 moving left", "a red 3 moving right"])
    out = np.asarray(apply(params, ids, mask))
    assert np.abs(out[0, :19] - out[1, :19]).max() > 1e-2


def test_dropout_is_active_only_when_not_deterministic():
    cfg = default_config()
    cfg.dropout = 0.5
    cfg.num_layers = 1
    model = T5Encoder(cfg)
    ids, mask = ByteTokenizer(8)(["abc"])
    params = model.init(jax.random.key(0), ids, mask)
    a = model.apply(params, ids, mask)
    b = model.apply(params, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(a, model.apply(params, ids, mask))
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_xxl_config_matches_hugging_face_t5_encoder_size():
    """transformers' T5EncoderModel for google/t5-v1_1-xxl has 4,762,310,656 parameters."""
    ids, mask = ByteTokenizer(8)(["x"])
    shapes = jax.eval_shape(T5Encoder(t5_v1_1_xxl_config()).init, jax.random.key(0), ids, mask)
    assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(nn.unbox(shapes))) == 4_762_310_656


def test_xxl_config_is_what_the_released_config_json_gives():
    """google/t5-v1_1-xxl's config.json fields, read by the converter's config reader."""
    from t2v_jax.convert.t5 import t5_config_from_hf

    config_json = {"d_ff": 10240, "d_kv": 64, "d_model": 4096, "dropout_rate": 0.1,
                   "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-06, "num_heads": 64,
                   "num_layers": 24, "relative_attention_num_buckets": 32, "vocab_size": 32128}
    assert t5_config_from_hf(config_json).to_dict() == t5_v1_1_xxl_config().to_dict()
