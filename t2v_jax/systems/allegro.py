"""Allegro (Zhou et al. 2024) from its official weights: configs for the three released checkpoints and
loading a folder written by `scripts/convert_allegro.py`. The model is the latent text-to-video system
at full size, so validation, stages and the DiT benchmark are that system's; `--vs_diffusers` times
one denoising step against diffusers' AllegroTransformer3DModel.

Full-size plan (88 x 720p: 22 x 90 x 160 latents, 79,200 tokens per video): the DiT runs in bf16
(params and activations) with `attention="auto"` (cuDNN flash attention on NVIDIA GPUs, splash on
TPU); T5 v1.1 XXL is loaded for the prompts, run once and freed before the 100-step Euler-ancestral
loop starts; the VAE stays float32 and decodes in tiles, as Allegro's own code does.
"""

import os

import ml_collections

from t2v_jax.benchmarks.dit import dit_benchmark
from t2v_jax.benchmarks.vs_diffusers import vs_diffusers_benchmark
from t2v_jax.diffusion.samplers import sampling_config
from t2v_jax.models import text_encoder, video_dit, video_vae
from t2v_jax.models.text_encoder import T5Tokenizer
from t2v_jax.models.text_to_video import TextToVideoModel, latent_shape
from t2v_jax.parallel import rules as sharding_rules
from t2v_jax.parallel.mesh import mesh_from_config
from t2v_jax.pipelines.allegro import NEGATIVE_PROMPT, POSITIVE_TEMPLATE, AllegroPipeline
from t2v_jax.systems import converted, latent_diffusion
from t2v_jax.systems.base import System
from t2v_jax.train.stages import VAEStage

# (frames, height, width) each released checkpoint generates; 360p is 368 so that the VAE (x8) and
# the patch (x2) divide it.
RESOLUTIONS = {"88x720p": (88, 720, 1280), "40x720p": (40, 720, 1280), "40x360p": (40, 368, 640)}


def allegro_config(resolution: str = "88x720p") -> ml_collections.ConfigDict:
    """The whole system for one released checkpoint: sampling as Allegro ships it (Euler ancestral,
    100 steps, CFG 7.5, the official template and negative prompt), plus the training sections that
    `scripts/train.py` and `scripts/benchmark.py` read."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"Allegro resolution {resolution!r} is unknown; choose one of {sorted(RESOLUTIONS)}")
    frames, height, width = RESOLUTIONS[resolution]
    config = ml_collections.ConfigDict()
    config.system = "allegro"
    config.seed = 0
    config.data = ml_collections.ConfigDict(dict(
        name="video_folder", dir="data_cache", num_frames=frames, canvas=height, train_size=0,
        test_size=0, seed=0, folder="", captions_file="captions.tsv", worker_count=4))
    config.data.width = width
    config.vae = video_vae.allegro_config()
    config.text = ml_collections.ConfigDict(dict(max_length=512, caption_dropout=0.1,
                                                 encoder=text_encoder.t5_v1_1_xxl_config()))
    config.dit = video_dit.allegro_config(resolution)
    config.dit.param_dtype = "bfloat16"
    config.diffusion = ml_collections.ConfigDict(dict(
        schedule="linear", num_train_steps=1000, beta_start=1e-4, beta_end=0.02, prediction_type="eps",
        min_snr_gamma=None))
    config.sampling = sampling_config(method="euler_ancestral", num_steps=100, guidance_scale=7.5,
                                      prompt_template=POSITIVE_TEMPLATE, negative_prompt=NEGATIVE_PROMPT, fps=15)
    train = dict(num_steps=100_000, batch_size=8, learning_rate=1e-4, warmup_steps=1000, final_lr_fraction=1.0,
                 grad_clip=1.0, adam_b2=0.999, weight_decay=0.0, ema_decay=0.9999, log_every=50,
                 checkpoint_every=1000, keep_checkpoints=3)
    config.train_vae = ml_collections.ConfigDict(dict(train, kl_weight=1e-6))
    config.train_dit = ml_collections.ConfigDict(train)
    config.mesh = ml_collections.ConfigDict(dict(shape=dict(data=1, fsdp=-1, context=1, tensor=1), preset="fsdp"))
    config.eval = ml_collections.ConfigDict(dict(num_prompts=0, seed=0))
    return config


def check_against_checkpoint(config, checkpoint_configs: dict) -> None:
    """The config must describe the models in the checkpoint; names every field that does not."""
    converted.check_against_checkpoint({"transformer": ("dit", config.dit), "vae": ("vae", config.vae),
                                        "text_encoder": ("text.encoder", config.text.encoder)}, checkpoint_configs)


def load_converted(config, checkpoint_dir: str) -> AllegroPipeline:
    """AllegroPipeline over a converted folder: params restored straight onto their mesh shardings,
    T5 loaded per batch of prompts and freed after encoding."""
    manifest = converted.read_manifest(
        checkpoint_dir, f"scripts/convert_allegro.py --diffusers-dir DIR --out {checkpoint_dir}",
        required=("transformer", "vae", "text_encoder"))
    check_against_checkpoint(config, manifest["configs"])

    mesh = mesh_from_config(config.mesh)
    rules = sharding_rules.logical_rules(config.mesh.preset)
    model = TextToVideoModel(config)
    latents = latent_shape(config)

    def init_text(rng):
        return model.init_params(rng, latents)["text_encoder"]

    def init_dit(rng):
        return model.init_params(rng, latents)["dit"]

    text_abstract = converted.abstract_params(init_text, mesh, rules, config.text.encoder.param_dtype)
    dit_abstract = converted.abstract_params(init_dit, mesh, rules, config.dit.param_dtype)
    vae_abstract = converted.abstract_params(VAEStage(config).init_params, mesh, rules, "float32")
    tokenizer = T5Tokenizer.from_dir(os.path.join(checkpoint_dir, "tokenizer"),
                                     max_length=config.text.max_length)
    return AllegroPipeline(config, tokenizer=tokenizer,
                           text_encoder_params=lambda: converted.load_component(checkpoint_dir, "text_encoder",
                                                                                text_abstract),
                           dit_params=converted.load_component(checkpoint_dir, "transformer", dit_abstract),
                           vae_params=converted.load_component(checkpoint_dir, "vae", vae_abstract))


def load_pipeline(config, checkpoint: str, *, use_ema: bool = True):
    """A converted folder (it has a manifest), else a `scripts/train.py` workdir of this architecture."""
    if converted.is_converted(checkpoint):
        return load_converted(config, checkpoint)
    return latent_diffusion.load_pipeline(config, checkpoint, use_ema=use_ema)


def benchmark(config, options) -> dict:
    if options.vs_diffusers:
        return vs_diffusers_benchmark(config, options)
    return dit_benchmark(config, options, latent_diffusion.denoiser_stage)


SYSTEM = System(
    name="allegro",
    description="Allegro's VideoVAE + VideoDiT + T5 v1.1 XXL, from converted official weights",
    validate=latent_diffusion.validate, stages=latent_diffusion.stages, load_pipeline=load_pipeline,
    sampling_summary=latent_diffusion.sampling_summary, benchmark=benchmark,
    denoiser_stage=latent_diffusion.denoiser_stage, load_autoencoder=latent_diffusion.load_autoencoder)
