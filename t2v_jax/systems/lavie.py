"""LaVie (Wang et al. 2023): a cascade of latent UNets, base text-to-video first.

Stages so far: the per-frame VAE, then the base UNet (`models/lavie_unet.py`) and the text encoder
trained together on its frozen latents, with LaVie's joint image-video training: each video of a batch
brings `train_base.images_per_video` still frames of other videos, captioned `a {colour} {digit}` from
their labels, that the UNet's spatial layers see and its temporal attention does not.

Sampling is the shared scanned sampler through `TextToVideoPipeline`, with the UNet as the denoiser.
"""

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.checks import check_batches, require
from t2v_jax.data.bouncing_digits import image_caption
from t2v_jax.diffusion import samplers
from t2v_jax.diffusion.losses import diffusion_loss
from t2v_jax.models import lavie_unet
from t2v_jax.models.lavie_unet import LaVieUNet
from t2v_jax.models.text_encoder import ByteTokenizer
from t2v_jax.models.text_to_video import TextToVideoModel, latent_shape
from t2v_jax.parallel.mesh import mesh_sizes
from t2v_jax.pipelines.lavie import LaVieCascadePipeline
from t2v_jax.pipelines.text_to_video import TextToVideoPipeline
from t2v_jax.systems import latent_diffusion
from t2v_jax.systems.base import Stage, System, restore_stages
from t2v_jax.train.stages import DiTStage, VAEStage


def base_model(config) -> TextToVideoModel:
    """The text encoder and the base UNet, with the config's noise schedule."""
    return TextToVideoModel(config, denoiser=LaVieUNet(config.unet))


class BaseStage(DiTStage):
    """The base UNet's denoising loss, with joint image-video training.

    Image j of video b is a random latent frame of video (b + 1 + j) mod B, with that video's still
    caption; the whole sample (video and its images) shares one noise level, as in LaVie."""

    name = "base"

    def __init__(self, config, vae_params):
        super().__init__(config, vae_params, base_model(config))
        self.num_images = config.train_base.get("images_per_video", 0)

    def prepare_batch(self, batch):
        prepared = super().prepare_batch(batch)
        if self.num_images:
            captions = [image_caption(d, c) for d, c in zip(batch["digit"], batch["colour"])]
            prepared["image_ids"], prepared["image_mask"] = self.model.tokenizer(captions)
        return prepared

    def loss_fn(self, params, batch, rng):
        encode_rng, image_rng, dropout_rng, diffusion_rng = jax.random.split(rng, 4)
        latents_bthwc = self.batch_latents(batch, encode_rng)
        if not self.num_images:
            return self.latent_loss(params, latents_bthwc, batch["ids"], batch["mask"], rng)
        batch_size, frames = latents_bthwc.shape[:2]
        sources_bi = (jnp.arange(batch_size)[:, None] + 1 + jnp.arange(self.num_images)[None]) % batch_size
        frames_bi = jax.random.randint(image_rng, sources_bi.shape, 0, frames)
        x0_bthwc = jnp.concatenate([latents_bthwc, latents_bthwc[sources_bi, frames_bi]], axis=1)
        ids_bnl = jnp.concatenate([batch["ids"][:, None], batch["image_ids"][sources_bi]], axis=1)
        mask_bnl = jnp.concatenate([batch["mask"][:, None], batch["image_mask"][sources_bi]], axis=1)
        captions = ids_bnl.shape[:2]
        context_nld, mask_nl = self.encode_captions(params, ids_bnl.reshape(-1, ids_bnl.shape[-1]),
                                                    mask_bnl.reshape(-1, mask_bnl.shape[-1]), dropout_rng)
        context = (context_nld.reshape(captions + context_nld.shape[1:]), mask_nl.reshape(captions + mask_nl.shape[1:]))
        unet = self.model.dit
        loss, _ = diffusion_loss(
            lambda x_t, t_b: unet.apply(params["dit"], x_t, t_b, *context, num_images=self.num_images),
            self.model.schedule, x0_bthwc, diffusion_rng, prediction_type=self.config.diffusion.prediction_type,
            min_snr_gamma=self.config.diffusion.min_snr_gamma)
        return loss, {"latent_std": jnp.std(latents_bthwc)}


def keyframe_index(num_frames: int, frame_rate: int):
    """For each of the (num_frames - 1) * frame_rate + 1 output frames, the keyframe it is shown with:
    LaVie's (i + 1) // frame_rate (16 -> 61 frames there, 8 -> 29 here)."""
    return (np.arange((num_frames - 1) * frame_rate + 1) + 1) // frame_rate


def interpolation_condition(keyframes_bkhwc, frame_rate: int):
    """(B, K, h, w, c) keyframe latents -> (B, (K - 1) * rate + 1, h, w, c), repeated as LaVie's
    interpolation model sees them."""
    return keyframes_bkhwc[:, keyframe_index(keyframes_bkhwc.shape[1], frame_rate)]


def interpolation_model(config) -> TextToVideoModel:
    """Its own text encoder and the interpolation UNet (noisy latents + repeated keyframe latents in)."""
    return TextToVideoModel(config, denoiser=LaVieUNet(config.interpolation.unet))


def cascade_data(config, frame_rate: int = 1, scale: int = 1):
    """config.data's clips rendered at `frame_rate` times the frame rate and `scale` times the size."""
    data = config.data.copy_and_resolve_references()
    with data.unlocked():
        data.frame_rate, data.scale = frame_rate, scale
    return data


class InterpolationStage(DiTStage):
    """x`interpolation.frame_rate` frames: denoises the latents of the clip rendered at that frame rate,
    given its keyframes' latents (every rate-th frame, which the base model generates) repeated to the
    output frames and concatenated to the noisy latents' channels, as in LaVie."""

    name = "interpolation"

    def __init__(self, config, vae_params):
        super().__init__(config, vae_params, interpolation_model(config))
        self.frame_rate = config.interpolation.frame_rate
        self.data_config = cascade_data(config, self.frame_rate)

    def init_params(self, rng):
        frames, height, width, channels = latent_shape(self.config)
        out_frames = (frames - 1) * self.frame_rate + 1
        return self.model.init_params(rng, (out_frames, height, width, 2 * channels))

    def loss_fn(self, params, batch, rng):
        encode_rng, dropout_rng, diffusion_rng = jax.random.split(rng, 3)
        latents_bthwc = self.batch_latents(batch, encode_rng)
        condition_bthwc = interpolation_condition(latents_bthwc[:, ::self.frame_rate], self.frame_rate)
        cond = self.encode_captions(params, batch["ids"], batch["mask"], dropout_rng)
        unet = self.model.dit
        loss, _ = diffusion_loss(
            lambda x_t, t_b: unet.apply(params["dit"], jnp.concatenate([x_t, condition_bthwc], -1), t_b, *cond),
            self.model.schedule, latents_bthwc, diffusion_rng, prediction_type=self.config.diffusion.prediction_type,
            min_snr_gamma=self.config.diffusion.min_snr_gamma)
        return loss, {"latent_std": jnp.std(latents_bthwc)}


def validate(config, num_devices: int) -> None:
    """The VAE, text encoder and UNet fields, how they fit the latents, sampling and the mesh."""
    latent_diffusion.validate_autoencoder_and_text(config)
    lavie_unet.validate_config(config.unet, "unet")
    unet, vae = config.unet, config.vae
    require(unet.in_channels == vae.latent_channels, "unet.in_channels",
            f"{unet.in_channels} must equal vae.latent_channels={vae.latent_channels}")
    require(unet.out_channels == vae.latent_channels, "unet.out_channels",
            f"{unet.out_channels} must equal vae.latent_channels={vae.latent_channels}")
    require(unet.cross_attention_dim == config.text.encoder.width, "unet.cross_attention_dim",
            f"{unet.cross_attention_dim} must equal text.encoder.width={config.text.encoder.width}")
    latent_diffusion.validate_videos(config)
    _, height, width, _ = latent_shape(config)
    factor = lavie_unet.spatial_compression(unet)
    require(height % factor == 0 and width % factor == 0, "unet.block_out_channels",
            f"{len(unet.block_out_channels)} levels halve the latent {factor - 1} time(s): the {height}x{width} "
            f"latent (data.canvas={config.data.canvas}) must divide by {factor}")
    images = config.train_base.get("images_per_video", 0)
    require(images >= 0, "train_base.images_per_video", f"must be >= 0, got {images}")
    require(not images or config.data.name == "bouncing_digits", "train_base.images_per_video",
            f"still-image captions come from Bouncing Digits' labels; data.name={config.data.name!r} has none")
    require(not images or config.train_base.batch_size > 1, "train_base.images_per_video",
            "images come from the other videos of the batch: train_base.batch_size must be at least 2")
    samplers.validate_config(config)
    train_fields = ("train_vae", "train_base")
    if "interpolation" in config:
        validate_interpolation(config)
        train_fields += ("train_interpolation",)
    check_batches(config, mesh_sizes(config.mesh, num_devices), train_fields)


def validate_interpolation(config) -> None:
    """The interpolation stage against the base stage it follows."""
    interpolation = config.interpolation
    lavie_unet.validate_config(interpolation.unet, "interpolation.unet")
    samplers.validate_config(config, "interpolation.sampling")
    rate = interpolation.frame_rate
    require(isinstance(rate, int) and rate >= 2, "interpolation.frame_rate", f"must be an integer >= 2, got {rate}")
    latent = config.vae.latent_channels
    expected = (config.data.num_frames - 1) * rate + 1
    require(interpolation.num_frames == expected, "interpolation.num_frames",
            f"{interpolation.num_frames} disagrees with data.num_frames={config.data.num_frames}: x{rate} "
            f"interpolation (interpolation.frame_rate) of {config.data.num_frames} keyframes gives {expected}")
    require(interpolation.unet.in_channels == 2 * latent, "interpolation.unet.in_channels",
            f"{interpolation.unet.in_channels} disagrees with vae.latent_channels={latent}: the model takes the noisy "
            f"latent and the keyframe latents, {2 * latent} channels")
    require(interpolation.unet.out_channels == latent, "interpolation.unet.out_channels",
            f"{interpolation.unet.out_channels} disagrees with vae.latent_channels={latent}")
    require(interpolation.unet.cross_attention_dim == config.text.encoder.width,
            "interpolation.unet.cross_attention_dim",
            f"{interpolation.unet.cross_attention_dim} disagrees with text.encoder.width={config.text.encoder.width}")
    _, height, width, _ = latent_shape(config)
    factor = lavie_unet.spatial_compression(interpolation.unet)
    require(height % factor == 0 and width % factor == 0, "interpolation.unet.block_out_channels",
            f"the {height}x{width} latent (data.canvas={config.data.canvas}) must divide by {factor}")


def stages(config) -> tuple[Stage, ...]:
    """The VAE, the base model, and the interpolation model when the config has one."""
    graph = (Stage("vae", lambda config, consumed: VAEStage(config)),
             Stage("base", lambda config, consumed: BaseStage(config, consumed["vae"]), consumes=("vae",)))
    if "interpolation" in config:
        graph += (Stage("interpolation", lambda config, consumed: InterpolationStage(config, consumed["vae"]),
                        consumes=("vae",)),)
    return graph


def load_pipeline(config, checkpoint: str, *, use_ema: bool = True):
    """From a `scripts/train.py` workdir: the cascade (base -> interpolation) when the config has an
    interpolation stage and `config.eval.stage` is not "base", else the base model's pipeline."""
    if "interpolation" in config and config.get("eval", {}).get("stage", "cascade") != "base":
        params = restore_stages(config, stages(config), checkpoint, ["base", "interpolation"], use_ema=use_ema)
        return LaVieCascadePipeline(config, tokenizer=ByteTokenizer(config.text.max_length), base_params=params["base"],
                                    interpolation_params=params["interpolation"], vae_params=params["vae"],
                                    base_model=base_model(config), interpolation_model=interpolation_model(config),
                                    keyframe_condition=lambda keyframes: interpolation_condition(
                                        keyframes, config.interpolation.frame_rate))
    params = restore_stages(config, stages(config), checkpoint, ["base"], use_ema=use_ema)
    return TextToVideoPipeline(config, tokenizer=ByteTokenizer(config.text.max_length),
                               text_encoder_params=params["base"]["text_encoder"], dit_params=params["base"]["dit"],
                               vae_params=params["vae"], model=base_model(config))


def sampling_summary(config) -> str:
    s = config.sampling
    summary = f"base: {s.method}, {s.num_steps} steps, guidance {s.guidance_scale}"
    if "interpolation" in config:
        i = config.interpolation.sampling
        summary += f"; interpolation x{config.interpolation.frame_rate}: {i.method}, {i.num_steps} steps, " \
                   f"guidance {i.guidance_scale}"
    return summary


SYSTEM = System(
    name="lavie",
    description="LaVie: base text-to-video UNet with RoPE temporal attention, joint image-video training",
    validate=validate, stages=stages, load_pipeline=load_pipeline, sampling_summary=sampling_summary,
    load_autoencoder=latent_diffusion.load_autoencoder)
