"""The one Dense layer builder the models use for sharded projections."""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp


def dense(features: int, axes: tuple, *, name: str,
          kernel_init: Callable = nn.linear.default_kernel_init, use_bias: bool = True,
          dtype: Any = None, param_dtype: Any = jnp.float32, bias_axes: tuple | None = None) -> nn.Dense:
    """`nn.Dense` whose kernel (and bias) carry logical axis names, so that the rules table in
    `t2v_jax.parallel.rules` decides how they shard; a plain `nn.Dense` would be replicated.

    `axes` names the kernel's (in, out) axes; the bias takes `bias_axes`, by default the output
    axis `axes[1:]`, and is zero-initialised. Call it inside a `@nn.compact` method: like any
    Flax constructor it attaches the layer, under `name`, to the module being run.
    """
    if bias_axes is None:
        bias_axes = axes[1:]
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), bias_axes),
                    name=name)
