"""LaVie's released-size configs validate and their models trace (abstract evaluation, no memory) at the
sizes and parameter counts their headers state."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from t2v_jax.checks import video_size
from t2v_jax.config import validate
from t2v_jax.convert.lavie import vsr_unet_config
from t2v_jax.models.clip_text import CLIPTextEncoder
from t2v_jax.models.lavie_unet import LaVieUNet
from t2v_jax.models.text_to_video import latent_shape
from t2v_jax.models.video_vae import VideoVAE, spatial_compression
from tiny import load_config


def _count(variables) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(variables)))


def _unet(cfg, frames, height, width):
    x = jax.ShapeDtypeStruct((1, frames, height, width, cfg.in_channels), jnp.float32)
    context = jax.ShapeDtypeStruct((1, 77, cfg.cross_attention_dim), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 77), bool)
    # The super-resolution UNet embeds the low-resolution input's noise level as a class label.
    kwargs = {"class_labels_b": jnp.zeros((1,), jnp.int32)} if cfg.num_class_embeds else {}
    out, variables = jax.eval_shape(functools.partial(LaVieUNet(cfg).init_with_output, **kwargs), jax.random.key(0),
                                    x, jnp.zeros((1,)), context, mask)
    return _count(variables), out.shape


def _vae_params(vae_cfg) -> int:
    return _count(jax.eval_shape(VideoVAE(vae_cfg).init, {"params": jax.random.key(0), "sample": jax.random.key(1)},
                                 jax.ShapeDtypeStruct((1, 1, 64, 64, 3), jnp.float32)))


def _text_encoder_params(encoder_cfg) -> int:
    return _count(jax.eval_shape(CLIPTextEncoder(encoder_cfg).init, jax.random.key(0),
                                 jax.ShapeDtypeStruct((1, 77), jnp.int32)))


@pytest.mark.parametrize("name", ["lavie_base", "lavie_interpolation"])
def test_released_size_configs_trace_at_their_stated_sizes(name):
    config = validate(load_config(name), num_devices=1)
    frames, height, width, channels = latent_shape(config)
    assert (frames, height, width, channels) == (16, 40, 64, 4)
    assert _unet(config.unet, frames, height, width) == (909_124_100, (1, 16, 40, 64, 4))
    if name == "lavie_interpolation":
        assert _unet(config.interpolation.unet, 61, height, width) == (909_131_524, (1, 61, 40, 64, 4))
    assert _vae_params(config.vae) == 83_653_863
    assert _text_encoder_params(config.text.encoder) == 123_060_480


# Stable Diffusion's x4 upscaler's unet/config.json: the image model LaVie's super-resolution UNet inflates.
X4_UPSCALER_UNET = dict(
    _class_name="UNet2DConditionModel", act_fn="silu", attention_head_dim=8, block_out_channels=[256, 512, 512, 1024],
    center_input_sample=False, cross_attention_dim=1024,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    downsample_padding=1, dual_cross_attention=False, flip_sin_to_cos=True, freq_shift=0, in_channels=7,
    layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, num_class_embeds=1000,
    only_cross_attention=[True, True, True, False], out_channels=4, sample_size=128,
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True)


def test_released_super_resolution_config_traces_at_its_stated_size(tmp_path):
    """x4 of the interpolated 61 frames of 320x512: the UNet on 8-frame chunks of 320x512 latents (the x4 VAE's
    of 1280x2048 frames) plus the RGB frames. The VAE's and the text encoder's counts are those of diffusers'
    AutoencoderKL and transformers' CLIPTextModel of the same configs (counted on torch's meta device; the text
    encoder's also in tests/test_parity_clip.py)."""
    config = validate(load_config("lavie_vsr"), num_devices=1)
    vsr = config.vsr
    assert (vsr.canvas, vsr.num_frames, vsr.chunk_frames) == (1280, 61, 8)
    latent_height, latent_width = (size * vsr.scale // spatial_compression(vsr.vae) for size in video_size(config.data))
    assert (latent_height, latent_width) == (320, 512)
    assert _unet(vsr.unet, vsr.chunk_frames, latent_height, latent_width) == (691_036_420, (1, 8, 320, 512, 4))
    # What the converter reads from the upscaler's unet/config.json when no LaVie config file is given.
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(X4_UPSCALER_UNET))
    assert vsr_unet_config(str(tmp_path)).to_dict() == vsr.unet.to_dict()
    assert _vae_params(vsr.vae) == 55_325_927
    assert (vsr.vae.scaling_factor, spatial_compression(vsr.vae)) == (0.08333, 4)
    assert _text_encoder_params(vsr.text.encoder) == 340_387_840
    assert vsr.text.encoder.activation == "gelu" and vsr.unet.cross_attention_dim == vsr.text.encoder.width
