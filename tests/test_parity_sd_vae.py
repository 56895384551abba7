"""Per-frame VideoVAE (`temporal_layers=False`) vs diffusers' 2D `AutoencoderKL` (Stable Diffusion's VAE,
which LaVie runs per frame): random weights saved as safetensors and converted by the converter users run;
the posterior's mean and logvar and the decoder's output compared number for number (fp32, max abs error
<= 1e-4), the video's frames being the reference's batch of images."""

import functools
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from test_parity_vae import _perturb  # noqa: E402

from t2v_jax.convert.allegro_vae import vae_param_shapes  # noqa: E402
from t2v_jax.convert.safetensors_io import ConversionError, check_mapping  # noqa: E402
from t2v_jax.convert.sd_vae import convert_sd_vae, sd_vae_mapping, vae_config_from_diffusers_kl  # noqa: E402
from t2v_jax.models import video_vae as vv  # noqa: E402

pytestmark = pytest.mark.ref

ATOL = 1e-4
FRAMES, SIZE = 2, 16
KWARGS = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
              sample_size=SIZE, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2)
WEIGHTS = "diffusion_pytorch_model.safetensors"
# diffusers' current names of the mid-block attention tensors -> those of SD 1.x's released VAEs.
DEPRECATED = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _frames_to_jax(x_tchw):
    """The reference's batch of images -> one video (1, T, H, W, C)."""
    return jnp.asarray(x_tchw.numpy().transpose(0, 2, 3, 1))[None]


def _frames_to_torch_layout(x_bthwc):
    return np.asarray(x_bthwc)[0].transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The diffusers model saved in a folder, its converted VideoVAE and inputs."""
    directory = str(tmp_path_factory.mktemp("sd_vae"))
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(**KWARGS).eval()
    _perturb(model)
    model.save_pretrained(directory)
    config = vae_config_from_diffusers_kl(json.load(open(os.path.join(directory, "config.json"))))
    vae = vv.VideoVAE(config)
    params = {"params": convert_sd_vae(directory, config)}
    generator = torch.Generator().manual_seed(1)
    images = 2 * torch.rand((FRAMES, 3, SIZE, SIZE), generator=generator) - 1
    rs = vv.spatial_compression(config)
    latents = torch.randn((FRAMES, config.latent_channels, SIZE // rs, SIZE // rs), generator=generator)
    return model, directory, vae, params, images, latents


def test_config_is_per_frame(reference):
    _, _, vae, _, _, _ = reference
    assert not vae.config.temporal_layers and vv.temporal_compression(vae.config) == 1
    assert vv.spatial_compression(vae.config) == 2 and vae.config.scaling_factor == pytest.approx(0.18215)


def test_encode_matches_diffusers(reference):
    model, _, vae, params, images, _ = reference
    with torch.no_grad():
        posterior = model.encode(images).latent_dist
    moments = jax.jit(functools.partial(vv.vae_moments, vae, tiled=False))(params, _frames_to_jax(images))
    for name, got, expected in zip(("mean", "logvar"), moments, (posterior.mean, posterior.logvar)):
        error = np.abs(_frames_to_torch_layout(got) - expected.numpy()).max()
        print(f"encode {name}: max abs error {error:.2e}")
        assert np.abs(expected.numpy()).max() > 0.1
        assert error <= ATOL, name


def test_decode_matches_diffusers(reference):
    model, _, vae, params, _, latents = reference
    with torch.no_grad():
        expected = model.decode(latents).sample.numpy()
    scaled = _frames_to_jax(latents) * vae.config.scaling_factor
    got = _frames_to_torch_layout(jax.jit(functools.partial(vv.vae_decode, vae, tiled=False))(params, scaled))
    error = np.abs(got - expected).max()
    print(f"decode: max abs error {error:.2e}")
    assert np.abs(expected).max() > 0.1
    assert error <= ATOL


def test_deprecated_attention_names_convert_as_diffusers_loads_them(reference, tmp_path):
    """SD 1.x's VAEs name the attention tensors query/key/value/proj_attn; diffusers loads such a file as
    the same model, and the converter gives the same params."""
    from safetensors.torch import load_file, save_file

    model, directory, vae, params, _, _ = reference
    tensors = load_file(os.path.join(directory, WEIGHTS))
    renamed = {}
    for name, tensor in tensors.items():
        for new, old in DEPRECATED.items():
            name = name.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        renamed[name] = tensor
    assert sum(".proj_attn." in name for name in renamed) == 4
    save_file(renamed, str(tmp_path / WEIGHTS))
    (tmp_path / "config.json").write_text(open(os.path.join(directory, "config.json")).read())
    loaded = diffusers.AutoencoderKL.from_pretrained(str(tmp_path))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    converted = convert_sd_vae(str(tmp_path), vae.config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, converted, params["params"])


def test_converter_names_missing_unused_and_mismatched_tensors(reference, tmp_path):
    from safetensors.torch import load_file, save_file

    _, directory, vae, _, _, _ = reference
    tensors = load_file(os.path.join(directory, WEIGHTS))
    del tensors["decoder.mid_block.attentions.0.to_v.bias"]
    tensors["encoder.down_blocks.0.temp_convs.0.conv1.2.weight"] = torch.zeros(8, 8, 3, 1, 1)
    tensors["encoder.conv_in.weight"] = torch.zeros(8, 3, 1, 1)
    save_file(tensors, str(tmp_path / WEIGHTS))
    with pytest.raises(ConversionError) as error:
        convert_sd_vae(str(tmp_path), vae.config)
    message = str(error.value)
    assert "missing" in message and "decoder.mid_block.attentions.0.to_v.bias" in message
    assert "no place for" in message and "encoder.down_blocks.0.temp_convs.0.conv1.2.weight" in message
    assert "wrong shape" in message and "encoder.conv_in.weight (8, 3, 1, 1)" in message


SD_1_4 = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def test_full_size_mapping_covers_sd_1_4_exactly():
    """Every tensor of Stable Diffusion 1.4's VAE architecture (built on torch's meta device: shapes only)
    has exactly one place in the per-frame VideoVAE, with the shape the transform gives it."""
    with torch.device("meta"):
        model = diffusers.AutoencoderKL(**SD_1_4)
    config = vae_config_from_diffusers_kl(dict(model.config))
    assert (vv.spatial_compression(config), config.tile_size, tuple(config.tile_overlap)) == (8, 512, (128, 128))
    state = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    check_mapping(state, sd_vae_mapping(config, state), vae_param_shapes(config))


def test_config_defaults_are_diffusers():
    """A config.json from an older diffusers lacks fields: they take `AutoencoderKL`'s defaults."""
    saved = dict(diffusers.AutoencoderKL().config)
    assert vae_config_from_diffusers_kl({}).to_dict() == vae_config_from_diffusers_kl(saved).to_dict()


@pytest.mark.parametrize("field, value", [
    ("shift_factor", 0.1159), ("latents_mean", [0.0] * 4), ("use_quant_conv", False), ("act_fn", "relu"),
    ("down_block_types", ("DownEncoderBlock2D",) * 3),
])
def test_config_from_diffusers_kl_rejects_what_it_cannot_run(field, value):
    with pytest.raises(ValueError, match=field):
        vae_config_from_diffusers_kl({**SD_1_4, field: value})
