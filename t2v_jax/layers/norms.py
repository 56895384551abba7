"""Normalisation layers for channels-last tensors.

Statistics are always computed in float32 and the result is cast back to the input dtype, so that
bfloat16 activations do not lose precision in the variance (as T5, PixArt and the VAE all require).
Scale/bias parameters carry logical axis names so the sharding rules can place them.
"""

from typing import Any

import jax.numpy as jnp
from flax import linen as nn


def _affine_param(module, name, init, features, axis_name, param_dtype):
    return module.param(name, nn.with_logical_partitioning(init, (axis_name,)), (features,), param_dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis; `use_affine=False` gives the parameter-free norm of AdaLN blocks."""

    eps: float = 1e-6
    use_affine: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jnp.reciprocal(jnp.sqrt(var + self.eps))
        if self.use_affine:
            features = x.shape[-1]
            y = y * _affine_param(self, "scale", nn.initializers.ones, features, "embed", self.param_dtype)
            y = y + _affine_param(self, "bias", nn.initializers.zeros, features, "embed", self.param_dtype)
        return y.astype(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm without mean subtraction or bias (T5's `T5LayerNorm`);
    `use_affine=False` drops the scale too (RetNet's per-head group norm)."""

    eps: float = 1e-6
    use_affine: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jnp.reciprocal(jnp.sqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps))
        if self.use_affine:
            y = y * _affine_param(self, "scale", nn.initializers.ones, x.shape[-1], "embed", self.param_dtype)
        return y.astype(x.dtype)


class GroupNorm(nn.Module):
    """GroupNorm with statistics over every non-batch axis of the input (axis 0 is the batch).

    For per-frame normalisation of video the caller folds time into the batch:
    `(B, T, H, W, C) -> (B*T, H, W, C)`; given `(B, T, H, W, C)` directly, statistics span all frames,
    which is what PyTorch's GroupNorm does on a `(B, C, T, H, W)` tensor.
    """

    num_groups: int = 32
    eps: float = 1e-6
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(
                f"GroupNorm: {channels} channels are not divisible by num_groups={self.num_groups}")
        x32 = x.astype(jnp.float32)
        xg = x32.reshape(x.shape[:-1] + (self.num_groups, channels // self.num_groups))
        axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
        mean = xg.mean(axes, keepdims=True)
        var = jnp.square(xg - mean).mean(axes, keepdims=True)
        y = ((xg - mean) * jnp.reciprocal(jnp.sqrt(var + self.eps))).reshape(x.shape)
        y = y * _affine_param(self, "scale", nn.initializers.ones, channels, "conv_out", self.param_dtype)
        y = y + _affine_param(self, "bias", nn.initializers.zeros, channels, "conv_out", self.param_dtype)
        return y.astype(x.dtype)
