"""The transformer feed-forward shared by the DiT and the FlashVideo decoder."""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp


class FeedForward(nn.Module):
    """Dense -> tanh-GELU -> Dense (diffusers FeedForward with activation_fn="gelu-approximate");
    `kernel_init` lets a model keep its own initialiser (RetNet uses Xavier)."""

    hidden: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.linear.default_kernel_init

    @nn.compact
    def __call__(self, x_bld):
        def dense(features, axes, name):
            return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                            kernel_init=nn.with_logical_partitioning(self.kernel_init, axes),
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]))

        h = nn.gelu(dense(self.hidden, ("embed", "mlp"), "proj_in")(x_bld), approximate=True)
        return dense(x_bld.shape[-1], ("mlp", "embed"), "proj_out")(h)
