"""The transformer feed-forward shared by the DiT and the FlashVideo decoder."""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from t2v_jax.layers.dense import dense


class FeedForward(nn.Module):
    """Dense -> tanh-GELU -> Dense (diffusers FeedForward with activation_fn="gelu-approximate");
    `kernel_init` lets a model keep its own initialiser (RetNet uses Xavier)."""

    hidden: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.linear.default_kernel_init

    @nn.compact
    def __call__(self, x_bld):
        proj = functools.partial(dense, kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.gelu(proj(self.hidden, ("embed", "mlp"), name="proj_in")(x_bld), approximate=True)
        return proj(x_bld.shape[-1], ("mlp", "embed"), name="proj_out")(h)
