"""LaVie's UNet state dicts (PyTorch `.pt`, diffusers-style names) -> `LaVieUNet` params, and a whole
release (with Stable Diffusion 1.4's VAE, CLIP text encoder and tokenizer for the base and interpolation
models, and the x4 upscaler's for the super-resolution model) -> orbax folders.

The Flax names are the diffusers names with `.` -> `/` and list indices joined by `_`, so the mapping is
derived from the model's own parameter paths: `down_blocks_0/attentions_0/transformer_blocks_0/attn1/query/
kernel` <- `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight` (transposed). The few
renames are in `_RENAMES`.

`from_image_model=True` reads Stable Diffusion's 2D `UNet2DConditionModel` instead, as LaVie's
`from_pretrained_2d` does to start training: the temporal layers (`norm_temp`, `attn_temp`; in the VSR model
every tensor with "temporal" in its name, LaVie's own rule) are not in it and keep their initial values, whose
zero output projections leave the image model unchanged.

LaVie's super-resolution UNet is read the same way: its config (vsr/configs/unet_3d_config.json, or the x4
upscaler's diffusers config.json with `base=lavie_unet.vsr_config()` for the temporal layout) through
`unet_config_from_diffusers`, its tensors by the same renaming.
"""

import functools
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn
from tqdm.auto import tqdm

from t2v_jax.convert.allegro import MANIFEST
from t2v_jax.convert.clip import convert_clip_text, read_clip_text_config
from t2v_jax.convert.safetensors_io import (ConversionError, StateDictCheckpoint, Tensor, conv, convert, flatten_tree,
                                           linear, read_config_json, storage_dtype, unflatten_tree)
from t2v_jax.convert.sd_vae import convert_sd_vae, vae_config_from_diffusers_kl
from t2v_jax.models import lavie_unet
from t2v_jax.models.lavie_unet import LaVieUNet, interpolation_config, spatial_compression
from t2v_jax.train.checkpoint import save_params

_RENAMES = (
    (r"/(attn_temp|attn_temporal)/attention/", r"/\1/"),
    (r"/time_rel_pos_bias/embedding$", "/time_rel_pos_bias/relative_attention_bias/weight"),
    (r"^/class_embedding/embedding$", "/class_embedding/weight"),
    (r"/query/", "/to_q/"), (r"/key/", "/to_k/"), (r"/value/", "/to_v/"), (r"/out/", "/to_out/0/"),
    (r"/ff/proj_in/", "/ff/net/0/proj/"), (r"/ff/proj_out/", "/ff/net/2/"),
    (r"(blocks|resnets|attentions|samplers)_(\d+)/", r"\1/\2/"),
    (r"/(kernel|scale)$", "/weight"),
)
# The layers an image model lacks: the base's temporal attention, and everything LaVie VSR names "temporal"
# (attn_temporal, norm_temporal, resblock_temporal, {down,up}_temporal_blocks, mid_temporal_block).
_TEMPORAL = re.compile(r"/(norm_temp|attn_temp)/|temporal")
# Tensors a LaVie checkpoint holds that are computed here: RoPE's frequencies (a buffer of
# rotary_embedding_torch; the VSR model also keeps its shared one at the top, `temporal_rotary_emb`), and the
# top-level relative position bias that LaVie's base UNet builds but never uses.
_COMPUTED = re.compile(r"(^|\.)(temporal_)?rotary_emb\.freqs$|^time_rel_pos_bias\.")


def checkpoint_name(path: str) -> str:
    """The state-dict name of a Flax param path, e.g. 'conv_in/kernel' -> 'conv_in.weight'."""
    name = "/" + path
    for pattern, replacement in _RENAMES:
        name = re.sub(pattern, replacement, name)
    return name[1:].replace("/", ".")


def _tensor(path: str, ndim: int) -> Tensor:
    transform = {5: conv, 4: conv, 2: linear}.get(ndim) if path.endswith("kernel") else None
    return Tensor(checkpoint_name(path), transform) if transform else Tensor(checkpoint_name(path))


def _init_inputs(cfg, frames: int = 2) -> tuple:
    """The smallest inputs LaVieUNet(cfg).init takes (positional, keyword)."""
    size = spatial_compression(cfg)
    kwargs = {"class_labels_b": jnp.zeros((1,), jnp.int32)} if cfg.get("num_class_embeds", 0) else {}
    return (jnp.zeros((1, frames, size, size, cfg.in_channels)), jnp.zeros((1,)),
            jnp.zeros((1, 1, cfg.cross_attention_dim)), jnp.ones((1, 1), bool)), kwargs


def unet_param_shapes(cfg, frames: int = 2) -> dict:
    """{param path: ShapeDtypeStruct} of LaVieUNet(cfg), traced on a smallest input (no memory used)."""
    return dict(_traced_param_shapes(cfg.to_json(), frames))


@functools.lru_cache(maxsize=8)
def _traced_param_shapes(cfg_json: str, frames: int) -> dict:
    """One trace per config (a release's conversion checks every UNet, then converts it; a trace takes seconds).
    The JSON round trip turns the config's tuples into lists, which the model only iterates."""
    cfg = ml_collections.ConfigDict(json.loads(cfg_json))
    args, kwargs = _init_inputs(cfg, frames)
    variables = jax.eval_shape(lambda rng: LaVieUNet(cfg).init(rng, *args, **kwargs), jax.random.key(0))
    return flatten_tree(nn.unbox(variables)["params"])


def _mapping(shapes: dict, from_image_model: bool) -> dict:
    return {path: _tensor(path, len(shape.shape)) for path, shape in shapes.items()
            if not (from_image_model and _TEMPORAL.search("/" + path))}


def unet_mapping(cfg, *, from_image_model: bool = False) -> dict:
    """{LaVieUNet param path: checkpoint Tensor}; without the temporal layers for an image model."""
    return _mapping(unet_param_shapes(cfg), from_image_model)


def convert_unet(checkpoint, cfg, *, from_image_model: bool = False, init_rng=None, dtype=np.float32,
                 progress=None) -> dict:
    """The LaVieUNet params tree (use as `{"params": tree}`) from a checkpoint view
    (`SafetensorsCheckpoint` or `StateDictCheckpoint`), raising ConversionError naming every missing,
    unused or mis-shaped tensor. With `from_image_model`, the temporal layers come from
    `LaVieUNet(cfg).init(init_rng)` instead."""
    shapes = unet_param_shapes(cfg)
    mapping = _mapping(shapes, from_image_model)
    converted = flatten_tree(convert(checkpoint, mapping, {path: shapes[path] for path in mapping}, dtype=dtype,
                                     ignore_unused=lambda name: bool(_COMPUTED.search(name)), progress=progress))
    if from_image_model:
        args, kwargs = _init_inputs(cfg)
        init = nn.unbox(jax.jit(LaVieUNet(cfg).init)(jax.random.key(0) if init_rng is None else init_rng, *args,
                                                     **kwargs))["params"]
        converted.update({path: np.asarray(value, dtype) for path, value in flatten_tree(init).items()
                          if path not in mapping})
    return unflatten_tree(converted)


def _per_level(value, levels: int, field: str) -> tuple:
    if isinstance(value, bool):
        return (value,) * levels
    if len(value) != levels:
        raise ValueError(f"{field}: {len(value)} entries for {levels} levels")
    return tuple(bool(entry) for entry in value)


def _lavie_vsr_temporal_fields(config_json: dict, levels: int) -> dict:
    """The temporal layout from LaVie VSR's `UNet3DVSRModel` config (its defaults where the file is silent)."""
    module = config_json["temporal_module_config"]
    if any(module.get("attention_block_types", ["", ""])):
        raise ValueError(f"temporal_module_config.attention_block_types={module['attention_block_types']}: "
                         "TemporalModule3D's temporal transformer is not supported (LaVie's VSR leaves it out)")
    for field, default in (("video_condition", True), ("use_first_frame", False), ("use_relative_position", False)):
        if config_json.get(field, default):
            raise ValueError(f"{field}=True is not supported (LaVie's VSR config sets False)")
    fields = {"down_temporal_idx": tuple(config_json.get("down_temporal_idx", (0, 1, 2))),
              "mid_temporal": bool(config_json.get("mid_temporal", False)),
              "up_temporal_idx": tuple(config_json.get("up_temporal_idx", (0, 1, 2)))}
    for field in ("down_temporal_idx", "up_temporal_idx"):
        if any(not 0 <= index < levels for index in fields[field]):
            raise ValueError(f"{field} {list(fields[field])}: indices of the {levels} levels only")
    return dict(fields, transformer_temporal_conv=True, temporal_attention_name="attn_temporal",
                norm_over_frames=True)


def unet_config_from_diffusers(config_json: dict, base=None):
    """LaVieUNet config from a diffusers/LaVie UNet `config.json`; ValueError naming what it cannot run.

    Reads the SD-1.x layout, the x4 upscaler's additions (`use_linear_projection`, `only_cross_attention`,
    `num_class_embeds`), and LaVie VSR's `UNet3DVSRModel` config with its temporal layout (`temporal_module_config`
    and the `*_temporal*` fields). `base` (default `lavie_unet.default_config()`) supplies the fields the file
    lacks: `base=lavie_unet.vsr_config()` with the upscaler's 2D config gives the VSR model of that image model.
    """
    cfg = lavie_unet.default_config() if base is None else base.copy_and_resolve_references()
    down = [name.replace("3D", "2D") for name in config_json["down_block_types"]]
    for name in down:
        if name not in ("CrossAttnDownBlock2D", "DownBlock2D"):
            raise ValueError(f"down_block_types: {name!r} is not an SD-1.x block")
    expected_up = ["CrossAttnUpBlock2D" if name.startswith("CrossAttn") else "UpBlock2D" for name in reversed(down)]
    up = [name.replace("3D", "2D") for name in config_json["up_block_types"]]
    if up != expected_up:
        raise ValueError(f"up_block_types {up} do not mirror down_block_types {down}")
    heads = config_json.get("attention_head_dim", 8)
    if not isinstance(heads, int) and len(set(heads)) == 1:
        heads = heads[0]
    if not isinstance(heads, int):
        raise ValueError(f"attention_head_dim {heads}: one head count for every level is supported")
    for field, allowed in (("class_embed_type", None), ("resnet_time_scale_shift", "default"),
                           ("center_input_sample", False), ("freq_shift", 0), ("flip_sin_to_cos", True),
                           ("num_attention_heads", None), ("transformer_layers_per_block", 1),
                           ("mid_block_scale_factor", 1), ("dual_cross_attention", False),
                           ("time_embedding_type", "positional"), ("addition_embed_type", None),
                           ("encoder_hid_dim", None), ("class_embeddings_concat", False)):
        if config_json.get(field, allowed) != allowed:
            raise ValueError(f"{field}={config_json[field]!r} is not supported (SD-1.x and the x4 upscaler use "
                             f"{allowed!r})")
    levels = len(down)
    only_cross = _per_level(config_json.get("only_cross_attention", False), levels, "only_cross_attention")
    cfg.update(in_channels=config_json["in_channels"], out_channels=config_json["out_channels"],
               block_out_channels=tuple(config_json["block_out_channels"]),
               attention_levels=tuple(name.startswith("CrossAttn") for name in down),
               layers_per_block=config_json["layers_per_block"], num_heads=heads,
               cross_attention_dim=config_json["cross_attention_dim"],
               norm_num_groups=config_json.get("norm_num_groups", 32), norm_eps=config_json.get("norm_eps", 1e-5),
               use_linear_projection=bool(config_json.get("use_linear_projection", False)),
               only_cross_attention=only_cross if any(only_cross) else (),
               num_class_embeds=config_json.get("num_class_embeds") or 0)
    if "temporal_module_config" in config_json:
        cfg.update(**_lavie_vsr_temporal_fields(config_json, levels))
    return cfg


def read_state_dict(path: str):
    """A LaVie `.pt` checkpoint as a `StateDictCheckpoint`: its EMA weights when it holds training state
    ({"ema": ..., "model": ...}, as LaVie's `find_model` reads it), else the state dict itself."""
    import torch  # the [ref] extra; only reading PyTorch files needs it

    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("ema", "state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return StateDictCheckpoint(state, path)


def vsr_unet_config(upscaler_dir: str | None, vsr_config: str | None = None):
    """LaVie VSR's UNet config: from its `UNet3DVSRModel` config file `vsr_config` (LaVie's
    vsr/configs/unet_3d_config.json) when given, else from the x4 upscaler's `unet/config.json` with LaVie's
    temporal layout (`lavie_unet.vsr_config()`), which gives the same config for the released models."""
    if vsr_config is not None:
        with open(vsr_config) as f:
            cfg = unet_config_from_diffusers(json.load(f))
    else:
        cfg = unet_config_from_diffusers(read_config_json(os.path.join(upscaler_dir, "unet")),
                                         base=lavie_unet.vsr_config())
    lavie_unet.validate_config(cfg, "vsr")
    return cfg


def _require_subfolders(folder: str, names, what: str) -> None:
    for name in names:
        if not os.path.isdir(os.path.join(folder, name)):
            raise FileNotFoundError(f"{folder} is not {what}: no {name}/ subfolder")


def _image_model_components(folder: str, prefix: str, dtype: str, vae_defaults: dict) -> tuple[dict, dict]:
    """({name: config}, {name: converter(progress=...)}) for the VAE and the CLIP text encoder of a diffusers
    Stable Diffusion folder, named `{prefix}vae` and `{prefix}text_encoder`; `vae_defaults` fills fields its
    vae/config.json may lack."""
    vae_dir, text_dir = os.path.join(folder, "vae"), os.path.join(folder, "text_encoder")
    vae_cfg = vae_config_from_diffusers_kl({**vae_defaults, **read_config_json(vae_dir)})
    text_cfg = read_clip_text_config(text_dir, dtype=dtype)
    return ({f"{prefix}vae": vae_cfg, f"{prefix}text_encoder": text_cfg},
            {f"{prefix}vae": functools.partial(convert_sd_vae, vae_dir, vae_cfg),
             f"{prefix}text_encoder": functools.partial(convert_clip_text, text_dir, text_cfg)})


def _convert_unet_file(path: str, cfg, dtype, progress=None) -> dict:
    return convert_unet(read_state_dict(path), cfg, dtype=dtype, progress=progress)


class _Checked(Exception):
    """Stops a converter at its first converted tensor: `convert` has checked its whole mapping by then."""


def _stop(path):
    raise _Checked


def convert_lavie(out_dir: str, *, sd_dir: str | None = None, base: str | None = None,
                  interpolation: str | None = None, upscaler_dir: str | None = None, vsr: str | None = None,
                  vsr_config: str | None = None, dtype: str = "float32", show_progress: bool = True) -> dict:
    """LaVie's released models and what they need, into orbax folders under `out_dir`, with MANIFEST holding
    every config.

    `sd_dir` (a diffusers Stable Diffusion 1.4 folder) gives vae/, text_encoder/ and tokenizer/ (copied) and
    the base and interpolation UNets' config; `base` and `interpolation` (LaVie's `.pt` files) give base/ and
    interpolation/. `upscaler_dir` (diffusers' stable-diffusion-x4-upscaler folder) gives vsr_vae/,
    vsr_text_encoder/ (OpenCLIP ViT-H/14) and vsr_tokenizer/; `vsr` (LaVie's `.pt`) gives vsr/, its config
    from `vsr_config` or the upscaler's unet/config.json (`vsr_unet_config`). Either folder may be left out
    when none of its models is converted. Every component is checked whole before anything is written: one
    ConversionError names every missing, unused or mis-shaped tensor of every component."""
    np_dtype = storage_dtype(dtype)
    if sd_dir is None and (base or interpolation):
        raise ValueError("the base and interpolation models need sd_dir (Stable Diffusion 1.4's VAE, text encoder "
                         "and UNet config)")
    if upscaler_dir is None and vsr:
        raise ValueError("the super-resolution model needs upscaler_dir (the x4 upscaler's VAE and text encoder)")
    if sd_dir is None and upscaler_dir is None:
        raise ValueError("nothing to convert: give sd_dir and/or upscaler_dir")
    configs, converters, tokenizers, sources, unets = {}, {}, {}, {}, {}
    if sd_dir is not None:
        _require_subfolders(sd_dir, ("vae", "text_encoder", "tokenizer", "unet"), "a Stable Diffusion 1.x diffusers "
                            "folder")
        sd_configs, sd_converters = _image_model_components(sd_dir, "", dtype, vae_defaults={})
        base_cfg = unet_config_from_diffusers(read_config_json(os.path.join(sd_dir, "unet")))
        configs.update(sd_configs, base=base_cfg, interpolation=interpolation_config(base_cfg))
        converters.update(sd_converters)
        tokenizers["tokenizer"], sources["sd_dir"] = os.path.join(sd_dir, "tokenizer"), os.path.abspath(sd_dir)
        unets.update(base=base, interpolation=interpolation)
    if upscaler_dir is not None:
        _require_subfolders(upscaler_dir, ("vae", "text_encoder", "tokenizer") + (() if vsr_config else ("unet",)),
                            "a diffusers stable-diffusion-x4-upscaler folder")
        # The upscaler's vae/config.json gained its scaling factor in April 2023; diffusers' upscale pipeline
        # used 0.08333 before that, not AutoencoderKL's default.
        upscaler_configs, upscaler_converters = _image_model_components(upscaler_dir, "vsr_", dtype,
                                                                        vae_defaults={"scaling_factor": 0.08333})
        configs.update(upscaler_configs, vsr=vsr_unet_config(upscaler_dir, vsr_config))
        converters.update(upscaler_converters)
        tokenizers["vsr_tokenizer"] = os.path.join(upscaler_dir, "tokenizer")
        sources["upscaler_dir"] = os.path.abspath(upscaler_dir)
        unets["vsr"] = vsr
    for name, path in unets.items():
        if path is not None:
            converters[name] = functools.partial(_convert_unet_file, path, configs[name], np_dtype)
    problems = []
    for name, convert_component in converters.items():
        try:
            convert_component(progress=_stop)
        except _Checked:
            pass
        except ConversionError as error:
            problems.append(f"{name}: {error}")
    if problems:
        raise ConversionError("\n".join(problems))
    os.makedirs(out_dir, exist_ok=True)
    for name, convert_component in converters.items():
        with tqdm(desc=f"converting {name}", unit=" tensors", disable=not show_progress) as bar:
            params = convert_component(progress=lambda path: bar.update())
        save_params(os.path.join(out_dir, name), params)
        del params
    for name, folder in tokenizers.items():
        shutil.copytree(folder, os.path.join(out_dir, name), dirs_exist_ok=True)
    manifest = {"sources": sources, "dtype": dtype, "components": sorted(converters),
                "configs": {name: cfg.to_dict() for name, cfg in configs.items()}}
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return manifest
