"""diffusers `AutoencoderKL` (Stable Diffusion 1.x's image VAE, which LaVie runs per frame) safetensors
-> params of the per-frame `VideoVAE` (`temporal_layers=False`).

The per-frame VideoVAE computes what `AutoencoderKL` computes, frame by frame: the same ResNet blocks,
mid block (ResNet, single-head attention with biases, ResNet), GroupNorm eps 1e-6, the stride-2
downsampling conv after a (0, 1, 0, 1) zero pad, nearest upsampling + conv, quant convs and logvar clip.
Its tensor names are Allegro's without the temporal ones, so the mapping is
`allegro_vae.vae_mapping` of a config without temporal layers. SD 1.x's released VAEs were saved before
diffusers renamed the mid-block attention tensors (`query/key/value/proj_attn` for
`to_q/to_k/to_v/to_out.0`); diffusers renames them when loading, and so does `convert_sd_vae`.
"""

import ml_collections
import numpy as np

from t2v_jax.convert.allegro_vae import vae_mapping, vae_param_shapes
from t2v_jax.convert.safetensors_io import SafetensorsCheckpoint, convert
from t2v_jax.models import video_vae

_DEPRECATED_ATTENTION_NAMES = {"query": "query", "key": "key", "value": "value", "out": "proj_attn"}

# `AutoencoderKL.__init__`'s defaults, for fields a config.json saved by an older diffusers lacks (SD 1.4's,
# saved by diffusers 0.2.2, has no scaling_factor).
_DEFAULTS = dict(block_out_channels=(64,), layers_per_block=1, latent_channels=4, norm_num_groups=32,
                 sample_size=32, scaling_factor=0.18215, mid_block_add_attention=True)

# Fields whose other values change the computation in ways VideoVAE does not implement.
_SUPPORTED = dict(in_channels=3, out_channels=3, act_fn="silu", shift_factor=None, latents_mean=None,
                  latents_std=None, use_quant_conv=True, use_post_quant_conv=True)


def vae_config_from_diffusers_kl(config_json: dict, *, tile_frames: int = 16, tile_overlap_frames: int = 0,
                                 tile_overlap: tuple[int, int] | None = None) -> ml_collections.ConfigDict:
    """Per-frame VideoVAE config from an `AutoencoderKL`'s `vae/config.json`; raises ValueError for what
    it cannot run.

    The tiles bound the memory of `vae_moments` / `vae_decode(tiled=True)`. Frames are coded alone, so
    splitting time changes nothing (hence no temporal overlap by default); splitting space changes the
    GroupNorm statistics. The tile size is the config's `sample_size` and the spatial overlap defaults to
    a quarter of it (diffusers' `tile_overlap_factor`); diffusers' own tiling (`enable_tiling()`) crops
    and blends differently, so only untiled results are diffusers' numbers.
    """
    config_json = {**_DEFAULTS, **config_json}
    for field, value in _SUPPORTED.items():
        if config_json.get(field, value) != value:
            raise ValueError(f"{field}={config_json[field]!r}: only {value!r} is supported")
    n = len(config_json["block_out_channels"])
    for field, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = tuple(config_json.get(field, (block,) * n))
        if types != (block,) * n:
            raise ValueError(f"{field}={types}: needs {n} x {block!r}, one per block_out_channels entry")
    sample_size = config_json["sample_size"]
    if isinstance(sample_size, (list, tuple)):  # as diffusers' tiling reads it
        sample_size = sample_size[0]
    cfg = video_vae.default_config()
    cfg.update(dict(
        block_out_channels=tuple(config_json["block_out_channels"]),
        layers_per_block=config_json["layers_per_block"],
        latent_channels=config_json["latent_channels"],
        temporal_downsample=(False,) * n,
        spatial_downsample=(True,) * (n - 1) + (False,),
        temporal_layers=False,
        norm_num_groups=config_json["norm_num_groups"],
        mid_attention=bool(config_json["mid_block_add_attention"]),
        scaling_factor=float(config_json["scaling_factor"]),
        tile_frames=tile_frames,
        tile_size=sample_size,
        tile_overlap_frames=tile_overlap_frames,
        tile_overlap=tuple(tile_overlap) if tile_overlap is not None else (sample_size // 4,) * 2,
    ))
    video_vae.validate_config(cfg)
    return cfg


def sd_vae_mapping(config, checkpoint_names) -> dict:
    """{VideoVAE param path: checkpoint tensor} for an `AutoencoderKL` checkpoint holding `checkpoint_names`,
    with the attention names it uses (current or deprecated)."""
    if any(name.endswith(".attentions.0.query.weight") for name in checkpoint_names):
        return vae_mapping(config, _DEPRECATED_ATTENTION_NAMES)
    return vae_mapping(config)


def convert_sd_vae(diffusers_vae_dir: str, config, dtype=np.float32, *, progress=None) -> dict:
    """Reads `diffusers_vae_dir` (a `vae/` folder or one .safetensors file) into the per-frame VideoVAE
    params tree (use as `{"params": tree}`), raising ConversionError on any mismatch."""
    checkpoint = SafetensorsCheckpoint(diffusers_vae_dir)
    return convert(checkpoint, sd_vae_mapping(config, checkpoint.keys()), vae_param_shapes(config), dtype=dtype,
                   progress=progress)
