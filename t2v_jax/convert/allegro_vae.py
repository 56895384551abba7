"""diffusers `AutoencoderKLAllegro` safetensors -> `VideoVAE` params.

Names map one to one (see `t2v_jax.models.video_vae`); torch Conv2d/Conv3d weights are transposed to
channels-last kernels and Linear weights to Dense kernels. Inside a temporal layer the torch
`nn.Sequential` indices differ per conv: `conv1` and `conv4` are (GroupNorm, SiLU, Conv3d), `conv2` and
`conv3` carry a Dropout before the conv, so their Conv3d is index 3.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2v_jax.convert.safetensors_io import SafetensorsCheckpoint, Tensor, conv, convert, flatten_tree, linear
from t2v_jax.models import video_vae

_CONV_INDEX = {1: 2, 2: 3, 3: 3, 4: 2}
_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "out": "to_out.0"}


def vae_config_from_diffusers(config_json: dict, *, tile_frames: int = 24, tile_overlap_frames: int = 8,
                              tile_overlap: tuple[int, int] = (120, 80)) -> ml_collections.ConfigDict:
    """VideoVAE config from the checkpoint's `vae/config.json`; raises ValueError for what it cannot run.

    The tile size is the config's `sample_size`; the tile frames and overlaps are not in the config:
    `AutoencoderKLAllegro.__init__` fixes them (to these defaults) in its `kernel` and `stride`
    attributes, so pass the values matching any you set there.
    """
    n = len(config_json["block_out_channels"])
    for field, value in (("in_channels", 3), ("out_channels", 3), ("act_fn", "silu")):
        if config_json.get(field, value) != value:
            raise ValueError(f"{field}={config_json[field]!r}: only {value!r} is supported")
    for field, block in (("down_block_types", "AllegroDownBlock3D"), ("up_block_types", "AllegroUpBlock3D")):
        types = tuple(config_json.get(field, (block,) * n))
        if types != (block,) * n:
            raise ValueError(f"{field}={types}: needs {n} x {block!r}, one per block_out_channels entry")
    cfg = video_vae.default_config()
    cfg.update(dict(
        block_out_channels=tuple(config_json["block_out_channels"]),
        layers_per_block=config_json["layers_per_block"],
        latent_channels=config_json["latent_channels"],
        temporal_downsample=tuple(bool(d) for d in config_json["temporal_downsample_blocks"]),
        spatial_downsample=(True,) * (n - 1) + (False,),
        norm_num_groups=config_json["norm_num_groups"],
        mid_attention=True,
        scaling_factor=float(config_json["scaling_factor"]),
        tile_frames=tile_frames,
        tile_size=config_json["sample_size"],
        tile_overlap_frames=tile_overlap_frames,
        tile_overlap=tuple(tile_overlap),
    ))
    cfg.temporal_upsample = tuple(bool(u) for u in config_json["temporal_upsample_blocks"])
    video_vae.validate_config(cfg)
    ratio = config_json.get("temporal_compression_ratio", video_vae.temporal_compression(cfg))
    if ratio != video_vae.temporal_compression(cfg):
        raise ValueError(f"temporal_compression_ratio={ratio} disagrees with temporal_downsample_blocks="
                         f"{cfg.temporal_downsample} (x{video_vae.temporal_compression(cfg)})")
    return cfg


def _conv(source: str, target: str) -> dict:
    return {f"{target}/kernel": Tensor(f"{source}.weight", conv), f"{target}/bias": Tensor(f"{source}.bias")}


def _norm(source: str, target: str) -> dict:
    return {f"{target}/scale": Tensor(f"{source}.weight"), f"{target}/bias": Tensor(f"{source}.bias")}


def _resnet(source: str, target: str, has_shortcut: bool) -> dict:
    mapping = {}
    for name in ("norm1", "norm2"):
        mapping.update(_norm(f"{source}.{name}", f"{target}/{name}"))
    for name in ("conv1", "conv2") + (("conv_shortcut",) if has_shortcut else ()):
        mapping.update(_conv(f"{source}.{name}", f"{target}/{name}"))
    return mapping


def _temporal(source: str, target: str) -> dict:
    mapping = {}
    for i, index in _CONV_INDEX.items():
        mapping.update(_norm(f"{source}.conv{i}.0", f"{target}/norm{i}"))
        mapping.update(_conv(f"{source}.conv{i}.{index}", f"{target}/conv{i}"))
    return mapping


def _layers(source: str, target: str, num_layers: int, in_channels: int, channels: int,
            temporal: bool) -> dict:
    """ResNet (+ temporal) layers of a down/up block; only the first may change channels."""
    mapping = {}
    for i in range(num_layers):
        mapping.update(_resnet(f"{source}.resnets.{i}", f"{target}/resnets_{i}",
                               i == 0 and in_channels != channels))
        if temporal:
            mapping.update(_temporal(f"{source}.temp_convs.{i}", f"{target}/temp_convs_{i}"))
    return mapping


def _mid_block(source: str, target: str, attention: bool, temporal: bool, attention_names: dict) -> dict:
    mapping = {}
    for i in range(2):
        mapping.update(_resnet(f"{source}.resnets.{i}", f"{target}/resnets_{i}", False))
        if temporal:
            mapping.update(_temporal(f"{source}.temp_convs.{i}", f"{target}/temp_convs_{i}"))
    if attention:
        mapping.update(_norm(f"{source}.attentions.0.group_norm", f"{target}/attentions_0/group_norm"))
        for ours, theirs in attention_names.items():
            mapping[f"{target}/attentions_0/attention/{ours}/kernel"] = Tensor(
                f"{source}.attentions.0.{theirs}.weight", linear)
            mapping[f"{target}/attentions_0/attention/{ours}/bias"] = Tensor(f"{source}.attentions.0.{theirs}.bias")
    return mapping


def _ends(part: str, temporal: bool) -> dict:
    """conv_in, temp_conv_in, conv_norm_out, temp_conv_out and conv_out of the encoder or decoder
    (without the temp_convs when `temporal` is False)."""
    mapping = {}
    names = ("conv_in", "temp_conv_in", "temp_conv_out", "conv_out") if temporal else ("conv_in", "conv_out")
    for name in names:
        mapping.update(_conv(f"{part}.{name}", f"{part}/{name}"))
    mapping.update(_norm(f"{part}.conv_norm_out", f"{part}/conv_norm_out"))
    return mapping


def vae_mapping(config, attention_names: dict = _ATTENTION_NAMES) -> dict:
    """{VideoVAE param path: checkpoint tensor} for `config`.

    With `temporal_layers=False` it is the mapping of diffusers' 2D `AutoencoderKL`, whose tensor names
    are Allegro's without the temporal ones (`t2v_jax.convert.sd_vae`). `attention_names` maps the
    mid-block attention's {query, key, value, out} to the checkpoint's tensor names."""
    channels = tuple(config.block_out_channels)
    n = len(channels)
    temporal = config.get("temporal_layers", True)
    mapping = {**_ends("encoder", temporal), **_ends("decoder", temporal),
               **_conv("quant_conv", "quant_conv"), **_conv("post_quant_conv", "post_quant_conv")}
    for i, features in enumerate(channels):
        source, target = f"encoder.down_blocks.{i}", f"encoder/down_blocks_{i}"
        mapping.update(_layers(source, target, config.layers_per_block, channels[max(i - 1, 0)], features,
                               temporal))
        if config.temporal_downsample[i]:
            mapping.update(_temporal(f"{source}.temp_convs_down", f"{target}/temp_convs_down"))
        if config.spatial_downsample[i]:
            mapping.update(_conv(f"{source}.downsamplers.0.conv", f"{target}/downsamplers_0"))
    reversed_channels = channels[::-1]
    for i, (features, temporal_up) in enumerate(zip(reversed_channels, video_vae.temporal_upsample(config))):
        source, target = f"decoder.up_blocks.{i}", f"decoder/up_blocks_{i}"
        mapping.update(_layers(source, target, config.layers_per_block + 1, reversed_channels[max(i - 1, 0)],
                               features, temporal))
        if temporal_up:
            mapping.update(_temporal(f"{source}.temp_conv_up", f"{target}/temp_conv_up"))
        if i < n - 1 and config.spatial_downsample[n - 2 - i]:
            mapping.update(_conv(f"{source}.upsamplers.0.conv", f"{target}/upsamplers_0"))
    for part in ("encoder", "decoder"):
        mapping.update(_mid_block(f"{part}.mid_block", f"{part}/mid_block", config.mid_attention, temporal,
                                  attention_names))
    return mapping


def vae_param_shapes(config) -> dict:
    """{param path: shape} of VideoVAE(config), traced on a one-latent-cell input (no memory used)."""
    rt, rs = video_vae.temporal_compression(config), video_vae.spatial_compression(config)
    video = jax.ShapeDtypeStruct((1, rt, rs, rs, 3), jnp.float32)
    rngs = {"params": jax.random.key(0), "sample": jax.random.key(1)}
    variables = jax.eval_shape(video_vae.VideoVAE(config).init, rngs, video)
    return {path: leaf.shape for path, leaf in flatten_tree(nn.unbox(variables)["params"]).items()}


def convert_vae(diffusers_vae_dir: str, config, dtype=np.float32, *, progress=None) -> dict:
    """Reads `diffusers_vae_dir` (the pipeline's `vae/` folder or one .safetensors file) into the
    VideoVAE params tree (use as `{"params": tree}`), raising ConversionError on any mismatch."""
    return convert(SafetensorsCheckpoint(diffusers_vae_dir), vae_mapping(config), vae_param_shapes(config),
                   dtype=dtype, progress=progress)
