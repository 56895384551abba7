"""VideoDiT vs diffusers' AllegroTransformer3DModel: random weights saved as safetensors, converted by
the converter users run, outputs compared number for number (fp32, max abs error <= 1e-4)."""

import json
import os
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402
from diffusers.pipelines.allegro.pipeline_allegro import AllegroPipeline  # noqa: E402

from t2v_jax.convert.allegro_transformer import (convert_dit, dit_config_from_diffusers, dit_mapping,  # noqa: E402
                                                 dit_param_shapes)
from t2v_jax.convert.safetensors_io import ConversionError, check_mapping  # noqa: E402
from t2v_jax.models import video_dit  # noqa: E402
from t2v_jax.models.video_dit import VideoDiT  # noqa: E402

pytestmark = pytest.mark.ref

# (diffusers kwargs, latent (T, H, W)): non-square grids, odd and even frame counts, 1-3 layers,
# different interpolation scales per axis.
CASES = {
    "odd_frames_nonsquare": (dict(num_layers=2, num_attention_heads=2, attention_head_dim=12, patch_size=2,
                                  interpolation_scale_t=2.2, interpolation_scale_h=2.0,
                                  interpolation_scale_w=1.5), (3, 6, 10)),
    "even_frames_patch1": (dict(num_layers=3, num_attention_heads=3, attention_head_dim=6, patch_size=1,
                                interpolation_scale_t=1.0, interpolation_scale_h=1.0,
                                interpolation_scale_w=1.0), (4, 5, 3)),
    "one_layer_tall": (dict(num_layers=1, num_attention_heads=1, attention_head_dim=18, patch_size=2,
                            interpolation_scale_t=1.0, interpolation_scale_h=2.0,
                            interpolation_scale_w=2.0), (2, 8, 4)),
}


def _reference(kwargs, directory):
    torch.manual_seed(0)
    width = kwargs["num_attention_heads"] * kwargs["attention_head_dim"]
    model = diffusers.AllegroTransformer3DModel(
        in_channels=4, out_channels=4, cross_attention_dim=width, caption_channels=16, sample_height=8,
        sample_width=8, sample_frames=4, **kwargs).eval()
    with torch.no_grad():  # perturb every tensor so zero-initialised ones matter too
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(directory)
    return model


def _rope(model, frames, height, width):
    """The pipeline's own RoPE tables, fed with latent sizes (no VAE: spatial factor 1)."""
    pipeline = types.SimpleNamespace(vae_scale_factor_spatial=1, transformer=model)
    return AllegroPipeline._prepare_rotary_positional_embeddings(
        pipeline, 1, height, width, frames, "cpu")


@pytest.mark.parametrize("case", sorted(CASES))
def test_transformer_matches_diffusers(case, tmp_path):
    kwargs, (frames, height, width) = CASES[case]
    model = _reference(kwargs, str(tmp_path))
    config = dit_config_from_diffusers(json.load(open(tmp_path / "config.json")), dtype="float32")
    params = convert_dit(str(tmp_path), config)

    rng = np.random.default_rng(0)
    x_bcthw = rng.standard_normal((2, 4, frames, height, width)).astype(np.float32)
    context_bld = rng.standard_normal((2, 5, 16)).astype(np.float32)
    mask_bl = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    t_b = np.array([10.0, 731.0], np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x_bcthw), torch.from_numpy(context_bld), torch.from_numpy(t_b),
                         encoder_attention_mask=torch.from_numpy(mask_bl),
                         image_rotary_emb=_rope(model, frames, height, width)).sample.numpy()
    got = VideoDiT(config).apply({"params": params}, jnp.asarray(x_bcthw.transpose(0, 2, 3, 4, 1)),
                                 jnp.asarray(t_b), jnp.asarray(context_bld), jnp.asarray(mask_bl))
    got = np.asarray(got).transpose(0, 4, 1, 2, 3)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_converter_names_missing_and_mismatched_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    kwargs, _ = CASES["one_layer_tall"]
    _reference(kwargs, str(tmp_path))
    config = dit_config_from_diffusers(json.load(open(tmp_path / "config.json")), dtype="float32")
    weights_file = os.path.join(tmp_path, "diffusion_pytorch_model.safetensors")
    tensors = load_file(weights_file)
    del tensors["transformer_blocks.0.attn2.to_k.weight"]
    tensors["proj_out.bias"] = torch.zeros(3)
    save_file(tensors, weights_file)
    with pytest.raises(ConversionError, match=r"transformer_blocks\.0\.attn2\.to_k\.weight"):
        convert_dit(str(tmp_path), config)
    tensors["transformer_blocks.0.attn2.to_k.weight"] = torch.zeros(18, 18)
    save_file(tensors, weights_file)
    with pytest.raises(ConversionError, match=r"proj_out\.bias \(3,\)"):
        convert_dit(str(tmp_path), config)


def test_full_size_mapping_covers_the_released_transformer():
    """The released 2.8B transformer (built on torch's meta device: shapes only) maps tensor for
    tensor onto VideoDiT, and its config converts to `allegro_config("88x720p")`."""
    with torch.device("meta"):
        model = diffusers.AllegroTransformer3DModel()
    config = dit_config_from_diffusers(dict(model.config))
    expected = video_dit.allegro_config("88x720p")
    for field in ("num_layers", "width", "num_heads", "in_channels", "out_channels", "patch_thw",
                  "caption_channels", "rope_interpolation_scale"):
        assert tuple(np.atleast_1d(config[field])) == tuple(np.atleast_1d(expected[field])), field
    state = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    check_mapping(state, dit_mapping(config), dit_param_shapes(config))
    assert sum(int(np.prod(shape)) for shape in state.values()) > 2.7e9
