"""T5Encoder and T5Tokenizer against transformers, through the files users have.

Random `T5EncoderModel`s are saved with `save_pretrained` (safetensors, one file or shards), converted with
`convert_t5` from their own config.json, and compared at every position, padded ones included, since
transformers computes those too. Layer norm scales and the position table are drawn wide so that a
swapped norm or a wrong bucket moves the output well past the tolerance.
"""

import json
import os
import warnings

import jax
import numpy as np
import pytest

from t2v_jax.convert.safetensors_io import ConversionError
from t2v_jax.convert.t5 import convert_t5, read_t5_config, t5_config_from_hf
from t2v_jax.models.text_encoder import T5Encoder, T5Tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.ref

# (T5Config fields, sequence length): buckets and max_distance off their defaults; the first is longer
# than its max_distance so the clipped far buckets are used; the second has a large epsilon so the
# norms' eps must come from the config.
CONFIGS = [
    (dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, relative_attention_num_buckets=8,
          relative_attention_max_distance=12), 24),
    (dict(d_model=64, d_kv=16, num_heads=2, d_ff=96, num_layers=3, relative_attention_num_buckets=16,
          relative_attention_max_distance=20, layer_norm_epsilon=0.1), 16),
    (dict(d_model=48, d_kv=12, num_heads=3, d_ff=80, num_layers=2), 20),
]


def _hf_model(fields: dict, seed: int):
    config = transformers.T5Config(vocab_size=101, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                                   **fields)
    torch.manual_seed(seed)
    model = transformers.T5EncoderModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.uniform_(0.5, 1.5)
            elif "relative_attention_bias" in name:
                param.normal_(0.0, 2.0)
    return model


def _inputs(length: int, seed: int):
    """Ids with pad (0) after each row's length: one full row, one half, one with a single token."""
    rng = np.random.default_rng(seed)
    lengths = [length, length // 2, 1]
    mask_bl = np.arange(length)[None, :] < np.array(lengths)[:, None]
    ids_bl = np.where(mask_bl, rng.integers(3, 101, (3, length)), 0).astype(np.int32)
    return ids_bl, mask_bl


def _max_error(model, checkpoint_dir: str, length: int, seed: int) -> float:
    config = read_t5_config(checkpoint_dir, dtype="float32")
    params = convert_t5(checkpoint_dir, config)
    ids_bl, mask_bl = _inputs(length, seed)
    with torch.no_grad():
        ref_bld = model(input_ids=torch.from_numpy(ids_bl).long(),
                        attention_mask=torch.from_numpy(mask_bl).long()).last_hidden_state.numpy()
    ours_bld = np.asarray(jax.jit(T5Encoder(config).apply)({"params": params}, ids_bl, mask_bl))
    assert ours_bld.shape == ref_bld.shape
    return float(np.abs(ours_bld - ref_bld).max())


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_encoder_matches_transformers(tmp_path, index):
    fields, length = CONFIGS[index]
    model = _hf_model(fields, seed=index)
    model.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "model.safetensors")
    assert _max_error(model, str(tmp_path), length, seed=index) <= 1e-4


def test_sharded_checkpoint_matches_transformers(tmp_path):
    fields, length = CONFIGS[0]
    model = _hf_model(fields, seed=7)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 2
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert _max_error(model, str(tmp_path), length, seed=7) <= 1e-4


@pytest.fixture
def tiny_checkpoint(tmp_path):
    _hf_model(CONFIGS[0][0], seed=0).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("edit,message", [
    ("drop", "missing"),
    ("reshape", "wrong shape"),
    ("extra", "no place for"),
])
def test_bad_checkpoint_names_the_tensor(tiny_checkpoint, edit, message):
    from safetensors.numpy import load_file, save_file

    file = str(tiny_checkpoint / "model.safetensors")
    tensors = load_file(file)
    name = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    if edit == "drop":
        del tensors[name]
    elif edit == "reshape":
        tensors[name] = tensors[name][:, :-1].copy()
    else:
        name = "encoder.block.1.layer.2.layer_norm.weight"
        tensors[name] = np.ones(32, np.float32)
    save_file(tensors, file)
    config = read_t5_config(str(tiny_checkpoint), dtype="float32")
    with pytest.raises(ConversionError, match=message) as error:
        convert_t5(str(tiny_checkpoint), config)
    assert name in str(error.value)


def test_embedding_is_read_under_either_tied_name(tiny_checkpoint):
    """transformers saves `shared.weight`; other exports keep only `encoder.embed_tokens.weight`."""
    from safetensors.numpy import load_file, save_file

    file = str(tiny_checkpoint / "model.safetensors")
    config = read_t5_config(str(tiny_checkpoint), dtype="float32")
    tensors = load_file(file)
    assert "shared.weight" in tensors
    expected = convert_t5(str(tiny_checkpoint), config)["shared"]["embedding"]
    tensors["encoder.embed_tokens.weight"] = tensors.pop("shared.weight")
    save_file(tensors, file)
    np.testing.assert_array_equal(convert_t5(str(tiny_checkpoint), config)["shared"]["embedding"], expected)


def test_config_other_than_gated_gelu_is_refused(tiny_checkpoint):
    with open(tiny_checkpoint / "config.json") as f:
        config_json = json.load(f)
    assert t5_config_from_hf(config_json).num_buckets == 8
    config_json["feed_forward_proj"] = "relu"
    with pytest.raises(ValueError, match="gated-gelu"):
        t5_config_from_hf(config_json)


SENTENCES = [
    "a red digit three moving left across the frame",
    "a green eight bouncing slowly down the screen",
    "the blue seven moves up and to the right quickly",
    "two white digits collide in the middle of a black background",
    "Camera pans over a snowy mountain at sunrise, cinematic lighting.",
]
PROMPTS = [
    "a red digit three moving left",
    "  extra   spaces, tabs\tand\nnewlines  ",
    "Ünïcödé ﬁ ½ café — “quotes” QQQ 123",
    "",
    "the blue seven moves up and to the right quickly, then a green eight bounces down the screen",
]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """({"spiece": folder with only spiece.model, "saved": what transformers saves}, T5 tokenizer)."""
    spm = pytest.importorskip("sentencepiece")
    raw = tmp_path_factory.mktemp("spiece")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES * 4), model_prefix=str(raw / "spiece"),
                                   vocab_size=80, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    reference = transformers.T5TokenizerFast.from_pretrained(str(raw))
    saved = tmp_path_factory.mktemp("saved")
    reference.save_pretrained(str(saved))
    return {"spiece": str(raw), "saved": str(saved)}, reference


@pytest.mark.parametrize("folder", ["spiece", "saved"])
def test_tokenizer_matches_transformers(tokenizer_dirs, folder):
    dirs, reference = tokenizer_dirs
    max_length = 32
    tokenizer = T5Tokenizer.from_dir(dirs[folder], max_length=max_length)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids_bl, mask_bl = tokenizer(PROMPTS)
    expected = reference(PROMPTS, max_length=max_length, truncation=True, padding="max_length")
    np.testing.assert_array_equal(ids_bl, expected["input_ids"])
    np.testing.assert_array_equal(mask_bl, np.asarray(expected["attention_mask"], bool))
    assert ids_bl.dtype == np.int32 and mask_bl.dtype == bool
    assert (ids_bl == 2).any()  # unknown characters are in the comparison

    full_lengths = [len(ids) for ids in reference(PROMPTS)["input_ids"]]
    cuts = [(i, n - max_length) for i, n in enumerate(full_lengths) if n > max_length]
    assert 0 < len(cuts) < len(PROMPTS)
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == len(cuts)
    for message, (i, cut) in zip(messages, cuts):
        assert message.startswith(f"prompt {i} has {max_length + cut} tokens")
        assert f"its last {cut} tokens are cut" in message


def test_full_size_mapping_covers_t5_v1_1_xxl():
    """Allegro's text encoder (T5 v1.1 XXL, built on torch's meta device: shapes only) maps tensor
    for tensor onto T5Encoder(t5_v1_1_xxl_config())."""
    from t2v_jax.convert.safetensors_io import check_mapping
    from t2v_jax.convert.t5 import t5_mapping, t5_param_shapes
    from t2v_jax.models.text_encoder import t5_v1_1_xxl_config

    hf_config = transformers.T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                      num_heads=64, feed_forward_proj="gated-gelu")
    with torch.device("meta"):
        model = transformers.T5EncoderModel(hf_config)
    config = t5_config_from_hf(hf_config.to_dict())
    assert config.to_dict() == t5_v1_1_xxl_config().to_dict()
    state = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    check_mapping(state, t5_mapping(config), t5_param_shapes(config),
                  ignore_unused=lambda name: name == "encoder.embed_tokens.weight")
    assert sum(int(np.prod(shape)) for name, shape in state.items() if name != "encoder.embed_tokens.weight") > 4.7e9
