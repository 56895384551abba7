"""LaVie's released-size configs validate and their models trace (abstract evaluation, no memory) at the
sizes and parameter counts their headers state."""

import math

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from t2v_jax.config import validate
from t2v_jax.models.clip_text import CLIPTextEncoder
from t2v_jax.models.lavie_unet import LaVieUNet
from t2v_jax.models.text_to_video import latent_shape
from t2v_jax.models.video_vae import VideoVAE
from tiny import load_config


def _count(variables) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(variables)))


def _unet(cfg, frames, height, width):
    x = jax.ShapeDtypeStruct((1, frames, height, width, cfg.in_channels), jnp.float32)
    context = jax.ShapeDtypeStruct((1, 77, cfg.cross_attention_dim), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 77), bool)
    variables = jax.eval_shape(LaVieUNet(cfg).init, jax.random.key(0), x, jnp.zeros((1,)), context, mask)
    out = jax.eval_shape(LaVieUNet(cfg).apply, variables, x, jnp.zeros((1,)), context, mask)
    return _count(variables), out.shape


@pytest.mark.parametrize("name", ["lavie_base", "lavie_interpolation"])
def test_released_size_configs_trace_at_their_stated_sizes(name):
    config = validate(load_config(name), num_devices=1)
    frames, height, width, channels = latent_shape(config)
    assert (frames, height, width, channels) == (16, 40, 64, 4)
    assert _unet(config.unet, frames, height, width) == (909_124_100, (1, 16, 40, 64, 4))
    if name == "lavie_interpolation":
        assert _unet(config.interpolation.unet, 61, height, width) == (909_131_524, (1, 61, 40, 64, 4))
    vae = jax.eval_shape(VideoVAE(config.vae).init, {"params": jax.random.key(0), "sample": jax.random.key(1)},
                         jax.ShapeDtypeStruct((1, 1, 64, 64, 3), jnp.float32))
    assert _count(vae) == 83_653_863
    clip = jax.eval_shape(CLIPTextEncoder(config.text.encoder).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 77), jnp.int32))
    assert _count(clip) == 123_060_480
