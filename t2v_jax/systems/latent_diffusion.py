"""The latent text-to-video system: a VideoVAE, then a VideoDiT with a byte-level T5-style text encoder
trained together on the VAE's frozen latents, sampled by a scanned diffusion sampler.

Allegro is this system at full size with converted weights; LaVie, MALT and SynCoS build on it.
"""

import jax

from t2v_jax.benchmarks.dit import dit_benchmark
from t2v_jax.checks import DTYPES, check_batches, check_heads, one_of, require, video_size
from t2v_jax.data.loader import check_caption_budget, validate_data_config
from t2v_jax.diffusion import samplers
from t2v_jax.layers.attention import check_implementation
from t2v_jax.models import video_dit, video_vae
from t2v_jax.models.text_encoder import ByteTokenizer
from t2v_jax.models.text_to_video import TEXT_ENCODERS, dit_token_grid, latent_shape, num_dit_tokens
from t2v_jax.models.video_vae import VideoVAE, vae_decode, vae_encode
from t2v_jax.parallel.mesh import mesh_sizes
from t2v_jax.pipelines.text_to_video import TextToVideoPipeline
from t2v_jax.systems.base import Stage, System, restore_stages
from t2v_jax.train.stages import DiTStage, VAEStage

def validate_model(config) -> None:
    """The VAE, text encoder and DiT fields and how they fit together."""
    dit, vae = config.dit, config.vae
    require(dit.num_heads > 0, "dit.num_heads", f"must be positive, got {dit.num_heads}")
    require(dit.width % dit.num_heads == 0, "dit.num_heads",
            f"{dit.num_heads} heads do not divide dit.width={dit.width}; allowed: divisors of "
            f"{dit.width} such as {[h for h in range(1, 33) if dit.width % h == 0]}")
    head_dim = dit.width // dit.num_heads
    require(head_dim % 6 == 0, "dit.width",
            f"head dim {dit.width}/{dit.num_heads}={head_dim} must be divisible by 6: 3D RoPE "
            "splits it in three rotate-half chunks")
    check_implementation(dit.attention, "dit.attention")
    one_of(dit.remat_policy, "dit.remat_policy", video_dit.REMAT_POLICIES)
    unroll = dit.get("scan_unroll", 1)
    require(isinstance(unroll, int) and unroll >= 1, "dit.scan_unroll",
            f"{unroll!r} must be a positive integer (dit.num_layers={dit.num_layers} or more unrolls every layer)")
    one_of(dit.get("absolute_position", "none"), "dit.absolute_position", video_dit.ABSOLUTE_POSITIONS)
    one_of(dit.dtype, "dit.dtype", DTYPES)
    require(dit.in_channels == vae.latent_channels, "dit.in_channels",
            f"{dit.in_channels} must equal vae.latent_channels={vae.latent_channels}")
    require(dit.caption_channels == config.text.encoder.width, "dit.caption_channels",
            f"{dit.caption_channels} must equal text.encoder.width={config.text.encoder.width}")
    validate_autoencoder_and_text(config)


def validate_autoencoder_and_text(config) -> None:
    """The VAE's blocks and the text encoder: what every latent system here checks, whatever its denoiser."""
    vae = config.vae
    for field in ("temporal_downsample", "spatial_downsample"):
        require(len(vae[field]) == len(vae.block_out_channels), f"vae.{field}",
                f"needs one entry per block ({len(vae.block_out_channels)}), got {len(vae[field])}")
    require(vae.get("temporal_layers", True) or video_vae.temporal_compression(vae) == 1, "vae.temporal_layers",
            f"False leaves no layer that can halve time; set vae.temporal_downsample="
            f"{(False,) * len(vae.block_out_channels)}")
    for channels in vae.block_out_channels:
        require(channels % vae.norm_num_groups == 0, "vae.block_out_channels",
                f"{channels} is not divisible by vae.norm_num_groups={vae.norm_num_groups}")
    one_of(config.text.get("kind", "t5"), "text.kind", TEXT_ENCODERS)
    text = config.text.encoder
    if config.text.get("kind", "t5") == "clip":
        require(text.num_heads > 0 and text.width % text.num_heads == 0, "text.encoder.num_heads",
                f"{text.num_heads} heads do not divide text.encoder.width={text.width}")
        require(config.text.max_length <= text.max_length, "text.max_length",
                f"{config.text.max_length} tokens exceed the encoder's {text.max_length} positions "
                "(text.encoder.max_length)")
    else:
        require(text.num_heads * text.head_dim > 0, "text.encoder.num_heads", "must be positive")


def validate_videos(config) -> None:
    """The dataset, and frame counts and sizes the VAE divides."""
    data = config.data
    validate_data_config(data)
    check_caption_budget(config)
    t_down = video_vae.temporal_compression(config.vae)
    s_down = video_vae.spatial_compression(config.vae)
    require(data.num_frames > 0 and data.num_frames % t_down == 0, "data.num_frames",
            f"{data.num_frames} frames cannot be encoded by a VAE with x{t_down} temporal compression; "
            f"allowed: multiples of {t_down}")
    for field, size in zip(("data.canvas", "data.width"), video_size(data)):
        require(size > 0 and size % s_down == 0, field,
                f"{size} px is not divisible by the VAE's x{s_down} spatial compression")


def validate_data(config) -> None:
    """The dataset, and frame counts and sizes the VAE and the DiT's patches divide."""
    validate_videos(config)
    data = config.data
    frames, height, width, _ = latent_shape(config)
    pt, ph, pw = config.dit.patch_thw
    for name, size, patch in (("frames", frames, pt), ("height", height, ph), ("width", width, pw)):
        require(size % patch == 0, "dit.patch_thw",
                f"patch {tuple(config.dit.patch_thw)} does not divide the latent {name} {size} "
                f"(latent grid {(frames, height, width)} from data.num_frames={data.num_frames}, "
                f"data.canvas={data.canvas})")


def validate_parallel(config, num_devices: int, train_fields=("train_vae", "train_dit")) -> None:
    """Mesh against the device count, and the DiT and batches against the mesh, naming the numbers."""
    sizes = mesh_sizes(config.mesh, num_devices)
    check_heads(config.dit.num_heads, "dit.num_heads", sizes)
    tokens = num_dit_tokens(config)
    require(tokens % sizes["context"] == 0, "mesh.shape.context",
            f"the DiT's {tokens} video tokens (grid {dit_token_grid(config)}) do not split over a context "
            f"axis of {sizes['context']}")
    check_batches(config, sizes, train_fields)


def validate(config, num_devices: int) -> None:
    validate_model(config)
    validate_data(config)
    samplers.validate_config(config)
    validate_parallel(config, num_devices)


def stages(config) -> tuple[Stage, ...]:
    """The VAE, then the DiT + text encoder on its frozen latents."""
    del config
    return (Stage("vae", lambda config, consumed: VAEStage(config)),
            Stage("dit", lambda config, consumed: DiTStage(config, consumed["vae"]), consumes=("vae",)))


def pipeline_from_params(config, params: dict) -> TextToVideoPipeline:
    """The pipeline over restored stage params {"vae": ..., "dit": {"text_encoder", "dit"}}."""
    return TextToVideoPipeline(config, tokenizer=ByteTokenizer(config.text.max_length),
                               text_encoder_params=params["dit"]["text_encoder"], dit_params=params["dit"]["dit"],
                               vae_params=params["vae"])


def load_pipeline(config, checkpoint: str, *, use_ema: bool = True) -> TextToVideoPipeline:
    """The latest VAE and DiT checkpoints of a `scripts/train.py` workdir."""
    return pipeline_from_params(config, restore_stages(config, stages(config), checkpoint, ["dit"], use_ema=use_ema))


def load_autoencoder(config, checkpoint: str, *, use_ema: bool = True):
    """The trained VAE's round trip: posterior mean, then the (tiled) decoder, as the pipeline decodes."""
    params = restore_stages(config, stages(config), checkpoint, ["vae"], use_ema=use_ema)["vae"]
    vae = VideoVAE(config.vae)
    return jax.jit(lambda video_bthwc: vae_decode(vae, params, vae_encode(vae, params, video_bthwc, tiled=False)))


def sampling_summary(config) -> str:
    s = config.sampling
    return f"{s.method}, {s.num_steps} steps, guidance {s.guidance_scale}"


def denoiser_stage(config) -> DiTStage:
    """The DiT stage without VAE params: its latent loss and sampling need none."""
    return DiTStage(config, vae_params=None)


def benchmark(config, options) -> dict:
    if options.vs_diffusers:
        raise ValueError("--vs_diffusers compares Allegro's DiT with diffusers': use an Allegro config "
                         "(configs/allegro_*.py)")
    return dit_benchmark(config, options, denoiser_stage)


SYSTEM = System(
    name="latent_diffusion",
    description="VideoVAE + VideoDiT with a byte-level text encoder, trained from scratch",
    validate=validate, stages=stages, load_pipeline=load_pipeline, sampling_summary=sampling_summary,
    benchmark=benchmark, denoiser_stage=denoiser_stage, load_autoencoder=load_autoencoder)
