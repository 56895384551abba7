"""MALT Diffusion (Yu et al. 2025): the video DiT as a segment-level denoiser that also writes a memory.

A long video is a sequence of segments of `segment_frames` latent frames. The memory is a fixed number of
tokens per layer, (layers, B, M, width). Denoising a segment, every layer's self-attention attends to that
layer's memory as well as to the segment's tokens (`VideoDiT(memory_lbmd=...)`). When a segment is done,
the same transformer reads its (noised) clean latents and every layer's memory attends to [memory; that
layer's segment tokens] to become the next memory: recurrent attention, a Transformer-XL memory compressed
to a fixed size, so the cost of a segment does not grow with the video's length.

The paper has no public code; the decisions here and why:
- The same transformer encodes the memory (the paper's design): the pass that writes the memory is the
  DiT on the segment's latents at the memory-noise timestep, its per-layer input tokens read by a small
  per-layer update (attention + MLP, post-normalised). Sharing the DiT means the memory reads the features
  the denoiser already learned; the update adds 1/6 of a block's parameters per layer.
- The update's output is layer-normalised: over 64 segments an un-normalised residual memory would grow,
  and the memory's scale would drift out of what training saw after a few segments.
- Memory tokens carry no position and join the keys and values only (queries are the segment's tokens).
- Time positions restart at 0 in each segment rather than continuing: RoPE is relative, so with
  position-free memory an offset would change nothing in attention, and the absolute sinusoids the CPU
  configs add would reach frame positions (512 at 64 segments) that training never saw. Where a segment
  sits in the story is the memory's to say.
- The memory starts from learned tokens (`memory_init`), the same for every video.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from t2v_jax.layers.attention import Attention
from t2v_jax.layers.feed_forward import FeedForward
from t2v_jax.layers.norms import LayerNorm
from t2v_jax.models.video_dit import VideoDiT, head_dim

MEMORY_AXES = ("batch", "memory", "embed")


class MemoryUpdate(nn.Module):
    """One layer's recurrent attention: the memory attends to [memory; the segment's tokens], then an MLP;
    the result, layer-normalised, is the next memory."""

    config: Any

    @nn.compact
    def __call__(self, memory_bmd, segment_bld):
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        memory_bmd = memory_bmd.astype(dtype)
        query_bmd = LayerNorm(name="norm_memory")(memory_bmd)
        keys_bsd = jnp.concatenate([query_bmd, LayerNorm(name="norm_segment")(segment_bld.astype(dtype))], axis=1)
        h_bmd = memory_bmd + Attention(cfg.num_heads, head_dim(cfg), implementation=cfg.attention, dtype=dtype,
                                       param_dtype=param_dtype, name="attn")(query_bmd, keys_bsd)
        h_bmd = h_bmd + FeedForward(int(cfg.width * cfg.mlp_ratio), dtype=dtype, param_dtype=param_dtype,
                                    name="ff")(LayerNorm(name="norm_ff")(h_bmd))
        return nn.with_logical_constraint(LayerNorm(name="norm_out")(h_bmd), MEMORY_AXES)


class MALTDiT(nn.Module):
    """`__call__` denoises one segment given the memory: (x_bthwc, t_b, context_bld, context_mask_bl,
    memory_lbmd) -> prediction; `update_memory` with the segment's (noised) clean latents and their
    timestep -> the next memory; `initial_memory(batch)` -> the learned first memory. config: the DiT's
    fields plus `memory_tokens` (M; 0 gives a DiT without memory, each segment on its caption alone)."""

    config: Any

    def setup(self):
        cfg = self.config
        self.dit = VideoDiT(cfg)
        if cfg.memory_tokens:
            self.memory_init = self.param(
                "memory_init", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("layers", "memory", "embed")),
                (cfg.num_layers, cfg.memory_tokens, cfg.width), jnp.dtype(cfg.param_dtype))
            self.memory_update = nn.vmap(
                MemoryUpdate, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=(0, 0),
                out_axes=0, axis_size=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})(cfg)

    def __call__(self, x_bthwc, t_b, context_bld, context_mask_bl, memory_lbmd, *, deterministic: bool = True):
        return self.dit(x_bthwc, t_b, context_bld, context_mask_bl, deterministic=deterministic,
                        memory_lbmd=memory_lbmd if self.config.memory_tokens else None)

    def initial_memory(self, batch: int):
        """(layers, B, M, width): the learned first memory; (layers, B, 0, width) without memory."""
        cfg = self.config
        if not cfg.memory_tokens:
            return jnp.zeros((cfg.num_layers, batch, 0, cfg.width), jnp.dtype(cfg.dtype))
        return jnp.broadcast_to(self.memory_init[:, None].astype(jnp.dtype(cfg.dtype)),
                                (cfg.num_layers, batch, cfg.memory_tokens, cfg.width))

    def update_memory(self, x_bthwc, t_b, context_bld, context_mask_bl, memory_lbmd):
        """The next memory from a finished segment's latents (noised to timestep t_b) and its caption."""
        if not self.config.memory_tokens:
            return memory_lbmd
        hidden_lbld = self.dit(x_bthwc, t_b, context_bld, context_mask_bl, memory_lbmd=memory_lbmd,
                               return_hidden=True)
        return self.memory_update(memory_lbmd, hidden_lbld)

    def init_all(self, x_bthwc, t_b, context_bld, context_mask_bl):
        """Creates every parameter (`init(..., method=MALTDiT.init_all)`): both passes, from the first memory."""
        memory_lbmd = self.initial_memory(x_bthwc.shape[0])
        prediction = self(x_bthwc, t_b, context_bld, context_mask_bl, memory_lbmd)
        return prediction, self.update_memory(x_bthwc, t_b, context_bld, context_mask_bl, memory_lbmd)
