"""MALT Diffusion (Yu et al. 2025): any-length video as segments denoised one after another, each attending
to a fixed-size memory that recurrent attention writes from the segments before it (`models/malt.py`).

Stages: the per-frame VAE on clips of one segment (`data.num_frames` frames), then the MALT DiT and its text
encoder on long videos of `malt.train_segments` segments, rendered on the fly (`LongVideoSource`), each
segment with its own caption. Training unrolls the segments in a `lax.scan` that carries the memory:
  1. the segment's denoising loss, given the memory so far and its caption;
  2. the next memory from the segment's clean latents noised to a level drawn per example below
     `malt.memory_noise_max` (memory noise augmentation: at inference the memory is written from generated
     segments, which are never clean);
  3. every `malt.truncation` segments the memory's gradient is stopped (truncated backpropagation through
     the segments, Transformer-XL's rule), so a step's cost does not grow with how far back it looks.
The loss is the mean over segments. `dit.memory_tokens = 0` is the no-memory baseline: each segment on its
caption alone, the same code otherwise.

Sampling: `pipelines/malt.py`, one compiled scan over segments.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.benchmarks.long_video import long_video_benchmark
from t2v_jax.checks import require
from t2v_jax.data.bouncing_digits import LongVideoSource
from t2v_jax.diffusion import samplers
from t2v_jax.diffusion.schedules import add_noise
from t2v_jax.models.malt import MALTDiT
from t2v_jax.models.text_encoder import ByteTokenizer
from t2v_jax.models.text_to_video import TextToVideoModel
from t2v_jax.parallel.mesh import mesh_sizes
from t2v_jax.pipelines.malt import MALTPipeline
from t2v_jax.systems import latent_diffusion
from t2v_jax.systems.base import Stage, System, restore_stages
from t2v_jax.train.checkpoint import load_params, save_params
from t2v_jax.train.stages import DiTStage, VAEStage


def malt_model(config) -> TextToVideoModel:
    return TextToVideoModel(config, denoiser=MALTDiT(config.dit))


class MALTStage(DiTStage):
    """The MALT DiT and text encoder on long videos: the segment scan of the module docstring."""

    name = "malt"

    def __init__(self, config, vae_params):
        super().__init__(config, vae_params, malt_model(config))

    def training_source(self, source, directory, progress=True):
        """Long videos rendered on the fly in place of the split's clips; with train_malt.cache_latents, their
        latents encoded once (as the DiT stage caches the clips')."""
        del source
        data, malt = self.config.data, self.config.malt
        long_videos = LongVideoSource(malt.train_size, "train", seed=data.seed, num_segments=malt.train_segments,
                                      segment_frames=data.num_frames, canvas=data.canvas)
        return super().training_source(long_videos, directory, progress)

    def prepare_batch(self, batch):
        captions = [caption for text in batch["caption"] for caption in str(text).split("\n")]
        segments = len(captions) // len(batch["caption"])
        ids, mask = self.model.tokenizer(captions)
        key = "latent_moments" if "latent_moments" in batch else "video"
        return {key: np.asarray(batch[key], np.float32), "ids": ids.reshape(-1, segments, ids.shape[-1]),
                "mask": mask.reshape(-1, segments, mask.shape[-1])}

    def loss_fn(self, params, batch, rng):
        malt = self.config.malt
        encode_rng, dropout_rng, segments_rng = jax.random.split(rng, 3)
        latents_bthwc = self.batch_latents(batch, encode_rng)
        batch_size, segments = batch["ids"].shape[:2]
        frames = latents_bthwc.shape[1] // segments
        x0_sbthwc = jnp.moveaxis(latents_bthwc.reshape((batch_size, segments, frames) + latents_bthwc.shape[2:]), 1, 0)
        context_nld, mask_nl = self.encode_captions(params, batch["ids"].reshape(batch_size * segments, -1),
                                                    batch["mask"].reshape(batch_size * segments, -1), dropout_rng)
        context_sbld = jnp.moveaxis(context_nld.reshape((batch_size, segments) + context_nld.shape[1:]), 1, 0)
        mask_sbl = jnp.moveaxis(mask_nl.reshape(batch_size, segments, -1), 1, 0)
        dit = self.model.dit

        def segment_step(memory_lbmd, inputs):
            x0_bthwc, context_bld, mask_bl, index, rng = inputs
            loss_rng, level_rng, noise_rng = jax.random.split(rng, 3)
            loss = self.denoising_loss(
                lambda x_t, t_b: dit.apply(params["dit"], x_t, t_b, context_bld, mask_bl, memory_lbmd),
                x0_bthwc, loss_rng)
            level_b = (jax.random.randint(level_rng, (batch_size,), 0, malt.memory_noise_max)
                       if malt.memory_noise_max else jnp.zeros((batch_size,), jnp.int32))
            noised = add_noise(self.model.schedule, x0_bthwc, jax.random.normal(noise_rng, x0_bthwc.shape), level_b)
            memory_lbmd_next = dit.apply(params["dit"], noised, level_b.astype(jnp.float32), context_bld, mask_bl,
                                         memory_lbmd, method=MALTDiT.update_memory)
            truncate = (index + 1) % malt.truncation == 0
            memory_lbmd_next = jnp.where(truncate, jax.lax.stop_gradient(memory_lbmd_next), memory_lbmd_next)
            return memory_lbmd_next, loss

        memory_lbmd = dit.apply(params["dit"], batch_size, method=MALTDiT.initial_memory)
        _, losses_s = jax.lax.scan(segment_step, memory_lbmd, (x0_sbthwc, context_sbld, mask_sbl,
                                                               jnp.arange(segments), jax.random.split(segments_rng,
                                                                                                      segments)))
        return losses_s.mean(), {"loss_first_segment": losses_s[0], "loss_last_segment": losses_s[-1]}


def save_state(directory: str, state: dict) -> None:
    """Writes a generation state (memory, next segment, seed) as one orbax checkpoint."""
    save_params(directory, {"memory": np.asarray(state["memory"]), "next_segment": np.int64(state["next_segment"]),
                            "seed": np.int64(state["seed"])})


def load_state(directory: str) -> dict:
    restored = load_params(directory)
    return {"memory": jnp.asarray(restored["memory"]), "next_segment": int(restored["next_segment"]),
            "seed": int(restored["seed"])}


def validate(config, num_devices: int) -> None:
    """The latent system's checks with MALT's training fields, and the memory's."""
    latent_diffusion.validate_model(config)
    latent_diffusion.validate_data(config)
    samplers.validate_config(config)
    train_fields = ("train_vae", "train_malt")
    latent_diffusion.validate_parallel(config, num_devices, train_fields)
    malt, dit = config.malt, config.dit
    memory_tokens = dit.get("memory_tokens", 0)
    require(isinstance(memory_tokens, int) and memory_tokens >= 0, "dit.memory_tokens",
            f"must be an integer >= 0 (0: no memory), got {memory_tokens!r}")
    tensor = mesh_sizes(config.mesh, num_devices)["tensor"]
    require(memory_tokens % tensor == 0, "dit.memory_tokens",
            f"{memory_tokens} memory tokens do not split over the tensor axis of {tensor} (mesh.shape.tensor)")
    for field in ("train_segments", "truncation", "num_segments", "train_size"):
        value = malt[field]
        require(isinstance(value, int) and value >= 1, f"malt.{field}", f"must be an integer >= 1, got {value!r}")
    steps = config.diffusion.num_train_steps
    require(0 <= malt.memory_noise_max <= steps, "malt.memory_noise_max",
            f"must be in [0, diffusion.num_train_steps={steps}] (0: no memory noise augmentation), got "
            f"{malt.memory_noise_max}")
    require(0 <= malt.memory_noise_level < steps, "malt.memory_noise_level",
            f"must be in [0, {steps}), got {malt.memory_noise_level}")
    require(config.data.name == "bouncing_digits", "data.name",
            f"MALT trains on long Bouncing Digits videos rendered on the fly; {config.data.name!r} has none")


def stages(config) -> tuple[Stage, ...]:
    del config
    return (Stage("vae", lambda config, consumed: VAEStage(config)),
            Stage("malt", lambda config, consumed: MALTStage(config, consumed["vae"]), consumes=("vae",)))


def pipeline_from_params(config, malt_params, vae_params) -> MALTPipeline:
    """The pipeline over the MALT stage's params ({"text_encoder", "dit"}) and the VAE's."""
    return MALTPipeline(config, tokenizer=ByteTokenizer(config.text.max_length),
                        text_encoder_params=malt_params["text_encoder"], dit_params=malt_params["dit"],
                        vae_params=vae_params, model=malt_model(config))


def load_pipeline(config, checkpoint: str, *, use_ema: bool = True) -> MALTPipeline:
    params = restore_stages(config, stages(config), checkpoint, ["malt"], use_ema=use_ema)
    return pipeline_from_params(config, params["malt"], params["vae"])


def benchmark(config, options) -> dict:
    """Memory and time of generation at options.segments segments, random weights (`benchmarks/long_video.py`)."""
    rng_vae, rng_malt = jax.random.split(jax.random.key(config.seed))
    vae_params = nn.unbox(VAEStage(config).init_params(rng_vae))
    params = nn.unbox(MALTStage(config, vae_params).init_params(rng_malt))
    return long_video_benchmark(pipeline_from_params(config, params, vae_params), options.segments,
                                repeats=options.repeats)


def sampling_summary(config) -> str:
    s, m = config.sampling, config.malt
    return (f"{s.method}, {s.num_steps} steps, guidance {s.guidance_scale}; {m.num_segments} segments, "
            f"{config.dit.get('memory_tokens', 0)} memory tokens per layer written at noise level "
            f"{m.memory_noise_level}")


SYSTEM = System(
    name="malt",
    description="MALT: any-length video, segments denoised one after another against a recurrent memory",
    validate=validate, stages=stages, load_pipeline=load_pipeline, sampling_summary=sampling_summary,
    benchmark=benchmark, load_autoencoder=latent_diffusion.load_autoencoder)
