"""FlashVideo text-to-video: keyframes autoregressively, then the frames between them, then pixels.

1. The keyframe decoder continues the caption with every `keyframe_stride`-th frame (a serial-number
   token, then that frame's codes), sampled one token at a time from the recurrent form.
2. The interpolation decoder, prompted with the caption and the two keyframes around each gap,
   generates the frames between them; all gaps of all videos are one batch.
3. The video tokenizer decodes the codes of every frame.

All three run as one `jax.jit` program per batch size on the config's mesh: two prefills, two
`lax.scan` decoding loops and the decoder, with no per-token Python dispatch.
"""

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.checks import video_size
from t2v_jax.io.video import to_uint8
from t2v_jax.models import fsq_tokenizer, retnet_video
from t2v_jax.models.fsq_tokenizer import VideoTokenizer
from t2v_jax.models.text_encoder import ByteTokenizer
from t2v_jax.pipelines.base import Pipeline


class FlashVideoPipeline(Pipeline):
    """The video tokenizer and the two decoders of one FlashVideo system, with their params."""

    def __init__(self, config, *, tokenizer_params, keyframe_params, interpolation_params=None):
        super().__init__(config, ByteTokenizer(config.text.max_length))
        self.stride = config.flashvideo.keyframe_stride
        self.num_frames = config.data.num_frames
        self.keyframes = retnet_video.keyframe_numbers(self.num_frames, self.stride)
        if self.stride > 1 and interpolation_params is None:
            raise ValueError(f"keyframe_stride={self.stride} needs the interpolation decoder's params")
        self.video_tokenizer = VideoTokenizer(config.tokenizer)
        self.token_grid = fsq_tokenizer.token_grid(config.tokenizer, *video_size(config.data))
        self.tokens_per_frame = self.token_grid[0] * self.token_grid[1]
        self.vocab = retnet_video.Vocabulary(fsq_tokenizer.codebook_size(config.tokenizer), self.num_frames)
        self.keyframe_decoder = retnet_video.VideoDecoder(config.keyframes_model, self.vocab)
        self.interpolation_decoder = retnet_video.VideoDecoder(config.interpolation_model, self.vocab)
        self.params = dict(tokenizer=tokenizer_params, keyframes=keyframe_params, interpolation=interpolation_params)

    def program(self, phase: str):
        return self._generate

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
        return self.video_tokenizer.apply(params["tokenizer"], codes_bthw, method=VideoTokenizer.decode), codes_bfn

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
        ids_bt, _ = self.tokenize(prompts)
        null_bt, _ = self.tokenizer([""] * len(prompts))
        return self.run("generate", self.params, (self.vocab.text(ids_bt), self.vocab.text(null_bt)),
                        (jax.random.PRNGKey(seed),), count=len(prompts))
