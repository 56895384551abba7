"""Training stages: the latent system's VAE then DiT + text encoder; FlashVideo's tokenizer then decoders.

Each stage is what `trainer.fit` needs: `init_params(rng)`, a pure `loss_fn(params, batch,
rng)` and a host-side `prepare_batch`; a stage may also offer `training_source(source, directory)`,
the data source it trains on in place of the split's videos. The DiT stage encodes videos with the
frozen VAE inside the jitted step, so any dataset works as it is, or, with
`train_dit.cache_latents`, encodes the training split once (`train/latent_cache.py`).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.checks import video_size
from t2v_jax.data.bouncing_digits import rendered_geometry
from t2v_jax.diffusion.losses import diffusion_loss
from t2v_jax.models import fsq_tokenizer, retnet_video
from t2v_jax.models.text_encoder import ByteTokenizer
from t2v_jax.models.text_to_video import TextToVideoModel, latent_shape
from t2v_jax.models.video_vae import VideoVAE, kl_divergence, latents_from_moments, vae_encode, vae_moments
from t2v_jax.train.latent_cache import CachedLatentSource, encode_source


def drop_captions(rng, rate: float, ids_bl, null_ids_l, mask_bl=None, null_mask_l=None):
    """Caption dropout for classifier-free guidance: each row becomes the empty caption with
    probability `rate`, so the model also learns the unconditional prediction. Returns (ids, mask);
    the mask is None when none is given."""
    drop_b = jax.random.bernoulli(rng, rate, (ids_bl.shape[0],))
    ids_bl = jnp.where(drop_b[:, None], null_ids_l[None], ids_bl)
    if mask_bl is not None:
        mask_bl = jnp.where(drop_b[:, None], null_mask_l[None], mask_bl)
    return ids_bl, mask_bl


class VAEStage:
    """Reconstruction + KL; no perceptual or adversarial terms, so it trains on a CPU.

    A cascade's second VAE (LaVie's super-resolution stage codes larger frames) is this stage under
    another `name` (trained with config.train_<name>), with its own `vae_cfg` and `data_config`."""

    name = "vae"

    def __init__(self, config, *, name: str = "vae", vae_cfg=None, data_config=None):
        self.config = config
        self.name = name
        self.train_cfg = config[f"train_{name}"]
        self.vae = VideoVAE(config.vae if vae_cfg is None else vae_cfg)
        if data_config is not None:
            self.data_config = data_config
        data = config.data if data_config is None else data_config
        frames, _ = rendered_geometry(data.num_frames, data.canvas, data.get("frame_rate", 1))
        scale = data.get("scale", 1)
        self.video_shape = (1, frames, *(size * scale for size in video_size(data)), 3)

    def init_params(self, rng):
        sample_rng, param_rng = jax.random.split(rng)
        return self.vae.init({"params": param_rng, "sample": sample_rng}, jnp.zeros(self.video_shape))

    def prepare_batch(self, batch):
        return {"video": np.asarray(batch["video"], np.float32)}

    def loss_fn(self, params, batch, rng):
        video_bthwc = batch["video"]
        clip_frames = self.train_cfg.get("frames_per_video", 0)
        if clip_frames and clip_frames < video_bthwc.shape[1]:
            # Every layer is convolutional in time, so a short clip of consecutive frames at a random
            # offset trains the same weights; more videos per step beat more frames of each (their
            # frames are one glyph shifted by a pixel), as for FlashVideo's tokenizer.
            clip_rng, rng = jax.random.split(rng)
            starts_b = jax.random.randint(clip_rng, (video_bthwc.shape[0],), 0, video_bthwc.shape[1] - clip_frames + 1)
            video_bthwc = jax.vmap(lambda v, s: jax.lax.dynamic_slice_in_dim(v, s, clip_frames))(video_bthwc, starts_b)
        recon, mean, logvar = self.vae.apply(params, video_bthwc, rngs={"sample": rng})
        reconstruction = jnp.mean(jnp.square(recon - video_bthwc))
        kl = jnp.mean(kl_divergence(mean, logvar)) / math.prod(mean.shape[1:])  # per latent element
        loss = reconstruction + self.train_cfg.kl_weight * kl
        return loss, {"reconstruction": reconstruction, "kl": kl}


class DiTStage:
    """Denoising loss on latents of the frozen VAE, with caption dropout for guidance."""

    name = "dit"

    def __init__(self, config, vae_params, model=None):
        """`model`: a `TextToVideoModel` with a system's own denoiser (default: the DiT's)."""
        self.config = config
        self.model = TextToVideoModel(config) if model is None else model
        self.vae = VideoVAE(config.vae)
        self.vae_params = vae_params
        self.latent_shape = latent_shape(config)
        null_ids, null_mask = self.model.tokenizer([""])
        self.null_ids_l, self.null_mask_l = null_ids[0], null_mask[0]

    def init_params(self, rng):
        return self.model.init_params(rng, self.latent_shape)

    def training_source(self, source, directory, progress=True):
        """With train_<stage>.cache_latents, the split's posterior moments encoded once (else `source`)."""
        train_cfg = self.config[f"train_{self.name}"]
        if not train_cfg.get("cache_latents", False):
            return source
        encode = jax.jit(lambda video_bthwc: vae_moments(self.vae, self.vae_params, video_bthwc, tiled=False))
        moments = encode_source(source, encode, batch_size=train_cfg.batch_size,
                                directory=directory, progress=progress)
        return CachedLatentSource(source, moments)

    def prepare_batch(self, batch):
        ids, mask = self.model.tokenizer([str(c) for c in batch["caption"]])
        key = "latent_moments" if "latent_moments" in batch else "video"
        return {key: np.asarray(batch[key], np.float32), "ids": ids, "mask": mask}

    def batch_latents(self, batch, rng):
        """A posterior sample of the batch's latents: from cached moments, or the frozen VAE."""
        if "latent_moments" in batch:
            moments_b2thwc = batch["latent_moments"]
            return latents_from_moments(self.vae, moments_b2thwc[:, 0], moments_b2thwc[:, 1], rng=rng)
        return jax.lax.stop_gradient(vae_encode(self.vae, self.vae_params, batch["video"], rng=rng, tiled=False))

    def loss_fn(self, params, batch, rng):
        encode_rng, rng = jax.random.split(rng)
        return self.latent_loss(params, self.batch_latents(batch, encode_rng), batch["ids"], batch["mask"], rng)

    def encode_captions(self, params, ids_bl, mask_bl, rng):
        """(embeddings_bld, mask_bl) after caption dropout, which swaps in the empty caption."""
        ids_bl, mask_bl = drop_captions(rng, self.config.text.caption_dropout, ids_bl, self.null_ids_l,
                                        mask_bl, self.null_mask_l)
        return self.model.encode_text(params, ids_bl, mask_bl), mask_bl

    def denoising_loss(self, denoise_fn, x0_bthwc, rng):
        """`diffusion_loss` of `denoise_fn(x_t, t_b)` on the model's schedule with the config's target and
        weighting: what every denoiser trained on these latents minimises, whatever else it is given."""
        loss, _ = diffusion_loss(denoise_fn, self.model.schedule, x0_bthwc, rng,
                                 prediction_type=self.config.diffusion.prediction_type,
                                 min_snr_gamma=self.config.diffusion.min_snr_gamma)
        return loss

    def latent_loss(self, params, latents_bthwc, ids_bl, mask_bl, rng):
        """Denoising loss on given latents, with caption dropout."""
        dropout_rng, diffusion_rng = jax.random.split(rng)
        cond = self.encode_captions(params, ids_bl, mask_bl, dropout_rng)
        loss = self.denoising_loss(lambda x_t, t_b: self.model.denoise(params, x_t, t_b, cond), latents_bthwc,
                                   diffusion_rng)
        return loss, {"latent_std": jnp.std(latents_bthwc)}


class TokenizerStage:
    """FlashVideo's tokenizer: FSQ autoencoder trained on reconstruction alone.

    FSQ has no codebook or commitment loss (the grid is fixed and every code gets gradients through
    the straight-through rounding), so the loss is MSE plus `train_tokenizer.l1_weight` times L1. MSE is
    the default because PSNR, what the tokenizer is judged on, is MSE. L1 is offered for data
    that is mostly flat background: MSE's gradient vanishes as small background errors shrink and L1's
    does not, which can clean up haze around sparse content. On Bouncing Digits 16x16 it bought
    nothing (1600 steps: PSNR 27.6 vs 27.9 dB, judge digit accuracy 93.4% either way), so
    configs/flashvideo.py leaves it at 0. No perceptual or adversarial terms, so it trains on a CPU.
    `train_tokenizer.frames_per_video` (0 = all) trains on that many random frames of each video.
    Metrics: psnr (dB, on [-1, 1]), codebook_usage (fraction of codes present in the batch) and
    perplexity (exp entropy of the batch's code histogram).
    """

    name = "tokenizer"

    def __init__(self, config):
        self.config = config
        height, width = video_size(config.data)
        fsq_tokenizer.validate_config(config.tokenizer, height, width)
        self.tokenizer = fsq_tokenizer.VideoTokenizer(config.tokenizer)
        self.codebook_size = fsq_tokenizer.codebook_size(config.tokenizer)
        self.video_shape = (1, config.data.num_frames, height, width, 3)

    def init_params(self, rng):
        return self.tokenizer.init(rng, jnp.zeros(self.video_shape))

    def prepare_batch(self, batch):
        return {"video": np.asarray(batch["video"], np.float32)}

    def loss_fn(self, params, batch, rng):
        video_bthwc = batch["video"]
        k = self.config.train_tokenizer.get("frames_per_video", 0)
        if k and k < video_bthwc.shape[1]:
            # Frames are tokenized independently and a video's frames are one glyph shifted by a pixel each, so
            # k random frames per video carry nearly all of the batch's information at k/T of the compute.
            order_bt = jnp.argsort(jax.random.uniform(rng, video_bthwc.shape[:2]), axis=1)[:, :k]
            video_bthwc = jnp.take_along_axis(video_bthwc, order_bt[:, :, None, None, None], axis=1)
        recon_bthwc, indices_bthw = self.tokenizer.apply(params, video_bthwc)
        error = recon_bthwc - video_bthwc
        mse = jnp.mean(jnp.square(error))
        l1 = jnp.mean(jnp.abs(error))
        loss = mse + self.config.train_tokenizer.get("l1_weight", 0.0) * l1
        usage, perplexity = fsq_tokenizer.codebook_usage(indices_bthw, self.codebook_size)
        psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))
        return loss, {"mse": mse, "l1": l1, "psnr": psnr, "codebook_usage": usage, "perplexity": perplexity}


class TokenDecoderStage:
    """FlashVideo's decoders on the frozen tokenizer's codes: next-code cross-entropy after a prompt.

    role "keyframes": prompt = the caption, targets = every keyframe (serial token + codes).
    role "interpolation": prompt = the caption and the two keyframes around a random gap, targets =
    the frames between them. Caption dropout swaps in the empty caption, for guidance.
    """

    def __init__(self, config, tokenizer_params, role: str):
        if role not in ("keyframes", "interpolation"):
            raise ValueError(f"unknown decoder role {role!r}; allowed: ['keyframes', 'interpolation']")
        self.name = role
        self.config = config
        self.stride = config.flashvideo.keyframe_stride
        self.tokenizer = ByteTokenizer(config.text.max_length)
        self.video_tokenizer = fsq_tokenizer.VideoTokenizer(config.tokenizer)
        self.tokenizer_params = tokenizer_params
        self.vocab = retnet_video.Vocabulary(fsq_tokenizer.codebook_size(config.tokenizer), config.data.num_frames)
        self.decoder = retnet_video.VideoDecoder(config[f"{role}_model"], self.vocab)
        self.keyframes = retnet_video.keyframe_numbers(config.data.num_frames, self.stride)
        null_ids, _ = self.tokenizer([""])
        self.null_ids_l = null_ids[0]
        height, width = video_size(config.data)
        self.sequence_length = retnet_video.sequence_lengths(
            config.text.max_length, config.data.num_frames, self.stride,
            fsq_tokenizer.tokens_per_frame(config.tokenizer, height, width))[role]

    def init_params(self, rng):
        return self.decoder.init(rng, jnp.zeros((1, self.sequence_length - 1), jnp.int32))

    def prepare_batch(self, batch):
        ids, _ = self.tokenizer([str(c) for c in batch["caption"]])
        return {"video": np.asarray(batch["video"], np.float32), "ids": ids}

    def training_frames(self, batch: int, rng):
        """(frame numbers (B, F) in sequence order, how many of them belong to the prompt).
        Keyframes: all of them, none in the prompt. Interpolation: a random gap's two keyframes
        (the prompt), then the frames between them."""
        if self.name == "keyframes":
            return jnp.broadcast_to(jnp.asarray(self.keyframes), (batch, len(self.keyframes))), 0
        left_b = self.stride * jax.random.randint(rng, (batch,), 0, len(self.keyframes) - 1)
        ends_b2 = jnp.stack([left_b, left_b + self.stride], axis=1)
        return jnp.concatenate([ends_b2, retnet_video.gap_frames(left_b, self.stride)], axis=1), 2

    def loss_fn(self, params, batch, rng):
        dropout_rng, gap_rng = jax.random.split(rng)
        video_bthwc = batch["video"]
        frames_bf, prompt_frames = self.training_frames(video_bthwc.shape[0], gap_rng)
        # Only the frames in the sequence are tokenized (frames are tokenized independently).
        video_bfhwc = jnp.take_along_axis(video_bthwc, frames_bf[:, :, None, None, None], axis=1)
        codes_bfhw = jax.lax.stop_gradient(self.video_tokenizer.apply(self.tokenizer_params, video_bfhwc, method=fsq_tokenizer.VideoTokenizer.encode))
        codes_bfn = codes_bfhw.reshape(codes_bfhw.shape[:2] + (-1,))
        ids_bt, _ = drop_captions(dropout_rng, self.config.text.caption_dropout, batch["ids"], self.null_ids_l)
        text_bt = self.vocab.text(ids_bt)
        tokens_bl = jnp.concatenate([text_bt, retnet_video.frame_blocks(codes_bfn, frames_bf, self.vocab)], axis=1)
        prompt_length = text_bt.shape[1] + prompt_frames * (codes_bfn.shape[2] + 1)
        logits_blc, _ = self.decoder.apply(params, tokens_bl[:, :-1])
        targets_bl, mask_bl = retnet_video.code_targets(tokens_bl, prompt_length, self.vocab)
        loss, accuracy = retnet_video.next_token_loss(logits_blc, targets_bl, mask_bl)
        return loss, {"token_accuracy": accuracy}
