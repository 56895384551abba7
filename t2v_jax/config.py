"""Config validation that runs before anything compiles.

Every check names the config field that is wrong and what is allowed, so that a bad flag on
the command line fails in a second with a readable message instead of deep inside XLA.
"""

import math

import jax

from t2v_jax.data import bouncing_digits
from t2v_jax.data.loader import DATASET_NAMES
from t2v_jax.diffusion.samplers import SAMPLERS
from t2v_jax.diffusion.schedules import PREDICTION_TYPES, SCHEDULE_KINDS
from t2v_jax.layers.attention import IMPLEMENTATIONS, available_implementations
from t2v_jax.models import video_vae
from t2v_jax.parallel.mesh import MESH_AXES, resolve_dcn_shape, resolve_mesh_shape
from t2v_jax.parallel.rules import PRESETS

SYSTEMS = ("latent_diffusion", "flashvideo")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A config field holds a value the system cannot run with."""


def _require(condition: bool, field: str, message: str):
    if not condition:
        raise ConfigError(f"config.{field}: {message}")


def _one_of(value, field: str, allowed):
    _require(value in allowed, field, f"{value!r} is not allowed; choose one of {list(allowed)}")


def latent_shape(config) -> tuple[int, int, int, int]:
    """(frames, height, width, channels) of the VAE latents for the configured videos."""
    t_down = video_vae.temporal_compression(config.vae)
    s_down = video_vae.spatial_compression(config.vae)
    height, width = video_size(config.data)
    return (config.data.num_frames // t_down, height // s_down, width // s_down, config.vae.latent_channels)


def video_size(data_cfg) -> tuple[int, int]:
    """(height, width) in pixels: `canvas` is the height, and the width too unless `width` is set."""
    return data_cfg.canvas, data_cfg.get("width", data_cfg.canvas)


def validate_model(config):
    """Checks the VAE, text encoder and DiT fields and how they fit together."""
    dit, vae = config.dit, config.vae
    _require(dit.num_heads > 0, "dit.num_heads", f"must be positive, got {dit.num_heads}")
    _require(dit.width % dit.num_heads == 0, "dit.num_heads",
             f"{dit.num_heads} heads do not divide dit.width={dit.width}; allowed: divisors of "
             f"{dit.width} such as {[h for h in range(1, 33) if dit.width % h == 0]}")
    head_dim = dit.width // dit.num_heads
    _require(head_dim % 6 == 0, "dit.width",
             f"head dim {dit.width}/{dit.num_heads}={head_dim} must be divisible by 6: 3D RoPE "
             "splits it in three rotate-half chunks")
    _one_of(dit.attention, "dit.attention", IMPLEMENTATIONS + ("auto",))
    available = available_implementations()
    _require(dit.attention in available + ("auto",), "dit.attention",
             f"{dit.attention!r} cannot run on this {jax.default_backend()} backend; available here: "
             f"{list(available) + ['auto']}")
    _one_of(dit.remat_policy, "dit.remat_policy", REMAT_POLICIES)
    _one_of(dit.dtype, "dit.dtype", DTYPES)
    _require(dit.in_channels == vae.latent_channels, "dit.in_channels",
             f"{dit.in_channels} must equal vae.latent_channels={vae.latent_channels}")
    _require(dit.caption_channels == config.text.encoder.width, "dit.caption_channels",
             f"{dit.caption_channels} must equal text.encoder.width={config.text.encoder.width}")
    _require(len(vae.temporal_downsample) == len(vae.block_out_channels), "vae.temporal_downsample",
             f"needs one entry per block ({len(vae.block_out_channels)}), got {len(vae.temporal_downsample)}")
    _require(len(vae.spatial_downsample) == len(vae.block_out_channels), "vae.spatial_downsample",
             f"needs one entry per block ({len(vae.block_out_channels)}), got {len(vae.spatial_downsample)}")
    for channels in vae.block_out_channels:
        _require(channels % vae.norm_num_groups == 0, "vae.block_out_channels",
                 f"{channels} is not divisible by vae.norm_num_groups={vae.norm_num_groups}")
    text = config.text.encoder
    _require(text.num_heads * text.head_dim > 0, "text.encoder.num_heads", "must be positive")


def validate_dataset(data):
    """The dataset name, and the video geometry Bouncing Digits can render."""
    _one_of(data.name, "data.name", DATASET_NAMES)
    if data.name == "bouncing_digits":
        try:
            bouncing_digits.validate_geometry(data.num_frames, data.canvas)
        except ValueError as error:
            raise ConfigError(f"config.data ({data.num_frames} frames, {data.canvas} px): {error}") from None


def validate_data(config):
    data = config.data
    validate_dataset(data)
    t_down = video_vae.temporal_compression(config.vae)
    s_down = video_vae.spatial_compression(config.vae)
    _require(data.num_frames > 0 and data.num_frames % t_down == 0, "data.num_frames",
             f"{data.num_frames} frames cannot be encoded by a VAE with x{t_down} temporal compression; "
             f"allowed: multiples of {t_down}")
    for field, size in zip(("data.canvas", "data.width"), video_size(data)):
        _require(size > 0 and size % s_down == 0, field,
                 f"{size} px is not divisible by the VAE's x{s_down} spatial compression")
    frames, height, width, _ = latent_shape(config)
    pt, ph, pw = config.dit.patch_thw
    for name, size, patch in (("frames", frames, pt), ("height", height, ph), ("width", width, pw)):
        _require(size % patch == 0, "dit.patch_thw",
                 f"patch {tuple(config.dit.patch_thw)} does not divide the latent {name} {size} "
                 f"(latent grid {(frames, height, width)} from data.num_frames={data.num_frames}, "
                 f"data.canvas={data.canvas})")


def validate_diffusion(config):
    diff, samp = config.diffusion, config.sampling
    _one_of(diff.schedule, "diffusion.schedule", SCHEDULE_KINDS)
    _one_of(diff.prediction_type, "diffusion.prediction_type", PREDICTION_TYPES)
    _one_of(samp.method, "sampling.method", SAMPLERS)
    _require(0 < samp.num_steps <= diff.num_train_steps, "sampling.num_steps",
             f"must be in [1, diffusion.num_train_steps={diff.num_train_steps}], got {samp.num_steps}")
    is_flow = diff.schedule == "flow"
    _require(is_flow == (diff.prediction_type == "flow"), "diffusion.prediction_type",
             f"{diff.prediction_type!r} does not fit schedule {diff.schedule!r}: the flow schedule "
             "trains 'flow' targets and the others 'eps', 'v' or 'x0'")
    _require(is_flow == (samp.method == "flow_euler"), "sampling.method",
             f"{samp.method!r} does not fit schedule {diff.schedule!r}: use 'flow_euler' with 'flow' "
             "and ddpm/ddim/euler_ancestral otherwise")
    _require(not (is_flow and diff.min_snr_gamma), "diffusion.min_snr_gamma",
             "min-SNR weighting is defined for eps, v and x0 targets; set it to None for the flow schedule")


def _mesh_sizes(config, num_devices: int) -> dict:
    """Size of every mesh axis (ICI x DCN) for `num_devices`, or a ConfigError naming the mesh field."""
    _one_of(config.mesh.preset, "mesh.preset", sorted(PRESETS))
    try:
        dcn = resolve_dcn_shape(config.mesh.get("dcn_shape", None))
        slices = math.prod(dcn)
        if num_devices % slices:
            raise ValueError(f"mesh.dcn_shape spans {slices} slices, which does not divide the "
                             f"{num_devices} devices")
        ici = resolve_mesh_shape(dict(config.mesh.shape), num_devices // slices)
    except ValueError as error:
        raise ConfigError(f"config.{error}") from None
    return {axis: i * d for axis, i, d in zip(MESH_AXES, ici, dcn)}


def _check_batches(config, sizes: dict, batch_fields):
    data_parallel = sizes["data"] * sizes["fsdp"]
    for field in batch_fields:
        batch = config[field].batch_size
        _require(batch % data_parallel == 0, f"{field}.batch_size",
                 f"{batch} is not divisible by the data-parallel size {data_parallel} "
                 f"(mesh data {sizes['data']} x fsdp {sizes['fsdp']})")


def _check_heads(num_heads: int, field: str, sizes: dict):
    _require(num_heads % sizes["tensor"] == 0, field,
             f"{num_heads} heads are not divisible by the tensor axis (mesh.shape.tensor={sizes['tensor']})")


def validate_parallel(config, num_devices: int, batch_fields=("train_vae", "train_dit")):
    """Mesh against the device count, and the model and batch against the mesh, naming the numbers."""
    sizes = _mesh_sizes(config, num_devices)
    _check_heads(config.dit.num_heads, "dit.num_heads", sizes)
    tokens = num_dit_tokens(config)
    _require(tokens % sizes["context"] == 0, "mesh.shape.context",
             f"the DiT's {tokens} video tokens (grid {dit_token_grid(config)}) do not split over a context "
             f"axis of {sizes['context']}")
    _check_batches(config, sizes, batch_fields)


def system(config) -> str:
    """Which system a config builds: the latent diffusion stack (VAE + DiT) unless it says otherwise."""
    return config.get("system", "latent_diffusion")


def validate_flashvideo(config, num_devices: int):
    """FlashVideo: tokenizer, keyframe stride, both decoders, caption budget, sampling and mesh."""
    from t2v_jax.models import retnet_video, vq

    data = config.data
    validate_dataset(data)
    vq.validate_config(config.vq, *video_size(data))
    stride = config.flashvideo.keyframe_stride
    try:
        retnet_video.keyframe_numbers(data.num_frames, stride)
    except ValueError as error:
        allowed = [k for k in range(1, data.num_frames) if (data.num_frames - 1) % k == 0] or [1]
        raise ConfigError(f"config.flashvideo.keyframe_stride: {error}; allowed: {allowed}") from None
    sizes = _mesh_sizes(config, num_devices)
    roles = ("keyframes", "interpolation") if stride > 1 else ("keyframes",)
    for role in roles:
        field = f"{role}_model"
        model = config[field]
        _one_of(model.mixer, f"{field}.mixer", retnet_video.MIXERS)
        _one_of(model.attention, f"{field}.attention", IMPLEMENTATIONS)
        _one_of(model.dtype, f"{field}.dtype", DTYPES)
        _require(model.num_heads > 0 and model.width % model.num_heads == 0, f"{field}.num_heads",
                 f"{model.num_heads} heads do not divide {field}.width={model.width}")
        _require((model.width // model.num_heads) % 2 == 0, f"{field}.width",
                 f"head dim {model.width}/{model.num_heads} must be even (rotation works on feature pairs)")
        _check_heads(model.num_heads, f"{field}.num_heads", sizes)
    text_length = config.text.max_length
    if data.name == "bouncing_digits":
        longest = max(len(bouncing_digits.caption(d, c, m)) for d in range(10)
                      for c in bouncing_digits.COLOURS for m in bouncing_digits.DIRECTIONS)
        _require(text_length > longest, "text.max_length",
                 f"{text_length} tokens cannot hold the longest Bouncing Digits caption ({longest} bytes + eos); "
                 f"set at least {longest + 1}")
    sampling = config.sampling
    _require(sampling.temperature >= 0, "sampling.temperature", f"must be >= 0, got {sampling.temperature}")
    _require(sampling.top_k >= 0, "sampling.top_k", f"must be >= 0 (0 = no top-k), got {sampling.top_k}")
    _one_of(sampling.prefill_mode, "sampling.prefill_mode", retnet_video.PREFILL_MODES)
    _check_batches(config, sizes, ["train_vq"] + [f"train_{role}" for role in roles])


def validate(config, num_devices: int | None = None):
    """Runs every check; call it before building models or compiling."""
    _one_of(system(config), "system", SYSTEMS)
    if system(config) == "flashvideo":
        validate_flashvideo(config, num_devices or jax.device_count())
        return config
    validate_model(config)
    validate_data(config)
    validate_diffusion(config)
    validate_parallel(config, num_devices or jax.device_count())
    return config


def dit_token_grid(config) -> tuple[int, int, int]:
    frames, height, width, _ = latent_shape(config)
    pt, ph, pw = config.dit.patch_thw
    return frames // pt, height // ph, width // pw


def num_dit_tokens(config) -> int:
    return math.prod(dit_token_grid(config))
