"""FlashVideo text-to-video: keyframes autoregressively, then the frames between them, then pixels.

1. The keyframe decoder continues the caption with every `keyframe_stride`-th frame (a serial-number
   token, then that frame's codes), sampled one token at a time from the recurrent form.
2. The interpolation decoder, prompted with the caption and the two keyframes around each gap,
   generates the frames between them; all gaps of all videos are one batch.
3. The video tokenizer decodes the codes of every frame.

All three run as one `jax.jit` program per batch size on the config's mesh: two prefills, two
`lax.scan` decoding loops and the decoder, with no per-token Python dispatch.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.config import video_size
from t2v_jax.io.video import to_uint8
from t2v_jax.models import retnet_video, vq
from t2v_jax.models.text_encoder import ByteTokenizer
from t2v_jax.models.vq import VideoTokenizer
from t2v_jax.parallel import rules as sharding_rules
from t2v_jax.parallel.mesh import mesh_from_config
from t2v_jax.train.stages import TokenDecoderStage, VQStage
from t2v_jax.train.trainer import restore_params, sharding_context


def check_prompts(prompts, max_length: int):
    """Raises unless every prompt fits the caption budget (bytes plus eos); FlashVideo's caption is
    part of the token sequence, so a longer one cannot be cut silently."""
    for i, prompt in enumerate(prompts):
        size = len(prompt.encode("utf-8"))
        if size > max_length - 1:
            raise ValueError(f"prompt {i} ({prompt!r}) is {size} bytes, over the caption budget: "
                             f"config.text.max_length={max_length} holds {max_length - 1} bytes plus eos")


class FlashVideoPipeline:
    """The video tokenizer and the two decoders of one FlashVideo system, with their params."""

    def __init__(self, config, *, vq_params, keyframe_params, interpolation_params=None):
        self.config = config
        self.stride = config.flashvideo.keyframe_stride
        self.num_frames = config.data.num_frames
        self.keyframes = retnet_video.keyframe_numbers(self.num_frames, self.stride)
        if self.stride > 1 and interpolation_params is None:
            raise ValueError(f"keyframe_stride={self.stride} needs the interpolation decoder's params")
        self.tokenizer = ByteTokenizer(config.text.max_length)
        self.vq = VideoTokenizer(config.vq)
        self.token_grid = vq.token_grid(config.vq, *video_size(config.data))
        self.tokens_per_frame = self.token_grid[0] * self.token_grid[1]
        self.vocab = retnet_video.Vocabulary(vq.codebook_size(config.vq), self.num_frames)
        self.keyframe_decoder = retnet_video.VideoDecoder(config.keyframes_model, self.vocab)
        self.interpolation_decoder = retnet_video.VideoDecoder(config.interpolation_model, self.vocab)
        self.params = dict(vq=vq_params, keyframes=keyframe_params, interpolation=interpolation_params)
        self.mesh = mesh_from_config(config.mesh)
        self.rules = sharding_rules.logical_rules(config.mesh.preset)

    @classmethod
    def from_workdir(cls, config, workdir: str, *, use_ema: bool = True):
        """Loads the latest checkpoints of the three stages written by `scripts/train.py`."""
        def restore(stage, train_cfg):
            return restore_params(os.path.join(workdir, stage.name), stage, train_cfg, mesh_cfg=config.mesh,
                                  use_ema=use_ema)

        vq_params = restore(VQStage(config), config.train_vq)
        keyframe_params = restore(TokenDecoderStage(config, vq_params, "keyframes"), config.train_keyframes)
        interpolation_params = None
        if config.flashvideo.keyframe_stride > 1:
            interpolation_params = restore(TokenDecoderStage(config, vq_params, "interpolation"),
                                           config.train_interpolation)
        return cls(config, vq_params=vq_params, keyframe_params=keyframe_params,
                   interpolation_params=interpolation_params)

    def _decode_tokens(self, decoder, params, prompt_bp, uncond_bp, frames_bf, rng, guidance_scale):
        """Codes (B, F, N) of the frames numbered `frames_bf`, generated after `prompt_bp`."""
        sampling = self.config.sampling
        layout_bn = retnet_video.block_layout(frames_bf, self.tokens_per_frame, self.vocab)
        tokens_bn = retnet_video.generate_tokens(
            decoder, params, prompt_bp, layout_bn, rng, temperature=sampling.temperature, top_k=sampling.top_k,
            guidance_scale=guidance_scale, uncond_prompt_bp=uncond_bp, prefill_mode=sampling.prefill_mode)
        return tokens_bn.reshape(frames_bf.shape + (self.tokens_per_frame + 1,))[..., 1:]

    def _generate(self, params, text_bt, null_text_bt, rng):
        sampling = self.config.sampling
        batch = text_bt.shape[0]
        key_rng, gap_rng = jax.random.split(rng)
        keys_bk = jnp.broadcast_to(jnp.asarray(self.keyframes), (batch, len(self.keyframes)))
        key_codes_bkn = self._decode_tokens(self.keyframe_decoder, params["keyframes"], text_bt, null_text_bt,
                                            keys_bk, key_rng, sampling.guidance_scale)
        codes_bfn = key_codes_bkn
        if self.stride > 1:
            gaps = len(self.keyframes) - 1
            n = self.tokens_per_frame
            left_g = keys_bk[:, :-1].reshape(-1)
            left_codes_gn = key_codes_bkn[:, :-1].reshape(-1, n)
            right_codes_gn = key_codes_bkn[:, 1:].reshape(-1, n)

            def prompt(text):
                return retnet_video.interpolation_prompt(jnp.repeat(text, gaps, axis=0), left_codes_gn,
                                                         right_codes_gn, left_g, self.stride, self.vocab)

            between_gf = retnet_video.gap_frames(left_g, self.stride)
            between_codes = self._decode_tokens(
                self.interpolation_decoder, params["interpolation"], prompt(text_bt), prompt(null_text_bt),
                between_gf, gap_rng, sampling.interpolation_guidance_scale)
            spans_bgfn = jnp.concatenate([key_codes_bkn[:, :-1, None],
                                          between_codes.reshape(batch, gaps, self.stride - 1, n)], axis=2)
            codes_bfn = jnp.concatenate([spans_bgfn.reshape(batch, -1, n), key_codes_bkn[:, -1:]], axis=1)
        codes_bthw = codes_bfn.reshape((batch, self.num_frames) + self.token_grid)
        return self.vq.apply(params["vq"], codes_bthw, method=VideoTokenizer.decode), codes_bfn

    @functools.lru_cache(maxsize=None)
    def _compiled(self, count: int):
        return jax.jit(self._generate, out_shardings=sharding_rules.split_or_replicated(self.mesh, count))

    def generate(self, prompts, *, seed: int = 0) -> np.ndarray:
        """Returns uint8 videos (N, frames, H, W, 3), one per prompt."""
        video_bthwc, _ = self._run(prompts, seed)
        return to_uint8(jax.device_get(video_bthwc))

    def generate_codes(self, prompts, *, seed: int = 0) -> np.ndarray:
        """The same run's tokenizer codes (N, frames, tokens per frame), before decoding."""
        _, codes_bfn = self._run(prompts, seed)
        return np.asarray(jax.device_get(codes_bfn))

    def _run(self, prompts, seed: int):
        prompts = list(prompts)
        check_prompts(prompts, self.config.text.max_length)
        ids_bt, _ = self.tokenizer(prompts)
        null_bt, _ = self.tokenizer([""] * len(prompts))
        batch_sharding = sharding_rules.split_or_replicated(self.mesh, len(prompts))
        text_bt, null_text_bt = jax.device_put((self.vocab.text(ids_bt), self.vocab.text(null_bt)), batch_sharding)
        rng = jax.device_put(jax.random.PRNGKey(seed), sharding_rules.replicated(self.mesh))
        with sharding_context(self.mesh, self.rules):
            return self._compiled(len(prompts))(self.params, text_bt, null_text_bt, rng)
