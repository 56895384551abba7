"""VideoVAE vs diffusers' AutoencoderKLAllegro: random weights saved as safetensors, converted by the
converter users run, encode moments and decodes compared number for number (fp32, max abs error <= 1e-4),
untiled (diffusers' encoder/decoder called directly: its `encode`/`decode` only run tiled) and tiled
(`enable_tiling()`, with tiles small enough that the test video splits in t, h and w)."""

import functools
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from t2v_jax.convert.allegro_vae import (convert_vae, vae_config_from_diffusers, vae_mapping,  # noqa: E402
                                         vae_param_shapes)
from t2v_jax.convert.safetensors_io import ConversionError, check_mapping  # noqa: E402
from t2v_jax.models import video_vae as vv  # noqa: E402

pytestmark = pytest.mark.ref

ATOL = 1e-4

# (diffusers kwargs, video (T, H, W), tiles (frames, size, overlap_frames, overlap_h, overlap_w)): each
# video splits into tiles on every axis (checked in `case`). "two_blocks_x2" doubles time in the
# decoder's last block, which is not the mirror of its encoder (the decoder reads its own flags).
CASES = {
    "two_blocks_x2": (dict(block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4,
                           latent_channels=6, temporal_downsample_blocks=(True, False),
                           temporal_upsample_blocks=(False, True), temporal_compression_ratio=2),
                      (8, 16, 20), (4, 8, 2, 4, 2)),
    "three_blocks_x4": (dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8,
                             temporal_downsample_blocks=(True, True, False),
                             temporal_upsample_blocks=(False, True, True), temporal_compression_ratio=4),
                        (16, 24, 32), (8, 16, 4, 8, 8)),
}


def _perturb(model):
    """Random init leaves GroupNorms at (1, 0) and Allegro's temporal convs small: redraw every tensor."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and name.endswith(".weight"):  # GroupNorm scale
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif param.ndim == 1:
                param.copy_(0.2 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / np.sqrt(param[0].numel()))


def _reference(kwargs, tiles, directory):
    tile_frames, tile_size, overlap_t, overlap_h, overlap_w = tiles
    torch.manual_seed(0)
    n = len(kwargs["block_out_channels"])
    model = diffusers.AutoencoderKLAllegro(
        down_block_types=("AllegroDownBlock3D",) * n, up_block_types=("AllegroUpBlock3D",) * n,
        sample_size=tile_size, **kwargs).eval()
    _perturb(model)
    model.save_pretrained(directory)
    # diffusers fixes the tile frames and overlaps in __init__; tiled_encode/decode read these two.
    model.kernel = (tile_frames, tile_size, tile_size)
    model.stride = (tile_frames - overlap_t, tile_size - overlap_h, tile_size - overlap_w)
    return model


def _per_frame(conv, x_bcthw):
    b = x_bcthw.shape[0]
    y = conv(x_bcthw.permute(0, 2, 1, 3, 4).flatten(0, 1))
    return y.unflatten(0, (b, -1)).permute(0, 2, 1, 3, 4)


def _to_jax(x_bcthw):
    return jnp.asarray(x_bcthw.numpy().transpose(0, 2, 3, 4, 1))


def _to_torch_layout(x_bthwc):
    return np.asarray(x_bthwc).transpose(0, 4, 1, 2, 3)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    """Reference model, converted VideoVAE and inputs of one case, shared by its tests."""
    kwargs, (frames, height, width), tiles = CASES[request.param]
    directory = str(tmp_path_factory.mktemp(request.param))
    model = _reference(kwargs, tiles, directory)
    config = vae_config_from_diffusers(json.load(open(os.path.join(directory, "config.json"))),
                                       tile_frames=tiles[0], tile_overlap_frames=tiles[2],
                                       tile_overlap=tiles[3:])
    for size, tile, stride in zip((frames, height, width), model.kernel, model.stride):
        assert size > tile and (size - tile) % stride == 0  # several tiles, ending on the video's end
    vae = vv.VideoVAE(config)
    params = {"params": convert_vae(directory, config)}
    generator = torch.Generator().manual_seed(1)
    video = 2 * torch.rand((2, 3, frames, height, width), generator=generator) - 1
    rt, rs = vv.temporal_compression(config), vv.spatial_compression(config)
    latents = torch.randn((2, config.latent_channels, frames // rt, height // rs, width // rs),
                          generator=generator)
    return model, vae, params, video, latents


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_encode_matches_diffusers(case, tiled):
    """Untiled on a batch of two; tiled on one video, the only batch size diffusers' tiling takes."""
    model, vae, params, video, _ = case
    with torch.no_grad():
        if tiled:
            video = video[:1]
            model.enable_tiling()
            posterior = model.encode(video).latent_dist
        else:
            moments = _per_frame(model.quant_conv, model.encoder(video))
            posterior = diffusers.models.autoencoders.vae.DiagonalGaussianDistribution(moments)
    moments = jax.jit(functools.partial(vv.vae_moments, vae, tiled=tiled))(params, _to_jax(video))
    for name, got, expected in zip(("mean", "logvar"), moments, (posterior.mean, posterior.logvar)):
        error = np.abs(_to_torch_layout(got) - expected.numpy()).max()
        print(f"encode {'tiled' if tiled else 'untiled'} {name}: max abs error {error:.2e}")
        assert np.abs(expected.numpy()).max() > 0.1
        assert error <= ATOL, name


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_decode_matches_diffusers(case, tiled):
    model, vae, params, _, latents = case
    with torch.no_grad():
        if tiled:
            latents = latents[:1]
            model.enable_tiling()
            expected = model.decode(latents).sample.permute(0, 2, 1, 3, 4).numpy()  # diffusers: (B, T, C, H, W)
        else:
            expected = model.decoder(_per_frame(model.post_quant_conv, latents)).numpy()
    scaled = _to_jax(latents) * vae.config.scaling_factor
    got = _to_torch_layout(jax.jit(functools.partial(vv.vae_decode, vae, tiled=tiled))(params, scaled))
    error = np.abs(got - expected).max()
    print(f"decode {'tiled' if tiled else 'untiled'}: max abs error {error:.2e}")
    assert np.abs(expected).max() > 0.1
    assert error <= ATOL


@pytest.mark.parametrize("frames, height, width", [(88, 720, 1280), (40, 720, 1280)])
def test_blend_weights_are_diffusers_at_allegro_sizes(frames, height, width):
    """Per axis, tile for tile, the weights `tiled_apply` uses equal what diffusers' `_prepare_for_blend`
    multiplies into each tile, in latent cells (encode) and in pixels (decode), at Allegro's tiles."""
    from diffusers.models.autoencoders.autoencoder_kl_allegro import _prepare_for_blend

    config = vv.allegro_config()
    tile, overlap, unit = vv._grid_tiles(config)
    for axis, size in enumerate((frames // unit[0], height // unit[1], width // unit[2])):
        starts = vv.tile_starts(size, tile[axis], overlap[axis])
        assert (size - tile[axis]) % (tile[axis] - overlap[axis]) == 0  # diffusers' tiles reach the end
        for scale in (1, unit[axis]):  # encode blends latent cells, decode pixels
            ours = vv._blend_weights([start * scale for start in starts], tile[axis] * scale)
            for i in range(len(starts)):
                params = [(0, 1, overlap[a] * scale) for a in range(3)]
                params[axis] = (i, len(starts), overlap[axis] * scale)
                shape = [1, 1, 1, 1, 1]
                shape[2 + axis] = tile[axis] * scale
                expected = _prepare_for_blend(*params, torch.ones(shape)).flatten().numpy()
                np.testing.assert_allclose(ours[i], expected, atol=1e-6)


def test_converter_names_missing_and_mismatched_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    kwargs, _, tiles = CASES["two_blocks_x2"]
    _reference(kwargs, tiles, str(tmp_path))
    config = vae_config_from_diffusers(json.load(open(tmp_path / "config.json")), tile_frames=4,
                                       tile_overlap_frames=2, tile_overlap=(4, 2))
    weights_file = os.path.join(tmp_path, "diffusion_pytorch_model.safetensors")
    tensors = load_file(weights_file)
    to_k = tensors.pop("encoder.mid_block.attentions.0.to_k.weight")
    tensors["decoder.up_blocks.1.temp_conv_up.conv2.3.weight"] = torch.zeros(8, 8, 3, 1, 1)
    tensors["decoder.conv_out.bias"] = torch.zeros(5)
    save_file(tensors, weights_file)
    with pytest.raises(ConversionError, match=r"missing .*encoder\.mid_block\.attentions\.0\.to_k\.weight"):
        convert_vae(str(tmp_path), config)
    tensors["encoder.mid_block.attentions.0.to_k.weight"] = to_k
    save_file(tensors, weights_file)
    with pytest.raises(ConversionError) as error:
        convert_vae(str(tmp_path), config)
    assert r"decoder.up_blocks.1.temp_conv_up.conv2.3.weight (8, 8, 3, 1, 1)" in str(error.value)
    assert r"decoder.conv_out.bias (5,)" in str(error.value)


def _allegro_on_meta():
    """The released architecture, built on torch's meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return diffusers.AutoencoderKLAllegro()


def test_full_size_mapping_covers_allegro_exactly():
    """Every tensor of the released VAE has exactly one place in VideoVAE(allegro_config()), with the
    shape the transform gives it; its config converts to `allegro_config()`."""
    model = _allegro_on_meta()
    config = vae_config_from_diffusers(dict(model.config))
    assert config.to_dict() == vv.allegro_config().to_dict()
    state = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    check_mapping(state, vae_mapping(config), vae_param_shapes(config))


@pytest.mark.parametrize("field, value, message", [
    ("temporal_compression_ratio", 2, "temporal_compression_ratio"),
    ("act_fn", "relu", "act_fn"),
    ("temporal_upsample_blocks", (False, True, False, False), "temporal_upsample"),
    ("down_block_types", ("AllegroDownBlock3D",) * 3, "down_block_types"),
])
def test_config_from_diffusers_rejects_what_it_cannot_run(field, value, message):
    config_json = dict(_allegro_on_meta().config)
    config_json[field] = value
    with pytest.raises(ValueError, match=message):
        vae_config_from_diffusers(config_json)
