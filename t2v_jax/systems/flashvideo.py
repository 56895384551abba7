"""FlashVideo (Lei et al. 2023): RetNet autoregressive video over FSQ tokens.

Stages: the FSQ video tokenizer; the keyframe decoder and (when keyframes are more than one frame
apart) the interpolation decoder, both trained on the frozen tokenizer's codes. The benchmark times
recurrent decoding against the same decoder with a KV cache.
"""

import jax

from t2v_jax.benchmarks.decoding import decoding_benchmark
from t2v_jax.checks import DTYPES, ConfigError, check_batches, check_heads, one_of, require, video_size
from t2v_jax.data.loader import check_caption_budget, validate_data_config
from t2v_jax.layers.attention import IMPLEMENTATIONS
from t2v_jax.models import fsq_tokenizer, retnet_video
from t2v_jax.parallel.mesh import mesh_sizes
from t2v_jax.pipelines.flashvideo import FlashVideoPipeline
from t2v_jax.systems.base import Stage, System, restore_stages
from t2v_jax.train.stages import TokenDecoderStage, TokenizerStage

def _decoder_roles(config) -> tuple[str, ...]:
    """The keyframe decoder, and the interpolation decoder when there are frames between keyframes."""
    return ("keyframes", "interpolation") if config.flashvideo.keyframe_stride > 1 else ("keyframes",)


def validate(config, num_devices: int) -> None:
    """Tokenizer, keyframe stride, both decoders, caption budget, sampling and mesh."""
    data = config.data
    validate_data_config(data)
    fsq_tokenizer.validate_config(config.tokenizer, *video_size(data))
    stride = config.flashvideo.keyframe_stride
    try:
        retnet_video.keyframe_numbers(data.num_frames, stride)
    except ValueError as error:
        allowed = [k for k in range(1, data.num_frames) if (data.num_frames - 1) % k == 0] or [1]
        raise ConfigError(f"config.flashvideo.keyframe_stride: {error}; allowed: {allowed}") from None
    sizes = mesh_sizes(config.mesh, num_devices)
    for role in _decoder_roles(config):
        field = f"{role}_model"
        model = config[field]
        one_of(model.mixer, f"{field}.mixer", retnet_video.MIXERS)
        one_of(model.attention, f"{field}.attention", IMPLEMENTATIONS)
        one_of(model.dtype, f"{field}.dtype", DTYPES)
        require(model.num_heads > 0 and model.width % model.num_heads == 0, f"{field}.num_heads",
                f"{model.num_heads} heads do not divide {field}.width={model.width}")
        require((model.width // model.num_heads) % 2 == 0, f"{field}.width",
                f"head dim {model.width}/{model.num_heads} must be even (rotation works on feature pairs)")
        check_heads(model.num_heads, f"{field}.num_heads", sizes)
    check_caption_budget(config)
    sampling = config.sampling
    require(sampling.temperature >= 0, "sampling.temperature", f"must be >= 0, got {sampling.temperature}")
    require(sampling.top_k >= 0, "sampling.top_k", f"must be >= 0 (0 = no top-k), got {sampling.top_k}")
    one_of(sampling.prefill_mode, "sampling.prefill_mode", retnet_video.PREFILL_MODES)
    check_batches(config, sizes, ["train_tokenizer"] + [f"train_{role}" for role in _decoder_roles(config)])


def stages(config) -> tuple[Stage, ...]:
    """The tokenizer, then each decoder on its frozen codes."""
    decoders = tuple(
        Stage(role, lambda config, consumed, role=role: TokenDecoderStage(config, consumed["tokenizer"], role),
              consumes=("tokenizer",))
        for role in _decoder_roles(config))
    return (Stage("tokenizer", lambda config, consumed: TokenizerStage(config)),) + decoders


def load_pipeline(config, checkpoint: str, *, use_ema: bool = True) -> FlashVideoPipeline:
    """The latest checkpoints of every stage of a `scripts/train.py` workdir."""
    roles = _decoder_roles(config)
    params = restore_stages(config, stages(config), checkpoint, roles, use_ema=use_ema)
    return FlashVideoPipeline(config, tokenizer_params=params["tokenizer"], keyframe_params=params["keyframes"],
                              interpolation_params=params.get("interpolation"))


def load_autoencoder(config, checkpoint: str, *, use_ema: bool = True):
    """The trained tokenizer's round trip: video -> FSQ codes -> video."""
    params = restore_stages(config, stages(config), checkpoint, ["tokenizer"], use_ema=use_ema)["tokenizer"]
    tokenizer = fsq_tokenizer.VideoTokenizer(config.tokenizer)

    def round_trip(video_bthwc):
        codes_bthw = tokenizer.apply(params, video_bthwc, method=fsq_tokenizer.VideoTokenizer.encode)
        return tokenizer.apply(params, codes_bthw, method=fsq_tokenizer.VideoTokenizer.decode)

    return jax.jit(round_trip)


def sampling_summary(config) -> str:
    s = config.sampling
    return (f"keyframes every {config.flashvideo.keyframe_stride} frames, temperature {s.temperature}, "
            f"top-k {s.top_k}, guidance {s.guidance_scale}/{s.interpolation_guidance_scale}, "
            f"{s.prefill_mode} prefill + recurrent decoding")


def benchmark(config, options) -> dict:
    if options.vs_diffusers:
        raise ValueError("--vs_diffusers compares Allegro's DiT with diffusers': use an Allegro config")
    return decoding_benchmark(config, options)


SYSTEM = System(
    name="flashvideo",
    description="FSQ video tokenizer + RetNet keyframe and interpolation decoders",
    validate=validate, stages=stages, load_pipeline=load_pipeline, sampling_summary=sampling_summary,
    benchmark=benchmark, load_autoencoder=load_autoencoder)
