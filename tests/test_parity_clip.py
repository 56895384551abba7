"""CLIPTextEncoder against transformers' CLIPTextModel, through both layouts of tensor names.

A random small `CLIPTextModel` is converted from its own state dict (transformers 5 names, no prefix) and
from a safetensors file in the Hub layout (`text_model.` prefix plus the old `position_ids` buffer, as in
SD 1.4's `text_encoder/`), and compared at every position. Layer norm parameters and linear biases are
drawn away from their init (ones and zeros) so that a swapped norm or a dropped bias moves the output well
past the tolerance; so do dropping causality, the exact or tanh GELU in place of quick-GELU (2e-2 here)
or misplaced positions. A second model with `hidden_act="gelu"` (OpenCLIP's text tower, the x4 upscaler's)
checks the exact GELU the same way: its tanh approximation is off by 7e-4 there.
"""

import jax
import numpy as np
import pytest

from t2v_jax.convert.clip import (HUB_PREFIX, clip_text_config_from_hf, clip_text_mapping, clip_text_param_shapes,
                                  convert_clip_text, read_clip_text_config)
from t2v_jax.convert.safetensors_io import ConversionError, check_mapping
from t2v_jax.models.clip_text import CLIPTextEncoder, clip_vit_l14_config, open_clip_vit_h14_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.ref

VOCAB, MAX_POSITIONS = 1000, 16


def _hf_model(hidden_act: str = "quick_gelu"):
    config = transformers.CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=MAX_POSITIONS,
                                         layer_norm_eps=1e-3, pad_token_id=1, bos_token_id=VOCAB - 2,
                                         eos_token_id=VOCAB - 1, hidden_act=hidden_act)
    torch.manual_seed(0)
    model = transformers.CLIPTextModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.2)
            if hidden_act == "gelu" and name.endswith("fc1.weight"):
                param.mul_(2.0)  # MLP inputs nearer |x| = 2.7, where the tanh approximation is furthest off
    return model


@pytest.fixture(scope="module")
def hf_model():
    return _hf_model()


def _state_dict(model) -> dict:
    state = dict(model.state_dict())
    assert not any(name.startswith(HUB_PREFIX) for name in state), "expected transformers 5's unprefixed names"
    return state


def _ids(length: int, seed: int):
    return np.random.default_rng(seed).integers(0, VOCAB, (3, length)).astype(np.int32)


def _max_error(model, params, ids_bl, mask_bl=None) -> float:
    config = clip_text_config_from_hf(model.config.to_dict())
    attention_mask = None if mask_bl is None else torch.from_numpy(mask_bl).long()
    with torch.no_grad():
        ref_bld = model(input_ids=torch.from_numpy(ids_bl).long(),
                        attention_mask=attention_mask).last_hidden_state.numpy()
    ours_bld = np.asarray(jax.jit(CLIPTextEncoder(config).apply)({"params": params}, ids_bl, mask_bl))
    assert ours_bld.shape == ref_bld.shape
    return float(np.abs(ours_bld - ref_bld).max())


@pytest.mark.parametrize("length", [MAX_POSITIONS, 11])
def test_encoder_matches_transformers_from_state_dict(hf_model, length):
    """A full-length input, and a shorter one that uses only the first positions."""
    params = convert_clip_text(_state_dict(hf_model), clip_text_config_from_hf(hf_model.config.to_dict()))
    assert _max_error(hf_model, params, _ids(length, seed=length)) <= 1e-4


def test_padding_mask_matches_transformers(hf_model):
    """Right padding hidden with an attention mask: every position, padded ones included, matches."""
    params = convert_clip_text(_state_dict(hf_model), clip_text_config_from_hf(hf_model.config.to_dict()))
    mask_bl = np.arange(MAX_POSITIONS)[None, :] < np.array([[MAX_POSITIONS], [7], [1]])
    assert _max_error(hf_model, params, _ids(MAX_POSITIONS, seed=1), mask_bl) <= 1e-4


def test_hub_layout_checkpoint_matches_transformers(hf_model, tmp_path):
    """SD 1.4's `text_encoder/` layout: `text_model.` names, the `position_ids` buffer, config.json."""
    from safetensors.numpy import save_file

    tensors = {HUB_PREFIX + name: tensor.numpy() for name, tensor in _state_dict(hf_model).items()}
    tensors[HUB_PREFIX + "embeddings.position_ids"] = np.arange(MAX_POSITIONS, dtype=np.int64)[None]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    hf_model.config.to_json_file(str(tmp_path / "config.json"))
    params = convert_clip_text(tmp_path, read_clip_text_config(str(tmp_path)))
    assert _max_error(hf_model, params, _ids(MAX_POSITIONS, seed=2)) <= 1e-4


@pytest.mark.parametrize("edit,message", [
    ("drop", "missing"),
    ("reshape", "wrong shape"),
    ("extra", "no place for"),
])
def test_bad_state_dict_names_the_tensor(hf_model, edit, message):
    state = _state_dict(hf_model)
    name = "encoder.layers.1.mlp.fc2.weight"
    if edit == "drop":
        del state[name]
    elif edit == "reshape":
        state[name] = state[name][:, :-1]
    else:
        name = "encoder.layers.2.layer_norm1.weight"
        state[name] = torch.ones(32)
    with pytest.raises(ConversionError, match=message) as error:
        convert_clip_text(state, clip_text_config_from_hf(hf_model.config.to_dict()))
    assert name in str(error.value)


def test_position_ids_buffer_is_ignored_by_its_name_only(hf_model):
    """transformers 4's state dict holds `embeddings.position_ids`; a tensor of that name elsewhere is reported."""
    state = _state_dict(hf_model)
    state["embeddings.position_ids"] = torch.arange(MAX_POSITIONS)[None]
    convert_clip_text(state, clip_text_config_from_hf(hf_model.config.to_dict()))
    state["encoder.embeddings.position_ids"] = state.pop("embeddings.position_ids")
    with pytest.raises(ConversionError, match="encoder.embeddings.position_ids"):
        convert_clip_text(state, clip_text_config_from_hf(hf_model.config.to_dict()))


def test_input_longer_than_the_positions_is_refused(hf_model):
    config = clip_text_config_from_hf(hf_model.config.to_dict())
    params = convert_clip_text(_state_dict(hf_model), config)
    with pytest.raises(ValueError, match="max_length=16"):
        CLIPTextEncoder(config).apply({"params": params}, _ids(MAX_POSITIONS + 1, seed=0))


def test_exact_gelu_encoder_matches_transformers():
    """OpenCLIP's text tower (`hidden_act="gelu"`, the x4 upscaler's): the activation is read from the config."""
    model = _hf_model("gelu")
    config = clip_text_config_from_hf(model.config.to_dict())
    assert config.activation == "gelu"
    params = convert_clip_text(_state_dict(model), config)
    assert _max_error(model, params, _ids(MAX_POSITIONS, seed=3)) <= 1e-4


def test_unsupported_activation_is_refused(hf_model):
    config_json = hf_model.config.to_dict()
    config_json["hidden_act"] = "relu"
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        clip_text_config_from_hf(config_json)


def test_full_size_mapping_covers_sd_1_4_text_encoder():
    """SD 1.4's text encoder (CLIP ViT-L/14's text tower, built on torch's meta device: shapes only) maps
    tensor for tensor onto CLIPTextEncoder(clip_vit_l14_config())."""
    hf_config = transformers.CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, projection_dim=768)
    with torch.device("meta"):
        model = transformers.CLIPTextModel(hf_config)
    config = clip_text_config_from_hf(hf_config.to_dict())
    assert config.to_dict() == clip_vit_l14_config().to_dict()
    state = {HUB_PREFIX + name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    check_mapping(state, clip_text_mapping(config), clip_text_param_shapes(config))
    assert 120e6 < sum(int(np.prod(shape)) for shape in state.values()) < 126e6


def test_full_size_mapping_covers_the_x4_upscaler_text_encoder():
    """The x4 upscaler's text encoder (OpenCLIP ViT-H/14's text tower less its last layer, exact GELU; its
    `text_encoder/config.json`, on torch's meta device) maps onto CLIPTextEncoder(open_clip_vit_h14_config())."""
    hf_config = transformers.CLIPTextConfig(hidden_act="gelu", hidden_size=1024, intermediate_size=4096,
                                            num_hidden_layers=23, num_attention_heads=16, projection_dim=512,
                                            pad_token_id=1, bos_token_id=0, eos_token_id=2)
    with torch.device("meta"):
        model = transformers.CLIPTextModel(hf_config)
    config = clip_text_config_from_hf(hf_config.to_dict())
    assert config.to_dict() == open_clip_vit_h14_config().to_dict()
    state = {HUB_PREFIX + name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    check_mapping(state, clip_text_mapping(config), clip_text_param_shapes(config))
    assert sum(param.numel() for param in model.parameters()) == 340_387_840
