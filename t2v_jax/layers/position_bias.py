"""T5's bucketed relative position bias: one learnt logit offset per head and bucket of key - query offset.

T5's text encoder uses it over tokens, LaVie's temporal attention over frames (its table is named
`time_rel_pos_bias` there). Buckets are exact for small offsets and log-spaced up to `max_distance`,
so a model trained on few positions still has a bias for more.
"""

import math

import jax.numpy as jnp
from flax import linen as nn


def relative_position_bucket(relative_position, *, bidirectional=True, num_buckets=32, max_distance=128):
    """T5's bucketing of `key_position - query_position`: exact for small offsets, log-spaced up to
    `max_distance`, clipped beyond; bidirectional uses half the buckets for each sign."""
    relative_position = jnp.asarray(relative_position)
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        relative_position = jnp.abs(relative_position)
    else:
        relative_position = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    scaled = jnp.log(jnp.maximum(relative_position, 1).astype(jnp.float32) / max_exact)
    scaled = scaled / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    if_large = jnp.minimum(max_exact + scaled.astype(relative_position.dtype), num_buckets - 1)
    return buckets + jnp.where(is_small, relative_position, if_large)


class RelativePositionBias(nn.Module):
    """(1, H, L, L) float32 bias for L positions 0..L-1 from an (num_buckets, H) table named
    "embedding" (a converter's `relative_attention_bias.weight`)."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, length: int):
        positions = jnp.arange(length)
        buckets_ll = relative_position_bucket(positions[None, :] - positions[:, None],
                                              num_buckets=self.num_buckets, max_distance=self.max_distance)
        table_init = nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None))
        table_kh = self.param("embedding", table_init, (self.num_buckets, self.num_heads), self.param_dtype)
        return jnp.transpose(jnp.asarray(table_kh)[buckets_ll], (2, 0, 1))[None].astype(jnp.float32)
