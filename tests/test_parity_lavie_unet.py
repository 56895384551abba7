"""LaVie's base UNet with its temporal layers at their initial zero output equals diffusers'
`UNet2DConditionModel` (the SD-1.x image UNet LaVie starts from) applied to every frame, after
converting the diffusers weights with `convert/lavie.py`."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from t2v_jax.convert.lavie import convert_unet, unet_config_from_diffusers  # noqa: E402
from t2v_jax.convert.safetensors_io import ConversionError, StateDictCheckpoint  # noqa: E402
from t2v_jax.models.lavie_unet import LaVieUNet  # noqa: E402

pytestmark = pytest.mark.ref

_DIFFUSERS_KWARGS = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1, cross_attention_dim=24, attention_head_dim=4, norm_num_groups=8)


def _perturbed_unet(**overrides):
    """A random diffusers UNet whose norms and biases are not at their 1/0 initial values."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**{**_DIFFUSERS_KWARGS, **overrides}).eval()
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return unet


def _state_dict(unet):
    return {name: value.numpy() for name, value in unet.state_dict().items()}


@pytest.mark.parametrize("frames", [1, 3])
def test_unet_with_zero_temporal_layers_is_diffusers_per_frame(frames):
    unet = _perturbed_unet()
    cfg = unet_config_from_diffusers(dict(unet.config))
    params = convert_unet(StateDictCheckpoint(_state_dict(unet)), cfg, from_image_model=True)
    rng = np.random.default_rng(0)
    batch, tokens = 2, 5
    x_bthwc = rng.standard_normal((batch, frames, 8, 8, 4)).astype(np.float32)
    t_b = np.array([10.0, 731.0], np.float32)
    context_bld = rng.standard_normal((batch, tokens, 24)).astype(np.float32)
    with torch.no_grad():
        expected = unet(torch.from_numpy(x_bthwc.reshape(-1, 8, 8, 4)).permute(0, 3, 1, 2),
                        torch.from_numpy(np.repeat(t_b, frames)),
                        torch.from_numpy(np.repeat(context_bld, frames, axis=0))).sample
    expected = expected.permute(0, 2, 3, 1).numpy().reshape(x_bthwc.shape)
    got = jax.jit(LaVieUNet(cfg).apply)({"params": params}, jnp.asarray(x_bthwc), jnp.asarray(t_b),
                                        jnp.asarray(context_bld), jnp.ones((batch, tokens), bool))
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


def test_config_from_diffusers_rejects_sd2_layouts():
    unet = _perturbed_unet()
    with pytest.raises(ValueError, match="attention_head_dim"):
        unet_config_from_diffusers({**dict(unet.config), "use_linear_projection": True, "attention_head_dim": [2, 4]})


def test_converter_names_missing_unused_and_mis_shaped_tensors():
    unet = _perturbed_unet()
    cfg = unet_config_from_diffusers(dict(unet.config))
    state = _state_dict(unet)
    state.pop("mid_block.resnets.0.conv1.weight")
    state["conv_in.bias"] = np.zeros(7, np.float32)
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError) as error:
        convert_unet(StateDictCheckpoint(state), cfg, from_image_model=True)
    message = str(error.value)
    assert "mid_block.resnets.0.conv1.weight" in message and "extra.weight" in message
    assert "conv_in.bias (7,)" in message
    # A LaVie checkpoint must carry the temporal layers: reading one as a LaVie model names them missing.
    with pytest.raises(ConversionError, match="attn_temp.to_q.weight"):
        convert_unet(StateDictCheckpoint(_state_dict(unet)), cfg)
