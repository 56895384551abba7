"""LaVie (Wang et al. 2023): a cascade of latent UNets (`models/lavie_unet.py`), each trained with its own
text encoder on frozen VAE latents.

Stages: the per-frame VAE; the base UNet, with LaVie's joint image-video training (each video of a batch
brings `train_base.images_per_video` still frames of other videos, captioned `a {colour} {digit}` from
their labels, that the UNet's spatial layers see and its temporal attention does not); when the config
has `interpolation`, the x`frame_rate` interpolation UNet on the same VAE's latents of the clips rendered
at that frame rate; when it has `vsr`, a second per-frame VAE for frames `vsr.scale` x larger and the
super-resolution UNet on its latents. Every stage after the VAEs trains on the clips rendered for it
(`stage.data_config`), so each has exact ground truth.

Sampling: `pipelines/lavie.py` runs the stages in order; the base model alone is a `TextToVideoPipeline`
with the UNet as the denoiser (`config.eval.stage = "base"`).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.checks import check_batches, require, video_size
from t2v_jax.data.bouncing_digits import image_caption
from t2v_jax.diffusion import samplers
from t2v_jax.diffusion.schedules import add_noise, make_schedule
from t2v_jax.models import lavie_unet, video_vae
from t2v_jax.models.lavie_unet import LaVieUNet
from t2v_jax.models.text_encoder import ByteTokenizer, CLIPTokenizer
from t2v_jax.models.text_to_video import TextToVideoModel, latent_shape
from t2v_jax.models.video_vae import VideoVAE, vae_decode, vae_encode
from t2v_jax.parallel import rules as sharding_rules
from t2v_jax.parallel.mesh import mesh_from_config, mesh_sizes
from t2v_jax.pipelines.lavie import LaVieCascadePipeline
from t2v_jax.pipelines.text_to_video import TextToVideoPipeline
from t2v_jax.systems import converted, latent_diffusion
from t2v_jax.systems.base import Stage, System, restore_stages, stage_by_name
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
        loss = self.denoising_loss(
            lambda x_t, t_b: unet.apply(params["dit"], x_t, t_b, *context, num_images=self.num_images),
            x0_bthwc, diffusion_rng)
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
        loss = self.denoising_loss(
            lambda x_t, t_b: unet.apply(params["dit"], jnp.concatenate([x_t, condition_bthwc], -1), t_b, *cond),
            latents_bthwc, diffusion_rng)
        return loss, {"latent_std": jnp.std(latents_bthwc)}


def box_downsample(video_bthwc, factor: int):
    """Mean over factor x factor pixel blocks: how Bouncing Digits' `scale` x rendering relates to the clip
    at its own size (exactly at whole-pixel positions), so the low-resolution input of super-resolution."""
    b, t, h, w, c = video_bthwc.shape
    return video_bthwc.reshape(b, t, h // factor, factor, w // factor, factor, c).mean(axis=(3, 5))


def vsr_stage_config(config):
    """`config` with `text` and `diffusion` replaced by `vsr.text` and `vsr.diffusion` where the
    super-resolution stage names its own (LaVie's VSR encodes prompts with the x4 upscaler's OpenCLIP ViT-H
    and predicts v; its base model uses CLIP ViT-L and predicts eps)."""
    own = [section for section in ("text", "diffusion") if section in config.vsr]
    if not own:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for section in own:
            config[section] = config.vsr[section]
    return config


def vsr_model(config) -> TextToVideoModel:
    """Its own text encoder and the super-resolution UNet (noisy latents + the noise-augmented low-res video
    in; the noise level embedded as a class label)."""
    return TextToVideoModel(vsr_stage_config(config), denoiser=LaVieUNet(config.vsr.unet))


def low_res_schedule(config):
    """The schedule that noise-augments the low-resolution input (Stable Diffusion's x4 upscaler: DDPM,
    scaled-linear betas 1e-4..0.02 over 1000 steps)."""
    s = config.vsr.low_res_schedule
    return make_schedule(s.schedule, s.num_train_steps, s.beta_start, s.beta_end)


class VSRStage(DiTStage):
    """Video super-resolution, LaVie's third stage: denoises the latents (of the VSR VAE) of a random
    `vsr.chunk_frames`-frame window of the clip rendered at `vsr.scale` x the size, given the same window
    box-downsampled back to the base size and noise-augmented at a random level below
    `vsr.max_noise_level` (the level is the UNet's class label); sampling uses `vsr.noise_level`.

    With `vsr.low_res_through_base_vae`, the downsampled window is first coded and decoded by the base
    model's VAE (`base_vae_params`), because in the cascade the low-resolution frames are that VAE's output,
    blurred as box-downsampled frames are not."""

    name = "vsr"

    def __init__(self, config, vae_params, base_vae_params=None):
        super().__init__(vsr_stage_config(config), vae_params, vsr_model(config))
        self.vae = VideoVAE(config.vsr.vae)
        self.data_config = self.data_for(config)
        self.low_res_schedule = low_res_schedule(config)
        self.base_vae = VideoVAE(config.vae)
        self.base_vae_params = base_vae_params
        if config.vsr.low_res_through_base_vae and base_vae_params is None:
            raise ValueError("vsr.low_res_through_base_vae needs the base VAE's params (the `vae` stage)")

    @staticmethod
    def data_for(config):
        """The clips at the interpolated frame rate and `vsr.scale` x the size; `vsr.train_size` of them."""
        data = cascade_data(config, config.interpolation.frame_rate, config.vsr.scale)
        data.train_size = config.vsr.train_size
        return data

    def init_params(self, rng):
        vsr = self.config.vsr
        height, width = (size * vsr.scale // video_vae.spatial_compression(vsr.vae) for size in video_size(self.config.data))
        return self.model.init_params(rng, (vsr.chunk_frames, height, width, vsr.vae.latent_channels + 3),
                                      class_labels_b=jnp.zeros((1,), jnp.int32))

    def prepare_batch(self, batch):
        ids, mask = self.model.tokenizer([str(c) for c in batch["caption"]])
        return {"video": np.asarray(batch["video"], np.float32), "ids": ids, "mask": mask}

    def low_res_input(self, window_bthwc):
        """The clean low-resolution frames ([-1, 1], base size) for a window of large frames."""
        low_res_bthwc = box_downsample(window_bthwc, self.config.vsr.scale)
        if not self.config.vsr.low_res_through_base_vae:
            return low_res_bthwc
        latents_bthwc = vae_encode(self.base_vae, self.base_vae_params, low_res_bthwc, tiled=False)
        decoded_bthwc = vae_decode(self.base_vae, self.base_vae_params, latents_bthwc, tiled=False)
        return jax.lax.stop_gradient(jnp.clip(decoded_bthwc, -1.0, 1.0))

    def loss_fn(self, params, batch, rng):
        window_rng, encode_rng, level_rng, noise_rng, dropout_rng, diffusion_rng = jax.random.split(rng, 6)
        vsr = self.config.vsr
        video_bthwc = batch["video"]
        starts_b = jax.random.randint(window_rng, (video_bthwc.shape[0],), 0,
                                      video_bthwc.shape[1] - vsr.chunk_frames + 1)
        window_bthwc = jax.vmap(lambda v, s: jax.lax.dynamic_slice_in_dim(v, s, vsr.chunk_frames))(video_bthwc,
                                                                                                   starts_b)
        latents_bthwc = jax.lax.stop_gradient(vae_encode(self.vae, self.vae_params, window_bthwc, rng=encode_rng,
                                                         tiled=False))
        levels_b = jax.random.randint(level_rng, (window_bthwc.shape[0],), 0, vsr.max_noise_level)
        low_res = self.low_res_input(window_bthwc)
        low_res = add_noise(self.low_res_schedule, low_res, jax.random.normal(noise_rng, low_res.shape), levels_b)
        cond = self.encode_captions(params, batch["ids"], batch["mask"], dropout_rng)
        unet = self.model.dit
        loss = self.denoising_loss(
            lambda x_t, t_b: unet.apply(params["dit"], jnp.concatenate([x_t, low_res], -1), t_b, *cond,
                                        class_labels_b=levels_b),
            latents_bthwc, diffusion_rng)
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
    if "vsr" in config:
        validate_vsr(config)
        train_fields += ("train_vsr_vae", "train_vsr")
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


def validate_vsr(config) -> None:
    """The super-resolution stage against the interpolation stage it follows and its own VAE."""
    vsr = config.vsr
    require("interpolation" in config, "vsr", "super-resolution follows the interpolation stage: add config.interpolation")
    lavie_unet.validate_config(vsr.unet, "vsr.unet")
    video_vae.validate_config(vsr.vae)
    samplers.validate_config(vsr_stage_config(config), "vsr.sampling")
    require(vsr.num_frames == config.interpolation.num_frames, "vsr.num_frames",
            f"{vsr.num_frames} disagrees with interpolation.num_frames={config.interpolation.num_frames}: "
            "super-resolution upscales the interpolated frames")
    require(vsr.canvas == config.data.canvas * vsr.scale, "vsr.canvas",
            f"{vsr.canvas} disagrees with data.canvas={config.data.canvas}: x{vsr.scale} (vsr.scale) gives "
            f"{config.data.canvas * vsr.scale}")
    require(video_vae.spatial_compression(vsr.vae) == vsr.scale, "vsr.vae.spatial_downsample",
            f"a x{video_vae.spatial_compression(vsr.vae)} VAE disagrees with vsr.scale={vsr.scale}: the latents must "
            "be the size of the low-resolution frames they are concatenated with")
    latent = vsr.vae.latent_channels
    require(vsr.unet.in_channels == latent + 3, "vsr.unet.in_channels",
            f"{vsr.unet.in_channels} disagrees with vsr.vae.latent_channels={latent}: the model takes the noisy "
            f"latent and the RGB low-resolution frames, {latent + 3} channels")
    require(vsr.unet.out_channels == latent, "vsr.unet.out_channels",
            f"{vsr.unet.out_channels} disagrees with vsr.vae.latent_channels={latent}")
    text_field = "vsr.text" if "text" in vsr else "text"
    text_width = vsr_stage_config(config).text.encoder.width
    require(vsr.unet.cross_attention_dim == text_width, "vsr.unet.cross_attention_dim",
            f"{vsr.unet.cross_attention_dim} disagrees with {text_field}.encoder.width={text_width}")
    require(0 <= vsr.noise_level < vsr.max_noise_level <= vsr.unet.num_class_embeds, "vsr.noise_level",
            f"needs 0 <= vsr.noise_level ({vsr.noise_level}) < vsr.max_noise_level ({vsr.max_noise_level}) <= "
            f"vsr.unet.num_class_embeds ({vsr.unet.num_class_embeds})")
    require(isinstance(vsr.low_res_through_base_vae, bool), "vsr.low_res_through_base_vae",
            f"must be True or False, got {vsr.low_res_through_base_vae!r}")
    require(0 < vsr.chunk_frames <= vsr.num_frames, "vsr.chunk_frames",
            f"must be in [1, vsr.num_frames={vsr.num_frames}], got {vsr.chunk_frames}")
    factor = lavie_unet.spatial_compression(vsr.unet)
    height, width = video_size(config.data)
    require(height % factor == 0 and width % factor == 0, "vsr.unet.block_out_channels",
            f"the {height}x{width} latent (the low-resolution frames' size) must divide by {factor}")


def stages(config) -> tuple[Stage, ...]:
    """The VAE, the base model, and the interpolation model when the config has one."""
    graph = (Stage("vae", lambda config, consumed: VAEStage(config)),
             Stage("base", lambda config, consumed: BaseStage(config, consumed["vae"]), consumes=("vae",)))
    if "interpolation" in config:
        graph += (Stage("interpolation", lambda config, consumed: InterpolationStage(config, consumed["vae"]),
                        consumes=("vae",)),)
    if "vsr" in config:
        graph += (Stage("vsr_vae", lambda config, consumed: VAEStage(
                      config, name="vsr_vae", vae_cfg=config.vsr.vae, data_config=VSRStage.data_for(config))),
                  Stage("vsr", lambda config, consumed: VSRStage(config, consumed["vsr_vae"], consumed.get("vae")),
                        consumes=("vsr_vae", "vae") if config.vsr.low_res_through_base_vae else ("vsr_vae",)))
    return graph


def _samples_cascade(config) -> bool:
    return "interpolation" in config and config.get("eval", {}).get("stage", "cascade") != "base"


def _pipeline(config, params, tokenizer, vsr_tokenizer=None):
    """The cascade (base -> interpolation [-> super-resolution]) when the config has those stages and
    `config.eval.stage` is not "base", else the base model's pipeline; `params` holds each stage's
    ({"text_encoder", "dit"} for the UNet stages)."""
    if not _samples_cascade(config):
        return TextToVideoPipeline(config, tokenizer=tokenizer, text_encoder_params=params["base"]["text_encoder"],
                                   dit_params=params["base"]["dit"], vae_params=params["vae"],
                                   model=base_model(config))
    vsr = None
    if "vsr" in config:
        model = vsr_model(config)
        vsr = dict(params=params["vsr"], model=model, vae_params=params["vsr_vae"],
                   low_res_schedule=low_res_schedule(config), tokenizer=vsr_tokenizer or model.tokenizer)
    return LaVieCascadePipeline(config, tokenizer=tokenizer, base_params=params["base"],
                                interpolation_params=params["interpolation"], vae_params=params["vae"],
                                base_model=base_model(config), interpolation_model=interpolation_model(config),
                                keyframe_condition=lambda keyframes: interpolation_condition(
                                    keyframes, config.interpolation.frame_rate), vsr=vsr)


def load_converted(config, checkpoint_dir: str):
    """The pipeline over a folder `scripts/convert_lavie.py` wrote: each component restored straight onto its
    mesh shardings, the prompts tokenised by the folder's CLIP tokenizers. The interpolation model shares the
    base model's text encoder (LaVie's does); the super-resolution model has the x4 upscaler's."""
    cascade = _samples_cascade(config)
    vsr = cascade and "vsr" in config
    required = ("vae", "text_encoder", "base") + (("interpolation",) if cascade else ()) + (
        ("vsr_vae", "vsr_text_encoder", "vsr") if vsr else ())
    manifest = converted.read_manifest(
        checkpoint_dir, f"scripts/convert_lavie.py --sd-dir SD14 --base lavie_base.pt --out {checkpoint_dir}",
        required=required)
    sections = {"vae": ("vae", config.vae), "text_encoder": ("text.encoder", config.text.encoder),
                "base": ("unet", config.unet)}
    if cascade:
        sections["interpolation"] = ("interpolation.unet", config.interpolation.unet)
    if vsr:
        sections.update(vsr_vae=("vsr.vae", config.vsr.vae), vsr=("vsr.unet", config.vsr.unet),
                        vsr_text_encoder=("vsr.text.encoder", vsr_stage_config(config).text.encoder))
    converted.check_against_checkpoint(sections, {name: manifest["configs"][name] for name in required})

    mesh = mesh_from_config(config.mesh)
    rules = sharding_rules.logical_rules(config.mesh.preset)
    unet_dtype = manifest["dtype"]

    def load(component, init_fn, dtype="float32"):
        return converted.load_component(checkpoint_dir, component,
                                        converted.abstract_params(init_fn, mesh, rules, dtype))

    def load_unet_stage(stage, unet_component, text_component):
        return {"text_encoder": load(text_component, lambda rng: stage.init_params(rng)["text_encoder"]),
                "dit": load(unet_component, lambda rng: stage.init_params(rng)["dit"], unet_dtype)}

    params = {"vae": load("vae", VAEStage(config).init_params),
              "base": load_unet_stage(BaseStage(config, None), "base", "text_encoder")}
    if cascade:
        params["interpolation"] = {"text_encoder": params["base"]["text_encoder"],
                                   "dit": load("interpolation", lambda rng: InterpolationStage(config, None)
                                               .init_params(rng)["dit"], unet_dtype)}
    vsr_tokenizer = None
    if vsr:
        vsr_vae_stage = stage_by_name(stages(config), "vsr_vae").build(config, {})
        params["vsr_vae"] = load("vsr_vae", vsr_vae_stage.init_params)
        params["vsr"] = load_unet_stage(VSRStage(config, None), "vsr", "vsr_text_encoder")
        vsr_tokenizer = CLIPTokenizer.from_dir(os.path.join(checkpoint_dir, "vsr_tokenizer"),
                                               vsr_stage_config(config).text.max_length)
    tokenizer = CLIPTokenizer.from_dir(os.path.join(checkpoint_dir, "tokenizer"), config.text.max_length)
    return _pipeline(config, params, tokenizer, vsr_tokenizer)


def load_pipeline(config, checkpoint: str, *, use_ema: bool = True):
    """From a `scripts/train.py` workdir or a folder `scripts/convert_lavie.py` wrote: the cascade when the
    config has its stages and `config.eval.stage` is not "base", else the base model's pipeline."""
    if converted.is_converted(checkpoint):
        return load_converted(config, checkpoint)
    names = ["base"] + (["interpolation"] + (["vsr"] if "vsr" in config else []) if _samples_cascade(config) else [])
    params = restore_stages(config, stages(config), checkpoint, names, use_ema=use_ema)
    return _pipeline(config, params, ByteTokenizer(config.text.max_length))


def sampling_summary(config) -> str:
    s = config.sampling
    summary = f"base: {s.method}, {s.num_steps} steps, guidance {s.guidance_scale}"
    if "interpolation" in config:
        i = config.interpolation.sampling
        summary += f"; interpolation x{config.interpolation.frame_rate}: {i.method}, {i.num_steps} steps, " \
                   f"guidance {i.guidance_scale}"
    if "vsr" in config:
        v = config.vsr.sampling
        summary += f"; super-resolution x{config.vsr.scale}: {v.method}, {v.num_steps} steps, guidance " \
                   f"{v.guidance_scale}, chunks of {config.vsr.chunk_frames} frames"
    return summary


SYSTEM = System(
    name="lavie",
    description="LaVie: base text-to-video UNet with RoPE temporal attention, joint image-video training",
    validate=validate, stages=stages, load_pipeline=load_pipeline, sampling_summary=sampling_summary,
    load_autoencoder=latent_diffusion.load_autoencoder)
