"""LaVie's base text-to-video UNet (Wang et al. 2023; Vchitect/LaVie, base/models): its layers.

So far: the temporal attention of each transformer block (spatial self-attention -> cross-attention
-> temporal self-attention -> feed-forward). It attends over the frames at each spatial position,
with RoPE on the first `rotary_dim` (32) channels of each head only, in interleaved pairs, positions
0..F-1, theta 10000 (LaVie's `rotary_embedding_torch.RotaryEmbedding(min(32, dim_head))`), plus a
T5-style bucketed relative position bias per layer (32 buckets, max distance 32, bidirectional).
LaVie scales q by 1/sqrt(dim_head) before rotating it; a rotation is linear, so scaling the logits
instead, as `attention()` does, gives the same numbers. The output projection starts at zero, so a
new temporal layer leaves a pretrained image model unchanged.
"""

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from t2v_jax.layers.attention import Attention
from t2v_jax.layers.position_bias import RelativePositionBias
from t2v_jax.layers.rope import rope_frequencies


class TemporalAttention(nn.Module):
    """(N, F, C) -> (N, F, C): self-attention over F frames for each of N = batch x height x width
    positions. q/k/v without bias, the output with one (LaVie's `TemporalAttention`); `rotary_dim=0`
    turns RoPE off (LaVie's interpolation model)."""

    num_heads: int
    head_dim: int
    rotary_dim: int = 32
    num_buckets: int = 32
    max_distance: int = 32
    implementation: str = "xla"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_nfc):
        frames = x_nfc.shape[1]
        bias_1hff = RelativePositionBias(self.num_heads, self.num_buckets, self.max_distance,
                                         param_dtype=self.param_dtype, name="time_rel_pos_bias")(frames)
        rope = None
        if self.rotary_dim:
            cos_fr, sin_fr = rope_frequencies(jnp.arange(frames), min(self.rotary_dim, self.head_dim),
                                              interleaved=True)
            rope = (cos_fr, sin_fr, 1)
        return Attention(self.num_heads, self.head_dim, implementation=self.implementation, use_bias=False,
                         out_bias=True, rope_interleaved=True, out_kernel_init=nn.initializers.zeros_init(),
                         dtype=self.dtype, param_dtype=self.param_dtype, name="attention")(
            x_nfc, bias_bhls=bias_1hff, rope=rope)
