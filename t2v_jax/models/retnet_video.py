"""FlashVideo's decoder (Lei et al. 2023): a RetNet over [text tokens; per frame a serial-number token
then that frame's video tokens], with a softmax-attention twin as the baseline.

One vocabulary holds the three kinds of token (`Vocabulary`): the video tokenizer's codes first (so
that a code id is also its logit index), then one serial-number token per frame, then the byte-level
text tokens. The serial-number token tells the model which frame comes next, so that the same
relative positions mean the same thing in every frame. The head predicts codes only: serial tokens
and text are never sampled, they are forced by the layout.

`mixer` picks the sequence mixer of every block, everything else being equal (width, depth, tokens,
feed-forward): ``retention`` (`MultiScaleRetention`: parallel form for training, chunkwise prefill
and O(1)-per-token recurrent decoding from a fixed-size state) or ``attention`` (causal softmax
attention with RoPE; a `KVCache` for decoding, whose per-token cost grows with the sequence).

`generate_tokens` is the whole sampling loop in one compiled program: a prefill of the prompt, then
a `lax.scan` of single-token steps with temperature, top-k and classifier-free guidance on the
logits.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2v_jax.layers.attention import Attention, init_kv_cache
from t2v_jax.layers.dense import dense
from t2v_jax.layers.feed_forward import FeedForward
from t2v_jax.layers.norms import RMSNorm
from t2v_jax.layers.retention import MultiScaleRetention
from t2v_jax.layers.rope import rope_frequencies
from t2v_jax.models.text_encoder import ByteTokenizer

MIXERS = ("retention", "attention")
PREFILL_MODES = ("parallel", "chunkwise")
FORCE_NONE = -1  # in a layout: this position is sampled, not forced


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        width=128, num_layers=4, num_heads=4, mlp_ratio=4, mixer="retention", value_factor=2,
        chunk_size=64, attention="xla", dtype="float32"))


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Token id layout: [codes | frame serial numbers | text bytes]."""

    codebook_size: int
    max_frames: int

    @property
    def size(self) -> int:
        return self.codebook_size + self.max_frames + ByteTokenizer.vocab_size

    def serial(self, frame_index):
        """The serial-number token of frame `frame_index` (array or int)."""
        return self.codebook_size + frame_index

    def text(self, ids_bl):
        """Byte-tokenizer ids as tokens of this vocabulary."""
        return self.codebook_size + self.max_frames + ids_bl


def frame_blocks(codes_bfn, frames_bf, vocab: Vocabulary):
    """(B, F, N) codes of the frames numbered `frames_bf` -> (B, F*(N+1)) tokens, each frame's serial
    token followed by its codes."""
    serial_bf1 = vocab.serial(frames_bf)[..., None].astype(jnp.int32)
    return jnp.concatenate([serial_bf1, codes_bfn.astype(jnp.int32)], axis=-1).reshape(codes_bfn.shape[0], -1)


def block_layout(frames_bf, tokens_per_frame: int, vocab: Vocabulary):
    """The generation layout of whole frames: serial tokens forced, codes sampled (FORCE_NONE)."""
    sampled_bfn = jnp.full(frames_bf.shape + (tokens_per_frame,), FORCE_NONE, jnp.int32)
    return frame_blocks(sampled_bfn, frames_bf, vocab)


def keyframe_numbers(num_frames: int, stride: int) -> np.ndarray:
    """Frames generated autoregressively: 0, stride, 2 stride, ..., num_frames - 1."""
    if stride < 1 or (num_frames - 1) % stride:
        raise ValueError(f"{num_frames} frames do not split into keyframes every {stride} frames: "
                         f"num_frames - 1 must be a multiple of the keyframe stride")
    return np.arange(0, num_frames, stride)


def interpolation_prompt(text_tokens_bt, left_codes_bn, right_codes_bn, left_frame_b, stride: int,
                         vocab: Vocabulary):
    """The interpolation model's prompt: the text, then the two keyframes around the gap (serial
    numbers and codes), so that the frames between are generated knowing both ends."""
    frames_b2 = jnp.stack([left_frame_b, left_frame_b + stride], axis=1)
    codes_b2n = jnp.stack([left_codes_bn, right_codes_bn], axis=1)
    return jnp.concatenate([text_tokens_bt, frame_blocks(codes_b2n, frames_b2, vocab)], axis=1)


def gap_frames(left_frame_b, stride: int):
    """(B, stride - 1) numbers of the frames strictly between a keyframe and the next."""
    return left_frame_b[:, None] + jnp.arange(1, stride)[None]


def sequence_lengths(text_length: int, num_frames: int, stride: int, tokens_per_frame: int) -> dict:
    """Whole training sequences of the two decoders: the keyframe model's caption + keyframes, the
    interpolation model's caption + two keyframes + the stride - 1 frames between them."""
    block = tokens_per_frame + 1
    return {"keyframes": text_length + len(keyframe_numbers(num_frames, stride)) * block,
            "interpolation": text_length + (stride + 1) * block}


def code_targets(tokens_bl, prompt_length: int, vocab: Vocabulary):
    """Next-token targets and their loss mask: position i predicts token i+1, and only codes after
    the prompt count (serial tokens are forced at generation, never predicted)."""
    targets_bl = tokens_bl[:, 1:]
    positions_l = jnp.arange(1, tokens_bl.shape[1])
    mask_bl = (targets_bl < vocab.codebook_size) & (positions_l >= prompt_length)[None]
    return jnp.where(mask_bl, targets_bl, 0), mask_bl


def next_token_loss(logits_blc, targets_bl, mask_bl):
    """Mean cross-entropy over the masked positions, and the accuracy of the argmax there."""
    log_probs_blc = jax.nn.log_softmax(logits_blc.astype(jnp.float32))
    nll_bl = -jnp.take_along_axis(log_probs_blc, targets_bl[..., None], axis=-1)[..., 0]
    weight_bl = mask_bl.astype(jnp.float32)
    count = jnp.maximum(weight_bl.sum(), 1.0)
    accuracy = ((jnp.argmax(logits_blc, -1) == targets_bl) * weight_bl).sum() / count
    return (nll_bl * weight_bl).sum() / count, accuracy


class DecoderBlock(nn.Module):
    """Pre-norm block: x + mixer(norm(x)), then x + ffn(norm(x)). `state` is the mixer's
    `RetentionState` or `KVCache`."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x_bld, state, mode: str):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        h_bld = RMSNorm(name="mixer_norm")(x_bld)
        if cfg.mixer == "retention":
            h_bld, state = MultiScaleRetention(cfg.num_heads, value_factor=cfg.value_factor,
                                               chunk_size=cfg.chunk_size, dtype=dtype, name="retention")(
                h_bld, state, mode=mode)
        else:
            head_dim = cfg.width // cfg.num_heads
            positions_l = (0 if state is None else state.pos) + jnp.arange(x_bld.shape[1])
            cos_ld, sin_ld = rope_frequencies(positions_l, head_dim)
            attend = Attention(cfg.num_heads, head_dim, implementation=cfg.attention, use_bias=False,
                               causal=True, chunk_size=cfg.chunk_size, dtype=dtype, name="attention")
            if state is None:
                h_bld = attend(h_bld, rope=(cos_ld, sin_ld, 1))
            else:
                h_bld, state = attend(h_bld, rope=(cos_ld, sin_ld, 1), cache=state)
        x_bld = x_bld + h_bld
        x_bld = x_bld + FeedForward(cfg.mlp_ratio * cfg.width, dtype=dtype, kernel_init=nn.initializers.xavier_uniform(),
                                    name="ffn")(RMSNorm(name="ffn_norm")(x_bld))
        return nn.with_logical_constraint(x_bld, ("batch", "length", "embed")), state


class VideoDecoder(nn.Module):
    """`__call__(tokens_bl, state, mode) -> (code_logits_blc, state)`.

    Training: `mode="parallel"`, `state=None`. Generation: a prefill (`"chunkwise"` or `"parallel"`,
    `state=None`, `cache_length` = the whole sequence's length for the attention mixer), then
    `"recurrent"` one token at a time with the returned state. `state` is a tuple with one
    `RetentionState` or `KVCache` per block.
    """

    cfg: ml_collections.ConfigDict
    vocab: Vocabulary

    def initial_state(self, batch: int, cache_length: int):
        cfg = self.cfg
        head_dim = cfg.width // cfg.num_heads
        if cfg.mixer == "retention":
            return tuple(MultiScaleRetention(cfg.num_heads, value_factor=cfg.value_factor).initial_state(
                batch, cfg.width) for _ in range(cfg.num_layers))
        return tuple(init_kv_cache(batch, cache_length, cfg.num_heads, head_dim, jnp.dtype(cfg.dtype))
                     for _ in range(cfg.num_layers))

    @nn.compact
    def __call__(self, tokens_bl, state=None, *, mode: str = "parallel", cache_length: int | None = None):
        cfg = self.cfg
        batch, length = tokens_bl.shape
        if mode == "recurrent" and (state is None or length != 1):
            raise ValueError("recurrent decoding takes one token per call and the state of a prefill")
        if mode != "recurrent" and state is not None:
            raise ValueError(f"a {mode} pass starts from an empty state (it is the training pass or the prefill)")
        if cfg.mixer == "attention" and cache_length is not None and state is None:
            state = self.initial_state(batch, cache_length)
        x_bld = nn.Embed(self.vocab.size, cfg.width, dtype=jnp.dtype(cfg.dtype), name="embed",
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                     ("vocab", "embed")))(tokens_bl)
        layer_states = []
        for i in range(cfg.num_layers):
            x_bld, layer_state = DecoderBlock(cfg, name=f"block_{i}")(
                x_bld, None if state is None else state[i], mode)
            layer_states.append(layer_state)
        x_bld = RMSNorm(name="final_norm")(x_bld)
        logits_blc = dense(self.vocab.codebook_size, ("embed", "vocab"), kernel_init=nn.initializers.normal(0.02),
                           use_bias=False, dtype=jnp.dtype(cfg.dtype), name="head")(x_bld)
        new_state = None if layer_states[0] is None else tuple(layer_states)
        return logits_blc.astype(jnp.float32), new_state


def guided_logits(logits_2bc, guidance_scale: float):
    """Classifier-free guidance on logits: the batch holds [conditional; unconditional] halves."""
    cond_bc, uncond_bc = jnp.split(logits_2bc, 2)
    return uncond_bc + guidance_scale * (cond_bc - uncond_bc)


def sample_logits(rng, logits_bc, *, temperature: float, top_k: int):
    """Temperature then top-k sampling (temperature 0 = argmax)."""
    if temperature == 0:
        return jnp.argmax(logits_bc, -1).astype(jnp.int32)
    logits_bc = logits_bc / temperature
    if 0 < top_k < logits_bc.shape[-1]:
        kth_b1 = jax.lax.top_k(logits_bc, top_k)[0][:, -1:]
        logits_bc = jnp.where(logits_bc < kth_b1, -jnp.inf, logits_bc)
    return jax.random.categorical(rng, logits_bc).astype(jnp.int32)


def prefill(decoder: VideoDecoder, params, prompt_bp, cache_length: int, mode: str = "chunkwise"):
    """Runs the prompt through the decoder: (logits of its last position (B, C), decoding state).
    `cache_length` is the whole sequence's length, the size of an attention mixer's KV cache."""
    if mode not in PREFILL_MODES:
        raise ValueError(f"prefill mode {mode!r} is unknown; choose one of {list(PREFILL_MODES)}")
    logits_bpc, state = decoder.apply(params, prompt_bp, mode=mode, cache_length=cache_length)
    return logits_bpc[:, -1], state


def decode(decoder: VideoDecoder, params, state, last_logits_bc, layout_bn, rng, *, temperature: float = 1.0,
           top_k: int = 0, guidance_scale: float | None = None):
    """A `lax.scan` of one-token recurrent steps after a prefill: positions where the layout holds a
    token id take it (serial numbers), FORCE_NONE positions are sampled from the code logits.

    With `guidance_scale` the state and logits hold [conditional; unconditional] halves: the logits are
    guided before sampling and the chosen token is fed to both halves.
    """
    def step(carry, inputs):
        state, last_logits_bc = carry
        forced_b, step_rng = inputs
        if guidance_scale is not None:
            last_logits_bc = guided_logits(last_logits_bc, guidance_scale)
        sampled_b = sample_logits(step_rng, last_logits_bc, temperature=temperature, top_k=top_k)
        token_b = jnp.where(forced_b == FORCE_NONE, sampled_b, forced_b)
        fed_b = token_b if guidance_scale is None else jnp.concatenate([token_b, token_b])
        logits_b1c, state = decoder.apply(params, fed_b[:, None], state, mode="recurrent")
        return (state, logits_b1c[:, 0]), token_b

    step_rngs = jax.random.split(rng, layout_bn.shape[1])
    _, tokens_nb = jax.lax.scan(step, (state, last_logits_bc), (layout_bn.T, step_rngs))
    return tokens_nb.T


def generate_tokens(decoder: VideoDecoder, params, prompt_bp, layout_bn, rng, *, temperature: float = 1.0,
                    top_k: int = 0, guidance_scale: float = 1.0, uncond_prompt_bp=None,
                    prefill_mode: str = "chunkwise"):
    """Continues `prompt_bp` by `layout_bn.shape[1]` tokens (see `decode`): the prefill and every
    recurrent step are one program when this runs under `jax.jit` (decoder, temperature, top_k,
    guidance_scale and prefill_mode static).

    With `guidance_scale != 1` and `uncond_prompt_bp` (same shape as the prompt, e.g. the empty
    caption), both prompts run as one batch and the logits are guided before sampling.
    """
    guided = guidance_scale != 1.0 and uncond_prompt_bp is not None
    prompts = jnp.concatenate([prompt_bp, uncond_prompt_bp]) if guided else prompt_bp
    last_logits_bc, state = prefill(decoder, params, prompts, prompt_bp.shape[1] + layout_bn.shape[1], prefill_mode)
    return decode(decoder, params, state, last_logits_bc, layout_bn, rng, temperature=temperature, top_k=top_k,
                  guidance_scale=guidance_scale if guided else None)
